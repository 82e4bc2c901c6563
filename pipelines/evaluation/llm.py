"""Quality and speed of one MLX LLM, as mlx-lm's benchmark and perplexity commands measure them.

- perplexity on a held-out text: the text cut into windows of `length` tokens, each scored by one
  forward pass (mlx_lm.perplexity's method, with its standard error), plus the model's argmax at
  every position, so that two models can be compared token by token (teacher-forced agreement);
- prompt and decode tokens/s and peak memory (weights included) from `mlx_lm.stream_generate` (what
  `mlx_lm.benchmark` reports), greedy, medians over trials;
- greedy outputs for a few chat prompts, to compare with a reference model's
  (`greedy_agreement`: the share of the reference's tokens reproduced before the first difference).

The default held-out text is the Python documentation's topic help that ships with CPython
(`pydoc_data.topics`): real prose nobody here wrote, present on every machine, never used to make
or tune a model here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.models.loading import Compute, load_llm

CHAT_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three colours.",
    "Explain what a function is in programming.",
    "Give me a tip for learning a new language.",
    "What does a bakery sell?",
    "Describe a cat in one sentence.",
    "Why do leaves change colour in autumn?",
)


@dataclass
class Measurement:
    """What `measure` found for one model."""

    perplexity: float
    perplexity_stderr: float
    eval_tokens: int
    prompt_tps: float
    decode_tps: float
    peak_memory_mb: float
    argmax: np.ndarray  # (windows, length - 1): the model's top-1 token at each scored position
    greedy: list[list[int]] = field(default_factory=list)  # one token list per chat prompt

    def metrics(self) -> dict[str, float]:
        return {
            "perplexity": self.perplexity,
            "perplexity_stderr": self.perplexity_stderr,
            "prompt_tps": self.prompt_tps,
            "decode_tps": self.decode_tps,
            "peak_memory_mb": self.peak_memory_mb,
        }


def held_out_text(path: Path | None = None) -> str:
    """The text perplexity is measured on: `path`, or CPython's pydoc topics in key order."""
    if path is not None:
        return path.read_text(encoding="utf-8")
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def token_windows(tokenizer: Any, text: str, windows: int, length: int) -> np.ndarray:
    """The first `windows` × `length` tokens of `text`, as a (windows, length) array."""
    need = windows * length
    ids = _encode(tokenizer, text[: need * 12])  # ~4 characters a token: plenty, not all of it
    if len(ids) < need:
        ids = _encode(tokenizer, text)
    if len(ids) < need:
        raise ValueError(
            f"the held-out text has {len(ids)} tokens; {windows} windows of {length} need {need}"
        )
    return np.asarray(ids[:need], dtype=np.int32).reshape(windows, length)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def perplexity(
    model: Any, windows: np.ndarray, batch_size: int = 4
) -> tuple[float, float, np.ndarray]:
    """Perplexity of `windows`, its standard error, and the argmax at each scored position."""
    import mlx.core as mx
    import mlx.nn as nn

    losses, argmax = [], []
    for s in range(0, len(windows), batch_size):
        batch = mx.array(windows[s : s + batch_size])
        logits = model(batch[:, :-1]).astype(mx.float32)
        loss = nn.losses.cross_entropy(logits, batch[:, 1:], reduction="none")
        top = mx.argmax(logits, axis=-1)
        mx.eval(loss, top)
        losses.append(np.asarray(loss).ravel())
        argmax.append(np.asarray(top))
    all_losses = np.concatenate(losses).astype(np.float64)
    ppl = math.exp(all_losses.mean())
    stderr = ppl * float(all_losses.std(ddof=1)) / math.sqrt(all_losses.size)
    return ppl, stderr, np.concatenate(argmax)


def speed(
    model: Any, tokenizer: Any, prompt: Sequence[int], max_tokens: int, trials: int
) -> tuple[float, float]:
    """Median prompt and decode tokens/s of greedy `stream_generate` over `trials` runs."""
    from mlx_lm.generate import stream_generate

    prompt_tps, decode_tps = [], []
    for _ in range(trials):
        last = None
        for last in stream_generate(model, tokenizer, list(prompt), max_tokens=max_tokens):  # noqa: B007
            pass
        assert last is not None
        prompt_tps.append(float(last.prompt_tps))
        decode_tps.append(float(last.generation_tps))
    return statistics.median(prompt_tps), statistics.median(decode_tps)


def greedy_outputs(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_tokens: int
) -> list[list[int]]:
    """The greedy completion (token ids) of each chat prompt, through the model's template."""
    from mlx_lm.generate import stream_generate

    out = []
    for p in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True
        )
        out.append([r.token for r in stream_generate(model, tokenizer, ids, max_tokens=max_tokens)])
    return out


def greedy_agreement(reference: Sequence[Sequence[int]], other: Sequence[Sequence[int]]) -> float:
    """Mean share of each reference completion that `other` reproduces before it first differs."""
    shares = []
    for ref, oth in zip(reference, other, strict=True):
        same = 0
        for a, b in zip(ref, oth, strict=False):
            if a != b:
                break
            same += 1
        shares.append(same / len(ref) if ref else 1.0)
    return float(np.mean(shares)) if shares else float("nan")


def token_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """Share of positions where two models' teacher-forced argmax tokens are the same."""
    return float(np.mean(reference == other))


def measure(
    folder: Path,
    *,
    windows: np.ndarray | None = None,
    text: str | None = None,
    ppl_windows: int = 8,
    ppl_length: int = 256,
    prompt_tokens: int = 256,
    decode_tokens: int = 64,
    trials: int = 3,
    prompts: Sequence[str] = CHAT_PROMPTS,
    greedy_tokens: int = 32,
    compute: Compute = "auto",
) -> Measurement:
    """Load the MLX model at `folder` (pipelines/models/loading.py: as stored, or in float32 on
    a CPU-only host) and measure it."""
    import mlx.core as mx

    model, tokenizer = load_llm(folder, compute)
    mx.reset_peak_memory()  # the peak from here on includes the weights, which stay live
    text = held_out_text() if text is None else text
    if windows is None:
        windows = token_windows(tokenizer, text, ppl_windows, ppl_length)
    ppl, stderr, argmax = perplexity(model, windows)
    prompt = _encode(tokenizer, text[-prompt_tokens * 12 :])[-prompt_tokens:]
    prompt_tps, decode_tps = speed(model, tokenizer, prompt, decode_tokens, trials)
    greedy = greedy_outputs(model, tokenizer, prompts, greedy_tokens)
    peak = mx.get_peak_memory() / 1e6
    del model
    mx.clear_cache()
    return Measurement(
        perplexity=ppl,
        perplexity_stderr=stderr,
        eval_tokens=int(windows.shape[0] * (windows.shape[1] - 1)),
        prompt_tps=prompt_tps,
        decode_tps=decode_tps,
        peak_memory_mb=peak,
        argmax=argmax,
        greedy=greedy,
    )
