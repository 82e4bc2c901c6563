"""Error bodies never name the server's own folders: the data directory, the project, the Python
environment, the home directory.

Errors raised in `pipelines/` name paths on purpose (the CLI's user owns the machine and needs
them), so a model whose files are missing or a store held by another process reads
"…/data/state/models/x is missing" there. Over HTTP the caller may be anyone the operator gave a
key, and a path tells them the user name, the layout and where the keys database lives. Rather
than strip paths at each raise, `PathRedactionMiddleware` rewrites every error response (status
>= 400, JSON; these are small and whole) once, so routes added later are covered too:
"<data_dir>/models/x is missing". Success bodies are fixed where they are built.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from pipelines.settings import Settings


def server_roots(settings: Settings) -> list[tuple[str, str]]:
    """(absolute folder, what to show instead), longest first, so the innermost name wins."""
    from pipelines.settings import PROJECT_ROOT

    named = [
        (settings.data_dir, "<data_dir>"),
        (PROJECT_ROOT, "<project>"),
        (Path(sys.prefix), "<python>"),
        (Path.home(), "~"),
    ]
    roots: dict[str, str] = {}
    for folder, label in named:
        for form in (folder.absolute(), folder.resolve()):
            text = str(form).rstrip("/")
            if len(text) > 1:  # never "/" itself
                roots.setdefault(text, label)
    return sorted(roots.items(), key=lambda item: -len(item[0]))


class PathRedactor:
    """Replaces the server's folders in a text with their labels."""

    def __init__(self, roots: list[tuple[str, str]]) -> None:
        self._labels = dict(roots)
        # A root counts only as a whole path component: /srv/data, not /srv/database.
        alternatives = "|".join(re.escape(text) for text, _ in roots)
        self._pattern = re.compile(f"(?:{alternatives})(?![\\w.-])") if roots else None

    @classmethod
    def from_settings(cls, settings: Settings) -> PathRedactor:
        return cls(server_roots(settings))

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._labels[m.group(0)], text)


class PathRedactionMiddleware:
    """Rewrites server folders in the JSON bodies of error responses (see the module docstring)."""

    def __init__(self, app: ASGIApp, redactor: PathRedactor) -> None:
        self.app = app
        self.redact = redactor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []

        async def send_redacted(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and content_type.startswith(b"application/json"):
                    held = message  # sent with the rewritten body
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = self._rewrite(b"".join(chunks))
                headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
                held["headers"] = [*headers, (b"content-length", str(len(body)).encode())]
                await send(held)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_redacted)

    def _rewrite(self, body: bytes) -> bytes:
        # The labels hold no character JSON escapes, so the body stays valid JSON.
        return self.redact(body.decode("utf-8", errors="replace")).encode()
