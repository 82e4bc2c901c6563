"""Who holds a file lock: the pid behind a flock/fcntl lock on a file, from /proc/locks (Linux).

    lock_holder(data_dir / "vectors" / ".lock")     # 4242, or None when no process holds it

A lock taken with flock or fcntl dies with its process, so a lock file left behind by a killed
process is not held and blocks nothing; a lock that *is* held belongs to a live process, which
this names so that an error can say which one to stop. Elsewhere than Linux: None (unknown).
"""

from __future__ import annotations

import os
from pathlib import Path


def lock_holder(path: Path) -> int | None:
    """The pid of a process holding a lock on `path` (other than this one, if it can tell)."""
    try:
        st = os.stat(path)
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (blocked waiters carry "->")
        if "->" in fields or len(fields) < 6:
            continue
        if fields[5] == key and fields[4].isdigit():
            pids.append(int(fields[4]))
    others = [p for p in pids if p != os.getpid()]
    found = others or pids
    return found[0] if found else None


def describe(pid: int | None) -> str:
    """`process 1234 (impetus serve ...)`, for messages; `another process` when unknown."""
    if pid is None:
        return "another process"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        argv = []
    # The program's name and its first few arguments, without paths (messages reach clients).
    words = [os.path.basename(argv[0])] if argv and argv[0] else []
    words += [a for a in argv[1:] if a and "/" not in a][:5]
    return f"process {pid}" + (f" ({' '.join(words)})" if words else "")
