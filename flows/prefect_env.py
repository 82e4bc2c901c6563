"""Prefect's home under data_dir, set before Prefect is first imported (it reads its settings at
import): the CLI's commands and the server's index runner call `prefect_env(settings)` first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.settings import Settings


def prefect_env(s: Settings, verbose: bool = False) -> None:
    """Point Prefect at data_dir before it is imported (its settings are read at import)."""
    home = Path(os.environ.setdefault("PREFECT_HOME", str(s.data_dir / "prefect")))
    home.mkdir(parents=True, exist_ok=True)  # Prefect makes only the last level
    # The temporary server imports Prefect's whole API; on a busy laptop that takes a while.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not verbose and s.log.level != "debug":
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
