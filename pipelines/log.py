"""Structured logging: one line per event on stderr, key=value for people or JSON for machines.

`configure()` is called once by the CLI (or the server) before anything logs. Library code uses
`structlog.get_logger(__name__)` or the standard `logging` module; both end up in the same line format.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from typing import Any

import structlog

# Keys whose values never reach a log line, whatever code logs them.
_SECRET_KEY = re.compile(r"(api[_-]?key|authorization|token|secret|password)", re.IGNORECASE)
_SAFE_KEYS = {"max_tokens", "prompt_tokens", "completion_tokens", "total_tokens", "tokens"}


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in event:
        if key not in _SAFE_KEYS and not key.endswith("_tokens") and _SECRET_KEY.search(key):
            event[key] = "***"
    return event


_QUIET = (
    "httpx",
    "httpcore",
    "urllib3",
    "filelock",
    "huggingface_hub",
    "great_expectations",
    "unstructured",
)


def _quiet_filter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith(_QUIET)


def configure(level: str = "info", fmt: str = "console") -> None:
    """Route structlog and stdlib logging to one renderer on stderr."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a logger keeps reading this configuration, so that a later configure (or
        # structlog.testing.capture_logs in a test) reaches every module's logger. A few
        # microseconds per line, on a few lines per request.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty dependencies stay at warning unless we debug: Great Expectations logs "Skipping
    # registering function ..." and a temporary docs-site folder at info on every context.
    debug = level == "debug"
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        # Some set their own modules' levels at import (great_expectations...types.base: INFO),
        # so the handler drops their info lines too.
        handler.addFilter(_quiet_filter)
    if not debug:
        # bs4 warns once per XHTML page that it parses XML with an HTML parser: unstructured's
        # choice, and harmless for text extraction.
        warnings.filterwarnings("ignore", message="It looks like you're using an HTML parser")
