"""One sequence of the MLX engine: its request, and how each generated token becomes a `Delta`.

The engine thread feeds it the batch's tokens; it detokenizes incrementally (mlx-lm's streaming
detokenizer), holds back text that could start a stop string, and attaches logprobs. It knows
nothing of batching or MLX beyond reading one row of log-probabilities.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    # Deltas held back to be delivered as one group (MLXEngine's `coalesce_*`), since when
    # (time.monotonic()), and whether a delta was delivered yet (the first never waits).
    held: list[Delta] = field(default_factory=list)
    held_since: float = 0.0
    sent: bool = False

    @property
    def reports_logprobs(self) -> bool:
        """Whether its deltas carry log-probabilities (the batch keeps its row for them)."""
        return bool(self.params.logprobs or self.params.top_logprobs)

    def hold(self, delta: Delta, now: float, tokens: int, hold_s: float) -> bool:
        """Keep `delta` back to go with the next ones, unless it completes a group of `tokens`
        or the group's oldest has waited `hold_s`; False: send it (with those held) now."""
        if not self.sent or len(self.held) + 1 >= tokens:
            return False
        if not self.held:
            self.held_since = now
        elif now - self.held_since >= hold_s:
            return False
        self.held.append(delta)
        return True

    def send(
        self,
        out: dict[asyncio.AbstractEventLoop, list[Any]],
        item: Delta | BaseException,
    ) -> dict[asyncio.AbstractEventLoop, list[Any]]:
        """Add `item` to a step's deliveries (`out`: event loop -> [(queue, item)]), after the
        deltas held back for this sequence; returns `out`."""
        items = out.setdefault(self.loop, [])
        if self.held:
            items.extend((self.queue, d) for d in self.held)
            self.held = []
        items.append((self.queue, item))
        self.sent = True
        return out

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
            if self.reports_logprobs:
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
