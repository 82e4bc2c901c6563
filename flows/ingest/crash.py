"""The crash hook of the ingest flows' crash-safety tests.

`IMPETUS_TEST_CRASH_AT=<step>[:N]` SIGKILLs the process the N-th time (default first) a run
reaches <step> (the per-document steps are reached once per batch, so `parse:2` is the start of
the second batch), one of: discover, load_embedder, parse, chunk, check_chunks, embed,
check_vectors, record_chunks, upsert, record, prune, find_stale, delete, mark_deleted, switch,
finish. The variable is read here only, when a flow builds its inputs; unset, the hook does
nothing.

`IMPETUS_TEST_FILL_AT=<step>[:N]` with `IMPETUS_TEST_FILL_FILE=<path>` fills the filesystem of
<path> instead (a file there takes all but `IMPETUS_TEST_FILL_LEAVE` bytes, default 1 MiB): the
disk-full fault test's way to fill the disk at a known point of a run.

`IMPETUS_TEST_PAUSE_AT=<step>[:N]` with `IMPETUS_TEST_PAUSE_FILE=<path>` pauses the run there
instead: the hook creates <path> and waits (at most 5 minutes) until the test deletes it, so a
fault test can act (stop the Prefect server) while a run is known to be in the middle.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable

ENV = "IMPETUS_TEST_CRASH_AT"
CrashHook = Callable[[str], None]


def no_crash(step: str) -> None:
    """The hook of every run not under a crash test."""


def crash_hook() -> CrashHook:
    """The hook that IMPETUS_TEST_CRASH_AT (or IMPETUS_TEST_FILL_AT) asks for (`no_crash` when
    unset)."""
    target = os.environ.get(ENV)
    fill = os.environ.get(FILL_ENV)
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        return _at(pause, _pause)
    if fill:
        return _at(fill, _fill_disk)
    if not target:
        return no_crash
    return _at(target, lambda: os.kill(os.getpid(), signal.SIGKILL))


FILL_ENV = "IMPETUS_TEST_FILL_AT"
PAUSE_ENV = "IMPETUS_TEST_PAUSE_AT"


def _at(target: str, action: Callable[[], None]) -> CrashHook:
    """A hook that runs `action` the N-th time a run reaches the step `target` names."""
    name, _, nth = target.partition(":")
    reached: Counter[str] = Counter()

    def hook(step: str) -> None:
        if step != name:
            return
        reached[step] += 1
        if reached[step] == int(nth or 1):
            action()

    return hook


def _fill_disk() -> None:
    path = os.environ["IMPETUS_TEST_FILL_FILE"]
    leave = int(os.environ.get("IMPETUS_TEST_FILL_LEAVE", str(1 << 20)))
    stat = os.statvfs(os.path.dirname(path))
    size = stat.f_bavail * stat.f_frsize - leave
    if size > 0:
        with open(path, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, size)


def _pause() -> None:
    path = os.environ["IMPETUS_TEST_PAUSE_FILE"]
    open(path, "w").close()
    deadline = time.monotonic() + 300
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.2)
