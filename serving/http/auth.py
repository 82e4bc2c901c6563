"""Who may call which route, and how often: one dependency on every route, one table of routes.

`create_app` builds a `Guard` over the data_dir's `KeyStore` (pipelines/keys.py) and installs
`authorize` as an app-level dependency, so no route can be added without passing through it.
`ROUTES` maps each route (method and path template) to the role it needs and its rate class;
a route missing from the table needs `admin` (tests/serving/http/test_auth.py fails on one).

Per request, `authorize`:
1. finds the route's `Access`; public routes (health live/ready) pass, unlimited;
2. when auth is on (`auth.mode`, see `Guard.enabled`), reads the token (`Authorization: Bearer`
   or `x-api-key`), looks the key up in the database (so revocation and expiry hold at once) and
   refuses a missing or bad one with 401 `auth_required` (wrong tokens count against the client
   address's `rate_limits.failed_auth`);
3. counts the request against the key's bucket (the client address's when auth is off): past
   it, 429 `rate_limited` with Retry-After;
4. refuses a key whose role is below the route's with 403 `permission_denied`.
`AccessMiddleware` adds the X-RateLimit-* headers to the response and writes the request log
(`impetus keys usage` reads it). Audit events are `audit.*` log lines with the key's name.
"""

from __future__ import annotations

import contextvars
import ipaddress
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
import structlog
from fastapi import Request, WebSocket
from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.keys import ApiKey, KeyRejected, KeyStore, RequestRecord, Role
from serving.http.errors import APIError

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = structlog.get_logger(__name__)

RateClass = Literal["inference", "read"]


@dataclass(frozen=True)
class Access:
    """What a route needs: a role (None: public) and the rate limit class it counts against."""

    role: Role | None
    rate: RateClass | None = "read"


PUBLIC = Access(None, None)
READ = Access("readonly", "read")
USE = Access("user", "inference")
USE_READ = Access("user", "read")
ADMIN = Access("admin", "inference")

# method path-template → access. Keep in step with the routes; the test enumerates app.routes.
ROUTES: dict[tuple[str, str], Access] = {
    ("GET", "/api/health/live"): PUBLIC,
    ("GET", "/api/health/ready"): PUBLIC,
    ("GET", "/api/health/status"): READ,
    ("GET", "/api/hardware/info"): READ,
    ("GET", "/api/metrics"): READ,
    ("GET", "/v1/models"): READ,
    ("GET", "/v1/models/{model_id}"): READ,
    ("GET", "/openapi.json"): READ,
    ("GET", "/docs"): READ,
    ("POST", "/v1/chat/completions"): USE,
    ("POST", "/v1/completions"): USE,
    ("POST", "/v1/embeddings"): USE,
    ("POST", "/v1/messages"): USE,
    ("POST", "/v1/messages/count_tokens"): USE_READ,
    ("POST", "/tokenize"): USE_READ,
    ("POST", "/detokenize"): USE_READ,
    ("POST", "/v1/rag/search"): USE,
    # Responses (serving/http/routes/responses.py): a stored response is visible to its key only
    ("POST", "/v1/responses"): USE,
    ("POST", "/v1/responses/input_tokens"): USE,
    ("GET", "/v1/responses/{response_id}"): USE_READ,
    ("DELETE", "/v1/responses/{response_id}"): USE_READ,
    ("POST", "/v1/responses/{response_id}/cancel"): USE_READ,
    ("GET", "/v1/responses/{response_id}/input_items"): USE_READ,
    ("GET", "/v1/rag/status"): USE_READ,
    ("POST", "/api/models/load"): ADMIN,
    ("POST", "/api/models/unload"): ADMIN,
    ("POST", "/v1/rag/index"): ADMIN,
    ("GET", "/v1/rag/runs/{run_id}"): ADMIN,
    ("POST", "/v1/rag/runs/{run_id}/cancel"): ADMIN,
    # uploads (serving/http/routes/files.py): adding and deleting is admin's, reading user's
    ("POST", "/v1/files"): ADMIN,
    ("GET", "/v1/files"): USE_READ,
    ("GET", "/v1/files/{file_id}"): USE_READ,
    ("GET", "/v1/files/{file_id}/content"): USE_READ,
    ("DELETE", "/v1/files/{file_id}"): ADMIN,
    # vector stores = collections (serving/http/routes/vector_stores.py)
    ("POST", "/v1/vector_stores"): ADMIN,
    ("GET", "/v1/vector_stores"): USE_READ,
    ("GET", "/v1/vector_stores/{vector_store_id}"): USE_READ,
    ("DELETE", "/v1/vector_stores/{vector_store_id}"): ADMIN,
    ("POST", "/v1/vector_stores/{vector_store_id}/files"): ADMIN,
    ("GET", "/v1/vector_stores/{vector_store_id}/files"): USE_READ,
    ("GET", "/v1/vector_stores/{vector_store_id}/files/{file_id}"): USE_READ,
    ("POST", "/v1/vector_stores/{vector_store_id}/search"): USE,
    # the dashboard's own routes (serving/http/routes/dashboard.py)
    ("GET", "/api/info"): READ,
    ("GET", "/api/models"): READ,
    ("GET", "/api/requests"): READ,
    ("GET", "/api/experiments"): READ,
    ("GET", "/api/keys"): ADMIN,
    ("POST", "/api/keys"): ADMIN,
    ("DELETE", "/api/keys/{ref}"): ADMIN,
    ("GET", "/api/lineage/chunks/{chunk_id}"): USE_READ,
    ("GET", "/api/rag/collections"): USE_READ,
    ("GET", "/api/rag/collections/{name}/documents"): USE_READ,
    ("GET", "/api/rag/runs"): ADMIN,
    ("GET", "/api/rag/roots"): ADMIN,
}
# WebSocket routes (not in app_routes: they have no HTTP methods), checked by
# `authorize_websocket` when the handshake arrives (serving/http/routes/events.py).
WEBSOCKETS: dict[str, Access] = {"/api/ws": READ}
DEFAULT_ACCESS = ADMIN  # a route nobody put in the table: closed to all but admins


