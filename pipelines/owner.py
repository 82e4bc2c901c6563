"""Who owns a run: a process named so that it can be told apart from a later one with the same pid.

    owner = this_process()          # "host:pid:start", recorded with a run in lineage
    is_alive(owner)                 # False once that process is gone (or its pid was reused)

A run left `running` by a process that was killed (SIGKILL, power loss) never records its end;
the next process to start on the same data_dir asks `is_alive` about the run's owner and marks
the run crashed (flows/ingest/recovery.py). The start time guards against pid reuse; an owner on
another host cannot be checked from here and counts as alive.
"""

from __future__ import annotations

import os
import socket


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        pass
    try:  # not Linux: psutil knows the start time everywhere
        import psutil

        return str(int(psutil.Process(pid).create_time() * 100))
    except Exception:
        return None


def this_process() -> str:
    """This process as an owner string: host, pid and start time."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


def is_alive(owner: str | None) -> bool:
    """Whether the process `owner` names still runs (an owner on another host: assumed alive)."""
    if not owner:
        return False
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid, start = parts
    if host != socket.gethostname():
        return True
    now = _start_time(int(pid))
    return now is not None and (not start or now == start)
