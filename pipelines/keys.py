"""API keys: their store, hashing, roles and expiry, and the request log that feeds usage reports.

    store = KeyStore.open(settings.data_dir)
    key, token = store.create("ci", "user", expires_in=parse_duration("30d"))  # token shown once
    store.verify(token)        # -> ApiKey, or raises KeyRejected (unknown, wrong, revoked, expired)

A token reads `imp_<id>_<secret>`: `id` (12 hex characters) is not secret and finds the row; only
HMAC-SHA256(pepper, id:secret) is stored, the pepper being a per-install random file beside the
database (0600). See docs/decisions/api-key-hashing.md for why a fast keyed hash.

The database is SQLite (stdlib, WAL): `impetus keys` writes while a server reads, which DuckDB's
one-writer lock would forbid. Revocation and expiry hold at the next request: `verify` reads the
row every time. No FastAPI here (serving/http/auth.py is the HTTP side).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import structlog

from pipelines.errors import ImpetusError

log = structlog.get_logger(__name__)

Role = Literal["readonly", "user", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)  # in increasing power: each role has its lower ones'
TOKEN_PREFIX = "imp"
DB_NAME = "keys.sqlite3"
PEPPER_NAME = "keys.pepper"
_TOKEN = re.compile(r"^imp_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")
_DURATION = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    rate_limit TEXT,
    created REAL NOT NULL,
    expires REAL,
    revoked REAL,
    last_used REAL
);
CREATE TABLE IF NOT EXISTS requests (
    time REAL NOT NULL,
    key_id TEXT,
    route TEXT NOT NULL,
    method TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    tokens INTEGER,
    client TEXT
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time);
CREATE INDEX IF NOT EXISTS requests_key ON requests (key_id, time);
"""


class KeyStoreError(ImpetusError):
    """A key operation that cannot be done (unknown name, duplicate name, bad role or duration)."""


class KeyRejected(ImpetusError):
    """A presented token is not accepted; `reason` is for the audit log, never for the client."""

    def __init__(self, reason: str, key: ApiKey | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


@dataclass(frozen=True)
class ApiKey:
    """One key's row, without its hash."""

    id: str
    name: str
    role: Role
    created: float
    expires: float | None = None
    revoked: float | None = None
    last_used: float | None = None
    rate_limit: str | None = None  # e.g. "60/minute"; None: the server's defaults

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"

    def allows(self, required: Role) -> bool:
        """Whether this key's role includes `required` (admin ⊃ user ⊃ readonly)."""
        return ROLES.index(self.role) >= ROLES.index(required)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status()}


@dataclass(frozen=True)
class RequestRecord:
    """One line of the request log (written by the server, read by `impetus keys usage`)."""

    time: float
    key_id: str | None
    route: str
    method: str
    status: int
    latency_ms: float
    tokens: int | None = None
    client: str | None = None


def parse_duration(text: str) -> timedelta:
    """'90m', '12h', '30d', '2w' → a timedelta (what `--expires` takes)."""
    m = _DURATION.match(text.strip().lower())
    if not m or int(m.group(1)) <= 0:
        raise KeyStoreError(
            f"Invalid duration {text!r}: use a positive number with m, h, d or w (30d)."
        )
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def check_rate_limit(text: str) -> str:
    """Validate a rate limit such as '60/minute' (the `limits` library's notation)."""
    from limits import parse_many

    try:
        parse_many(text)
    except ValueError as exc:
        raise KeyStoreError(
            f"Invalid rate limit {text!r}: write N/second|minute|hour|day (60/minute)."
        ) from exc
    return text


def load_pepper(data_dir: Path) -> bytes:
    """The per-install secret of the keyed hash, created (0600) on first use."""
    path = data_dir / PEPPER_NAME
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pepper = path.read_bytes()
        if len(pepper) < 32:
            raise KeyStoreError(f"{path} is damaged (shorter than 32 bytes); restore it.") from None
        return pepper
    pepper = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(pepper)
    return pepper


