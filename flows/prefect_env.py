"""Prefect's home under data_dir, set before Prefect is first imported (it reads its settings at
import): the CLI's commands and the server's index runner call `prefect_env(settings)` first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.settings import Settings


def ui_server_file(s: Settings) -> Path:
    """Where `impetus ui prefect` records the API address of the server it runs."""
    return s.data_dir / "prefect" / "ui-server-url"


def _running_ui_server(s: Settings) -> str | None:
    """The API of the Prefect server `impetus ui prefect` runs on this data_dir, if it answers."""
    try:
        api = ui_server_file(s).read_text().strip()
    except OSError:
        return None
    import urllib.request

    try:
        with urllib.request.urlopen(f"{api}/health", timeout=1) as r:
            return api if r.status == 200 else None
    except OSError:
        return None


def prefect_env(s: Settings, verbose: bool = False) -> None:
    """Point Prefect at data_dir before it is imported (its settings are read at import), and at
    the server of `impetus ui prefect` while it runs (else Prefect starts a temporary one)."""
    home = Path(os.environ.setdefault("PREFECT_HOME", str(s.data_dir / "prefect")))
    home.mkdir(parents=True, exist_ok=True)  # Prefect makes only the last level
    if "PREFECT_API_URL" not in os.environ and (api := _running_ui_server(s)):
        os.environ["PREFECT_API_URL"] = api
    # The temporary server imports Prefect's whole API; on a busy laptop that takes a while.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not verbose and s.log.level != "debug":
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
