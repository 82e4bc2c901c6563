"""One sequence of the MLX engine: its request, and how each generated token becomes a `Delta`.

The engine thread feeds it the batch's tokens; it detokenizes incrementally (mlx-lm's streaming
detokenizer), holds back text that could start a stop string, and attaches logprobs. It knows
nothing of batching or MLX beyond reading one row of log-probabilities.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.engine.base import Delta, FinishReason, SamplingParams, SequenceTimings, TokenLogprob
from serving.engine.stops import StopStrings

_MIN_LOGPROB = -9999.0  # what a -inf logprob is reported as (JSON has no infinity)


@dataclass(eq=False)
class LiveSequence:
    """One request's state. The async side creates it; after admission only the engine thread
    mutates it (the async side reads `done`)."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Delta | BaseException]
    stops: StopStrings
    uid: int | None = None
    cached_tokens: int = 0
    completion_tokens: int = 0
    started: bool = False
    done: bool = False
    detokenizer: Any = None
    matcher: Any = None  # an llguidance.LLMatcher when the output is constrained (structured.py)
    checkpoints: tuple[int, ...] = ()  # prompt prefixes the prefix cache keeps on disk (lengths)
    # Completion tokens before which the sequence may not decode speculatively (backed off:
    # mlx_engine.py; max_tokens: never).
    speculate_after: int = 0
    kv_waited: bool = False  # waited for room in the engine's KV budget (counted once)
    # time.time_ns() of its stages, for the last delta's `timings` (serving/engine/base.py)
    queued_ns: int = 0
    admitted_ns: int = 0
    first_token_ns: int = 0

    def on_token(
        self,
        token: int,
        finish_reason: FinishReason | None,
        logprobs_row: Any,
        token_text: Callable[[int], str],
    ) -> Delta:
        """The delta for one step's token; finish_reason "stop" marks the end-of-sequence token."""
        if not self.started:
            self.first_token_ns = time.time_ns()
        self.started = True
        reason = finish_reason
        detok = self.detokenizer
        token_ids: list[int] = []
        logprobs = None
        if reason == "stop":  # the end-of-sequence token: never emitted
            detok.finalize()
        else:
            self.completion_tokens += 1
            token_ids = [token]
            detok.add_token(token)
            if reason is not None:
                detok.finalize()
            if self.params.logprobs or self.params.top_logprobs:
                logprobs = [_logprob(logprobs_row, token, self.params.top_logprobs, token_text)]
        text, hit = self.stops.feed(detok.last_segment)
        if hit:
            reason = "stop"
        elif reason is not None:
            text += self.stops.flush()
        delta = Delta(
            text=text,
            token_ids=token_ids,
            logprobs=logprobs,
            completion_tokens=self.completion_tokens,
        )
        if reason is not None:
            delta.finish_reason = reason
            delta.prompt_tokens = len(self.prompt)
            delta.cached_tokens = self.cached_tokens
            delta.stop_sequence = self.stops.matched if hit else None
            delta.timings = SequenceTimings(
                self.queued_ns, self.admitted_ns, self.first_token_ns, time.time_ns()
            )
        return delta


def _logprob(row: Any, token: int, top_n: int, token_text: Callable[[int], str]) -> TokenLogprob:
    # The batch step has evaluated the row: read it through numpy rather than with MLX ops,
    # each of which would be one more graph and one more sync per row and token.
    import mlx.core as mx
    import numpy as np

    if row.dtype != mx.float32:  # numpy has no bfloat16
        row = row.astype(mx.float32)
    values = np.asarray(row).reshape(-1)
    chosen = max(float(values[token]), _MIN_LOGPROB)
    top: list[tuple[str, float]] = []
    if top_n:
        idx = np.argpartition(-values, top_n - 1)[:top_n]
        pairs = sorted(zip(idx.tolist(), values[idx].tolist(), strict=True), key=lambda p: -p[1])
        top = [(token_text(i), max(v, _MIN_LOGPROB)) for i, v in pairs]
    text = token_text(token)
    return TokenLogprob(token=text, logprob=chosen, bytes=list(text.encode()), top=top)