class KeyStore:
    """The keys and request log of one data_dir; thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path, pepper: bytes) -> None:
        self.path = path
        self._pepper = pepper
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        os.chmod(path, 0o600)

    @classmethod
    def open(cls, data_dir: Path) -> KeyStore:
        return cls(data_dir / DB_NAME, load_pepper(data_dir))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _hash(self, key_id: str, secret: str) -> str:
        return hmac.new(self._pepper, f"{key_id}:{secret}".encode(), hashlib.sha256).hexdigest()

    # -- keys ------------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        role: str,
        *,
        expires_in: timedelta | None = None,
        rate_limit: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its token (the only time the token exists outside the client)."""
        if role not in ROLES:
            raise KeyStoreError(f"Unknown role {role!r}: use one of {', '.join(ROLES)}.")
        if not name.strip():
            raise KeyStoreError("A key needs a name (--name).")
        if rate_limit is not None:
            check_rate_limit(rate_limit)
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = time.time()
        expires = now + expires_in.total_seconds() if expires_in else None
        with self._tx() as db:
            if db.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                raise KeyStoreError(
                    f"A key named {name!r} exists; choose another name or rotate it."
                )
            db.execute(
                "INSERT INTO keys (id, name, role, hash, rate_limit, created, expires) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, name, role, self._hash(key_id, secret), rate_limit, now, expires),
            )
        log.info("audit.key_created", key=name, key_id=key_id, role=role, expires=expires)
        return self.get(key_id), f"{TOKEN_PREFIX}_{key_id}_{secret}"

    def rotate(self, ref: str) -> tuple[ApiKey, str]:
        """A new secret for a key (same id, name, role, expiry); the old token stops at once."""
        key = self.get(ref)
        if key.revoked is not None:
            raise KeyStoreError(f"Key {key.name!r} is revoked; create a new one.")
        secret = secrets.token_urlsafe(32)
        with self._tx() as db:
            db.execute(
                "UPDATE keys SET hash = ? WHERE id = ?", (self._hash(key.id, secret), key.id)
            )
        log.info("audit.key_rotated", key=key.name, key_id=key.id)
        return key, f"{TOKEN_PREFIX}_{key.id}_{secret}"

    def revoke(self, ref: str) -> ApiKey:
        key = self.get(ref)
        if key.revoked is None:
            with self._tx() as db:
                db.execute("UPDATE keys SET revoked = ? WHERE id = ?", (time.time(), key.id))
            log.info("audit.key_revoked", key=key.name, key_id=key.id)
        return self.get(key.id)

    def get(self, ref: str) -> ApiKey:
        """A key by id or by name."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM keys WHERE id = ? OR name = ?", (ref, ref)
            ).fetchone()
        if row is None:
            raise KeyStoreError(f"No key {ref!r}; `impetus keys list` shows them.")
        return _key(row)

    def all(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY created").fetchall()
        return [_key(r) for r in rows]

    def any(self) -> bool:
        """Whether a key was ever created (revoked ones count: revoking keeps auth on)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM keys LIMIT 1").fetchone() is not None

    def verify(self, token: str, now: float | None = None) -> ApiKey:
        """The key a token belongs to, read from the database now; raises `KeyRejected`."""
        m = _TOKEN.match(token)
        if m is None:
            raise KeyRejected("malformed")
        key_id, secret = m.groups()
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS}, hash FROM keys WHERE id = ?", (key_id,)
            ).fetchone()
        # Hash even for an unknown id, so that timing does not tell ids apart.
        presented = self._hash(key_id, secret)
        if row is None:
            hmac.compare_digest(presented, "0" * 64)
            raise KeyRejected("unknown")
        key = _key(row[:-1])
        if not hmac.compare_digest(presented, row[-1]):
            raise KeyRejected("wrong_secret", key)
        status = key.status(now)
        if status != "active":
            raise KeyRejected(status, key)
        return key

    # -- request log -----------------------------------------------------------------------------

    def record(self, records: Sequence[RequestRecord]) -> None:
        """Append to the request log and move each key's last_used forward."""
        if not records:
            return
        last: dict[str, float] = {}
        for r in records:
            if r.key_id is not None:
                last[r.key_id] = max(last.get(r.key_id, 0.0), r.time)
        with self._tx() as db:
            db.executemany(
                "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.time,
                        r.key_id,
                        r.route,
                        r.method,
                        r.status,
                        r.latency_ms,
                        r.tokens,
                        r.client,
                    )
                    for r in records
                ],
            )
            db.executemany(
                "UPDATE keys SET last_used = max(coalesce(last_used, 0), ?) WHERE id = ?",
                [(t, k) for k, t in last.items()],
            )

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete request log lines older than `retention_days`; the count deleted."""
        cutoff = (time.time() if now is None else now) - retention_days * 86400
        with self._tx() as db:
            return db.execute("DELETE FROM requests WHERE time < ?", (cutoff,)).rowcount

    def usage(self, since: float = 0.0, ref: str | None = None) -> list[dict[str, Any]]:
        """Per key (None: requests without a key): requests, errors, tokens, p50-ish latency."""
        where = "WHERE r.time >= ?"
        args: list[Any] = [since]
        if ref is not None:
            where += " AND r.key_id = ?"
            args.append(self.get(ref).id)
        with self._lock:
            rows = self._db.execute(
                "SELECT r.key_id, k.name, count(*), sum(r.status >= 400), sum(r.status = 429), "
                "coalesce(sum(r.tokens), 0), avg(r.latency_ms), max(r.time) "
                f"FROM requests r LEFT JOIN keys k ON k.id = r.key_id {where} "
                "GROUP BY r.key_id ORDER BY count(*) DESC",
                args,
            ).fetchall()
        names = ("key_id", "name", "requests", "errors", "rate_limited", "tokens", "avg_ms", "last")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def routes(self, since: float = 0.0, ref: str | None = None) -> list[dict[str, Any]]:
        """Requests per key and route (what `impetus keys usage --by-route` prints)."""
        where = "WHERE time >= ?"
        args: list[Any] = [since]
        if ref is not None:
            where += " AND key_id = ?"
            args.append(self.get(ref).id)
        with self._lock:
            rows = self._db.execute(
                f"SELECT key_id, method, route, count(*), sum(status >= 400) FROM requests {where} "
                "GROUP BY key_id, method, route ORDER BY count(*) DESC",
                args,
            ).fetchall()
        names = ("key_id", "method", "route", "requests", "errors")
        return [dict(zip(names, row, strict=True)) for row in rows]


_COLUMNS = "id, name, role, created, expires, revoked, last_used, rate_limit"


def _key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(*row)