def access_of(method: str, path: str) -> Access:
    return ROUTES.get(("GET" if method == "HEAD" else method, path), DEFAULT_ACCESS)


def app_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route of an app, included routers too."""

    def walk(routes: Any, prefix: str) -> Iterator[tuple[str, str]]:
        for route in routes:
            for method in getattr(route, "methods", None) or ():
                yield method, prefix + route.path
            inner = getattr(route, "original_router", None)  # FastAPI's included routers
            if inner is not None:
                ctx = getattr(route, "include_context", None)
                yield from walk(inner.routes, prefix + getattr(ctx, "prefix", ""))

    return set(walk(app.routes, ""))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_problem(settings: Settings, host: str, keys_exist: bool) -> str | None:
    """Why a server on `host` must not start (None: it may): off loopback without keys."""
    if is_loopback(host) or settings.auth.insecure:
        return None
    if settings.auth.mode == "off":
        return (
            f"auth.mode is off and {host} is not a loopback address: anyone who reaches the port "
            "could use every route. Set auth.mode to auto (the default), or pass --insecure."
        )
    if not keys_exist:
        return (
            f"{host} is not a loopback address and no API key exists. Create one first: "
            "`impetus keys create --name NAME --role admin` (then send it as "
            "`Authorization: Bearer <key>`), or pass --insecure to serve without keys."
        )
    return None


# -- request context (tokens counted by the generation routes) ------------------------------------


@dataclass
class RequestUsage:
    """What the generation routes tell the request log (and the dashboard's request rows)."""

    tokens: int | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None


_usage: contextvars.ContextVar[RequestUsage | None] = contextvars.ContextVar(
    "impetus_request_usage", default=None
)


def add_tokens(
    n: int,
    *,
    model: str | None = None,
    prompt: int | None = None,
    completion: int | None = None,
    ttft_ms: float | None = None,
) -> None:
    """Count `n` tokens (prompt and generated) against the current request's log line; the
    keywords (one finished sequence's model, token counts and time to first token) feed the
    dashboard's request rows (GET /api/requests, `request.finished` events)."""
    usage = _usage.get()
    if usage is None:
        return
    usage.tokens = (usage.tokens or 0) + n
    if model is not None:
        usage.model = model
    if prompt is not None:
        usage.prompt_tokens = (usage.prompt_tokens or 0) + prompt
    if completion is not None:
        usage.completion_tokens = (usage.completion_tokens or 0) + completion
    if ttft_ms is not None:
        usage.ttft_ms = ttft_ms if usage.ttft_ms is None else min(usage.ttft_ms, ttft_ms)


# -- the guard ------------------------------------------------------------------------------------


@dataclass
class Principal:
    """Who made a request: a key (None when auth is off) and the client address."""

    key: ApiKey | None
    client: str

    @property
    def name(self) -> str | None:
        return self.key.name if self.key else None


@dataclass
class _Window:
    limit: int
    remaining: int
    reset: float  # epoch seconds


class RequestLog:
    """Request log lines, written in batches by a thread (a request never waits on SQLite)."""

    def __init__(self, store: KeyStore, retention_days: float, flush_s: float = 0.5) -> None:
        self._store = store
        self._retention_days = retention_days
        self._queue: queue.SimpleQueue[RequestRecord | None] = queue.SimpleQueue()
        self._flush_s = flush_s
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
            self._thread.start()

    def put(self, record: RequestRecord) -> None:
        self._queue.put(record)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        done = False
        pruned = 0.0
        while not done:
            if time.monotonic() - pruned > 3600:  # retention holds in a long-running server too
                pruned = time.monotonic()
                try:
                    self._store.prune(self._retention_days)
                except Exception as exc:
                    log.warning("request_log.prune_failed", error=str(exc))
            batch: list[RequestRecord] = []
            deadline = time.monotonic() + self._flush_s
            while len(batch) < 512:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                batch.append(item)
            try:
                self._store.record(batch)
            except Exception as exc:  # the log must not take the server down
                log.warning("request_log.write_failed", error=str(exc), lines=len(batch))


@dataclass
class Guard:
    """Auth mode, keys and rate limits of one app."""

    settings: Settings
    store: KeyStore
    requests: RequestLog = field(init=False)
    # Called (on the event loop) with each finished request's row, after its log line is queued:
    # the dashboard's ring buffer and `request.finished` events (serving/http/live.py).
    observers: list[Callable[[dict[str, Any]], None]] = field(default_factory=list, init=False)
    _keys_seen: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        rl = self.settings.rate_limits
        self.requests = RequestLog(self.store, self.settings.auth.request_log_days)
        self._limiter = MovingWindowRateLimiter(storage_from_string(rl.storage_uri))
        self._defaults: dict[RateClass, RateLimitItem] = {
            "inference": parse(rl.inference),
            "read": parse(rl.read),
        }
        self._failed = parse(rl.failed_auth)
        self._per_key: dict[str, RateLimitItem] = {}
        # A remote store (redis://) answers over the network: check in a worker thread then.
        self.blocking = not rl.storage_uri.startswith("memory://")

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        return cls(settings, KeyStore.open(settings.data_dir))

    def start(self) -> None:
        self.requests.start()  # prunes the request log past auth.request_log_days, then hourly
        if self.settings.auth.insecure and not is_loopback(self.settings.serve.host):
            log.warning(
                "audit.insecure_start",
                host=self.settings.serve.host,
                hint="anyone who reaches this port can use every route without a key",
            )

    def close(self) -> None:
        self.requests.close()
        self.store.close()

    def enabled(self) -> bool:
        """Whether keys are required now (auto: once a key exists, or off loopback)."""
        mode = self.settings.auth.mode
        if mode != "auto":
            return mode == "on"
        if not self._keys_seen:
            # Keys are never deleted (revoked ones stay), so once seen, always seen.
            self._keys_seen = self.store.any()
        return self._keys_seen or not (
            is_loopback(self.settings.serve.host) or self.settings.auth.insecure
        )

    # -- limits ------------------------------------------------------------------------------------

    def _item(self, rate: RateClass, key: ApiKey | None) -> RateLimitItem:
        if key is not None and key.rate_limit:
            item = self._per_key.get(key.rate_limit)
            if item is None:
                item = self._per_key[key.rate_limit] = parse(key.rate_limit)
            return item
        return self._defaults[rate]

    def _hit(self, item: RateLimitItem, *ids: str) -> tuple[bool, _Window]:
        allowed = self._limiter.hit(item, *ids)
        stats = self._limiter.get_window_stats(item, *ids)
        return allowed, _Window(item.amount, stats.remaining, stats.reset_time)

    # -- the check ---------------------------------------------------------------------------------

    def check(self, request: Request, access: Access, route: str) -> Principal:
        client = request.client.host if request.client else "unknown"
        state = request.scope.setdefault("state", {})
        key: ApiKey | None = None
        if access.role is not None and self.enabled():
            key = self._authenticate(request, client, route)
        principal = state["principal"] = Principal(key, client)
        # Count before the role check: a refused request is a request (and carries the headers).
        # Without a key, a client on this machine is the machine's own user (auth off on
        # loopback): limiting it would only throttle their benchmarks and agents.
        limited = key is not None or not is_loopback(client)
        if access.rate is not None and self.settings.rate_limits.enabled and limited:
            bucket = f"key:{key.id}" if key is not None else f"addr:{client}"
            allowed, window = self._hit(self._item(access.rate, key), access.rate, bucket)
            state["ratelimit"] = window
            if not allowed:
                retry = max(1, math.ceil(window.reset - time.time()))
                raise APIError(
                    "rate_limited",
                    f"Rate limit of {window.limit} requests reached for "
                    f"{'key ' + repr(key.name) if key else 'this address'}; retry in {retry} s.",
                    headers={"Retry-After": str(retry), **rate_headers(window)},
                )
        if key is not None and access.role is not None and not key.allows(access.role):
            log.warning(
                "audit.auth_refused",
                key=key.name,
                role=key.role,
                needs=access.role,
                route=route,
                client=client,
            )
            raise APIError(
                "permission_denied",
                f"Key {key.name!r} has role {key.role!r}; {request.method} {route} needs "
                f"{access.role!r}. Ask an admin for a key with that role.",
            )
        return principal

    def _authenticate(self, request: Request, client: str, route: str) -> ApiKey:
        token = _token(request)
        if token is None:
            log.info("audit.auth_failed", reason="missing", route=route, client=client)
            raise APIError(
                "auth_required",
                "This server requires an API key: send `Authorization: Bearer <key>` or "
                "`x-api-key: <key>` (an admin creates one with `impetus keys create`).",
            )
        if not self._limiter.test(self._failed, "failed_auth", client):
            stats = self._limiter.get_window_stats(self._failed, "failed_auth", client)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            log.warning("audit.auth_blocked", route=route, client=client)
            raise APIError(
                "rate_limited",
                f"Too many failed authentications from this address; retry in {retry} s.",
                headers={"Retry-After": str(retry)},
            )
        try:
            return self.store.verify(token)
        except KeyRejected as exc:
            self._limiter.hit(self._failed, "failed_auth", client)
            name = exc.key.name if exc.key else None
            log.warning(
                "audit.auth_failed", reason=exc.reason, key=name, route=route, client=client
            )
            message = {
                "expired": "This API key has expired; ask an admin for a new one.",
                "revoked": "This API key was revoked; ask an admin for a new one.",
            }.get(exc.reason, "Invalid API key.")
            raise APIError("auth_required", message) from None


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


def rate_headers(window: _Window) -> dict[str, str]:
    """X-RateLimit-Reset is in seconds from now (as Retry-After)."""
    return {
        "X-RateLimit-Limit": str(window.limit),
        "X-RateLimit-Remaining": str(max(0, window.remaining)),
        "X-RateLimit-Reset": str(max(0, math.ceil(window.reset - time.time()))),
    }


async def authorize(request: Request) -> None:
    """The dependency every route carries (installed app-wide by `create_app`)."""
    guard: Guard = request.app.state.guard
    route = getattr(request.scope.get("route"), "path", request.url.path)
    access = access_of(request.method, route)
    request.scope.setdefault("state", {})["route"] = route
    if guard.blocking:
        await anyio.to_thread.run_sync(guard.check, request, access, route)
    else:
        guard.check(request, access, route)


# The WebSocket subprotocol of the dashboard's event stream, and the prefix of the one that
# carries a browser's key (browsers cannot set headers on a WebSocket): see docs/api.md "Dashboard".
WS_PROTOCOL = "impetus.v1"
WS_BEARER = "bearer."


def websocket_protocols(scope: Scope) -> list[str]:
    """The subprotocols a WebSocket handshake offers (never logged: one may carry a key)."""
    for name, value in scope.get("headers", ()):
        if name == b"sec-websocket-protocol":
            return [p.strip() for p in value.decode("latin-1").split(",") if p.strip()]
    return []


async def authorize_websocket(websocket: WebSocket) -> Principal:
    """`authorize` for a WebSocket handshake: the same key lookup, failed-auth limit, rate limit
    and role check, with the key taken from `Authorization`/`x-api-key` or, for browsers, from a
    `bearer.<key>` subprotocol. Raises `APIError` (the route closes the socket with its code)."""
    guard: Guard = websocket.app.state.guard
    route = getattr(websocket.scope.get("route"), "path", websocket.url.path)
    access = WEBSOCKETS.get(route, DEFAULT_ACCESS)
    headers = [(k, v) for k, v in websocket.scope["headers"] if k != b"sec-websocket-protocol"]
    offered = [p for p in websocket_protocols(websocket.scope) if p.startswith(WS_BEARER)]
    if offered and not any(k in (b"authorization", b"x-api-key") for k, _ in headers):
        headers.append((b"authorization", b"Bearer " + offered[0][len(WS_BEARER) :].encode()))
    # Guard.check reads a Request: the handshake's scope as the GET it is.
    request = Request({**websocket.scope, "type": "http", "method": "GET", "headers": headers})
    if guard.blocking:
        return await anyio.to_thread.run_sync(guard.check, request, access, route)
    return guard.check(request, access, route)


def principal(request: Request) -> Principal | None:
    """Who made this request (set by `authorize`)."""
    p: Principal | None = request.scope.get("state", {}).get("principal")
    return p


class AccessMiddleware:
    """Adds X-RateLimit-* headers to each response and writes its request log line."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500
        usage = RequestUsage()
        token = _usage.set(usage)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                window = state.get("ratelimit")
                if window is not None:
                    present = {k.lower() for k, _ in message.get("headers", [])}
                    extra = [
                        (k.lower().encode(), v.encode())
                        for k, v in rate_headers(window).items()
                        if k.lower().encode() not in present
                    ]
                    message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            _usage.reset(token)
            route = state.get("route")
            if route is not None:
                p: Principal | None = state.get("principal")
                client = scope.get("client")
                self.guard.requests.put(
                    RequestRecord(
                        time=time.time(),
                        key_id=p.key.id if p and p.key else None,
                        route=route,
                        method=scope["method"],
                        status=status,
                        latency_ms=(time.perf_counter() - started) * 1000,
                        tokens=usage.tokens,
                        client=client[0] if client else None,
                    )
                )
                if self.guard.observers:
                    self._observe(scope, state, route, status, started, usage, p)

    def _observe(
        self,
        scope: Scope,
        state: dict[str, Any],
        route: str,
        status: int,
        started: float,
        usage: RequestUsage,
        p: Principal | None,
    ) -> None:
        row = {
            "id": state.get("request_id"),
            "ts": time.time(),
            "method": scope["method"],
            "route": route,
            "model": usage.model,
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "ttft_ms": None if usage.ttft_ms is None else round(usage.ttft_ms, 2),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "key_name": p.name if p else None,
        }
        for observe in self.guard.observers:
            try:
                observe(row)
            except Exception as exc:  # an observer must not fail the request
                log.warning("request.observer_failed", error=str(exc))
