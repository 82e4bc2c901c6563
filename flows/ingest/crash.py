"""The crash hook of the ingest flows' crash-safety tests.

`IMPETUS_TEST_CRASH_AT=<step>[:N]` SIGKILLs the process the N-th time (default first) a run
reaches <step> (the per-document steps are reached once per batch, so `parse:2` is the start of
the second batch), one of: discover, load_embedder, parse, chunk, check_chunks, embed,
check_vectors, record_chunks, upsert, record, prune, find_stale, delete, mark_deleted, switch,
finish. The variable is read here only, when a flow builds its inputs; unset, the hook does
nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable

ENV = "IMPETUS_TEST_CRASH_AT"
CrashHook = Callable[[str], None]


def no_crash(step: str) -> None:
    """The hook of every run not under a crash test."""


def crash_hook() -> CrashHook:
    """The hook that IMPETUS_TEST_CRASH_AT asks for (`no_crash` when unset)."""
    target = os.environ.get(ENV)
    if not target:
        return no_crash
    name, _, nth = target.partition(":")
    reached: Counter[str] = Counter()

    def crash_at(step: str) -> None:
        if step != name:
            return
        reached[step] += 1
        if reached[step] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)

    return crash_at
