"""What a browser may do with Impetus: which Host names it answers (against DNS rebinding), which
Origins may call it (CORS, and against cross-site requests), and the headers every response
carries. One ASGI middleware, outside everything else but the request id (serving/http/app.py).

**Host.** A page on a domain its owner rebinds to 127.0.0.1 reaches a loopback server as
same-origin, so it could call every route (auth is off on loopback without keys). Its requests
carry that domain in `Host`, so the server answers only the names it is known by: the loopback
names (`localhost`, any 127.0.0.0/8 address, `::1`), `serve.host`, and `serve.allowed_hosts`
(names, `*.example.com` wildcards, or `*` to turn the check off behind a proxy that does it).
Served on a wildcard address (0.0.0.0 or ::), it also answers this machine's host names (also
`<name>.local`, Bonjour's) and any IP address: a rebinding attack needs a name the attacker's DNS
answers, and a browser sends an IP address as `Host` only to a page of that address itself.
A foreign Host gets 400 `invalid_request`. The health probes follow the same rule: a rebinding
page could learn from them that Impetus runs here and which model it loads, and orchestrators
probe by IP address or `localhost`, which pass.

**Origin.** A request that carries an `Origin` (browsers send one on every cross-origin request
and on same-origin writes) must come from the server's own origin (its `Host`) or one of
`serve.cors_origins`; any other gets 403 `permission_denied` before a route runs. CORS alone
would only hide the answer from the page, not stop a form POST (an upload, say) from being made.
Allowed foreign origins go through Starlette's `CORSMiddleware`, which answers their preflights
and exposes the X-RateLimit-*, Retry-After and X-Request-ID headers. WebSocket handshakes obey
both rules (browsers apply no CORS to them).

**Headers.** Every response: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
`X-Frame-Options: DENY`; an HTML response without a Content-Security-Policy of its own gets
`HTML_CSP` (serving/http/docs.py sets a looser one for Swagger UI's inline styles).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.http.errors import APIError

if TYPE_CHECKING:
    from pipelines.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
# Default-deny for HTML the server makes: its own scripts, styles and images, nothing framed.
HTML_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
EXPOSED = [
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
]


def host_name(header: str) -> str:
    """`Host` without its port, lower case: "[::1]:8000" → "::1", "Example.COM.:80" → "example.com"."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(name: str) -> bool:
    try:
        return name in LOOPBACK_NAMES or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def machine_names() -> set[str]:
    """This machine's host names: short, fully qualified and the Bonjour `.local` name."""
    names = set()
    for name in (socket.gethostname(), socket.getfqdn()):
        name = name.lower().rstrip(".")
        if name:
            names |= {name, name.split(".")[0], name.split(".")[0] + ".local"}
    return names


@dataclass(frozen=True)
class HostPolicy:
    """The Host names a server answers (see the module's docstring)."""

    names: frozenset[str]
    suffixes: tuple[str, ...] = ()  # from "*.example.com": ".example.com"
    any_ip: bool = False
    any_host: bool = False

    @classmethod
    def build(cls, bind: str, allowed: Iterable[str]) -> HostPolicy:
        allowed = [a.lower() for a in allowed]
        bind = host_name(bind) if bind.startswith("[") else bind.lower()
        wildcard = bind in WILDCARD_BINDS
        names = {*LOOPBACK_NAMES, *(a for a in allowed if not a.startswith("*"))}
        if not wildcard:
            names.add(bind)
        else:
            names |= machine_names()
        return cls(
            names=frozenset(names),
            suffixes=tuple(a[1:] for a in allowed if a.startswith("*.")),
            any_ip=wildcard,
            any_host="*" in allowed,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> HostPolicy:
        return cls.build(settings.serve.host, settings.serve.allowed_hosts)

    def allows(self, host: str) -> bool:
        name = host_name(host)
        return (
            self.any_host
            or name in self.names
            or _is_loopback(name)
            or name.endswith(self.suffixes)
            or (self.any_ip and _is_ip(name))
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def same_origin(origin: str, host: str) -> bool:
    """Whether `origin` (scheme://host[:port]) names the server reached as `host` (Host header).

    The scheme is not compared: behind a TLS proxy the browser's https is the server's http."""
    netloc = origin.partition("://")[2].rstrip("/").lower()
    return bool(netloc) and netloc == host.strip().lower()


class SecurityMiddleware:
    """Host allow-list, Origin allow-list (CORS) and the security headers of every response."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = HostPolicy.from_settings(settings)
        self.origins = frozenset(settings.serve.cors_origins)
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(self.origins),
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=EXPOSED,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        send = self._with_headers(send)
        host = _header(scope, b"host")
        origin = _header(scope, b"origin")
        if host is not None and not self.hosts.allows(host):
            await self._refuse(
                scope,
                receive,
                send,
                APIError(
                    "invalid_request",
                    f"This server does not answer to the host name {host_name(host)!r}; "
                    "its operator can add it to serve.allowed_hosts.",
                    param="Host",
                ),
            )
            return
        if origin is None or (host is not None and same_origin(origin, host)):
            await self.app(scope, receive, send)
            return
        if "*" in self.origins or origin.rstrip("/").lower() in self.origins:
            await (self.app if kind == "websocket" else self.cors)(scope, receive, send)
            return
        await self._refuse(
            scope,
            receive,
            send,
            APIError(
                "permission_denied",
                f"Requests from the web origin {origin[:200]!r} are not allowed; the server's "
                "operator can add it to serve.cors_origins.",
                param="Origin",
            ),
        )

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, error: APIError) -> None:
        if scope["type"] == "websocket":
            # Before the handshake is accepted: the server answers it with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        await error.response()(scope, receive, send)

    @staticmethod
    def _with_headers(send: Send) -> Send:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in ALWAYS if k not in present]
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                csp = b"content-security-policy"
                if content_type.startswith(b"text/html") and csp not in present:
                    headers.append((csp, HTML_CSP.encode()))
                message["headers"] = headers
            await send(message)

        return send_with_headers
