"""A full disk under data_dir, said clearly: checked before writing, recognised when it happens.

    check_free(settings.data_dir, settings.ingest.min_free_bytes)   # DiskFullError if below
    disk_full(exc, settings.data_dir)                               # DiskFullError or None

Why check first: Qdrant Edge writes its segments through memory maps, and on a full filesystem a
write into a mapped page is a SIGBUS that kills the process (measured on a full tmpfs), so the
ingest flow refuses to start a batch when less than `ingest.min_free_bytes` is free. What fails
with an ordinary error instead (DuckDB, a file write: ENOSPC, "No space left on device") becomes
the same `DiskFullError`, which is final: retrying cannot free space.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from pipelines.errors import ImpetusError


class DiskFullError(ImpetusError):
    """The filesystem holding data_dir is full (or below `ingest.min_free_bytes`)."""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _full(path: Path, free: int, detail: str) -> DiskFullError:
    return DiskFullError(
        f"the disk holding {path} is full ({detail}; {_mib(free)} free). Nothing half-written "
        "is searchable: the documents indexed before this point stay, the rest are not "
        "started. Free space there (or move data_dir), then run the same command again"
    )


def free_bytes(path: Path) -> int:
    """Free bytes for this user on the filesystem holding `path` (its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_free(path: Path, min_free: int) -> None:
    """Raise `DiskFullError` when less than `min_free` bytes are free under `path` (0: no check)."""
    if min_free <= 0:
        return
    free = free_bytes(path)
    if free < min_free:
        why = f"below ingest.min_free_bytes = {_mib(min_free)}"
        raise _full(Path(path), free, why)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is an out-of-space error, whatever library raised it."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, DiskFullError):
            return True
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left on device" in text or "os error 28" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def disk_full(exc: BaseException, path: Path) -> DiskFullError | None:
    """`exc` as a `DiskFullError` naming `path`, or None when it is not about space."""
    if isinstance(exc, DiskFullError):
        return exc
    if not is_disk_full(exc):
        return None
    return _full(Path(path), free_bytes(path), f"a write failed: {str(exc)[:200]}")
