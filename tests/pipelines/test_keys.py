"""The key store on a real SQLite file in a temporary data_dir: hashing, roles, expiry, usage."""

from __future__ import annotations

import stat
import time
from datetime import timedelta
from pathlib import Path

import pytest

from pipelines.keys import (
    DB_NAME,
    PEPPER_NAME,
    KeyRejected,
    KeyStore,
    KeyStoreError,
    RequestRecord,
    check_rate_limit,
    parse_duration,
)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore.open(tmp_path)


def test_a_token_verifies_and_only_its_keyed_hash_is_stored(
    store: KeyStore, tmp_path: Path
) -> None:
    key, token = store.create("ci", "user", rate_limit="5/minute")
    assert token.startswith(f"imp_{key.id}_")
    assert store.verify(token) == key
    assert key.rate_limit == "5/minute" and key.allows("readonly") and not key.allows("admin")
    secret = token.split("_", 2)[2]
    store.close()
    for path in tmp_path.iterdir():
        assert secret.encode() not in path.read_bytes(), path
    assert stat.S_IMODE((tmp_path / PEPPER_NAME).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / DB_NAME).stat().st_mode) == 0o600


def test_a_second_install_with_another_pepper_does_not_accept_the_token(tmp_path: Path) -> None:
    a = KeyStore.open(tmp_path / "a")
    _, token = a.create("ci", "admin")
    a.close()  # checkpoint the WAL into the file
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / DB_NAME).write_bytes((tmp_path / "a" / DB_NAME).read_bytes())
    b = KeyStore.open(tmp_path / "b")  # a copied database without its pepper is useless
    with pytest.raises(KeyRejected) as exc:
        b.verify(token)
    assert exc.value.reason == "wrong_secret"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("sk-not-ours", "malformed"),
        ("imp_000000000000_" + "x" * 43, "unknown"),
    ],
)
def test_foreign_tokens_are_rejected(store: KeyStore, token: str, reason: str) -> None:
    with pytest.raises(KeyRejected) as exc:
        store.verify(token)
    assert exc.value.reason == reason


def test_revoked_expired_and_rotated_keys(store: KeyStore) -> None:
    key, token = store.create("short", "readonly", expires_in=timedelta(seconds=60))
    with pytest.raises(KeyRejected, match="expired"):
        store.verify(token, now=time.time() + 61)
    _, rotated = store.rotate("short")
    with pytest.raises(KeyRejected, match="wrong_secret"):
        store.verify(token)
    assert store.verify(rotated).id == key.id
    store.revoke(key.id)
    with pytest.raises(KeyRejected, match="revoked"):
        store.verify(rotated)
    assert store.get("short").status() == "revoked"
    assert store.any()  # a revoked key still counts: auth stays on in auto mode


def test_bad_input_says_what_to_do(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="Unknown role"):
        store.create("x", "root")
    store.create("x", "user")
    with pytest.raises(KeyStoreError, match="exists"):
        store.create("x", "user")
    with pytest.raises(KeyStoreError, match="No key"):
        store.revoke("nobody")
    with pytest.raises(KeyStoreError, match="duration"):
        parse_duration("soon")
    with pytest.raises(KeyStoreError, match="rate limit"):
        check_rate_limit("lots")
    assert parse_duration("30d") == timedelta(days=30)


def test_usage_and_retention(store: KeyStore) -> None:
    key, _ = store.create("ci", "user")
    now = time.time()
    store.record(
        [
            RequestRecord(now - 86400 * 40, key.id, "/v1/models", "GET", 200, 1.0),
            RequestRecord(now, key.id, "/v1/chat/completions", "POST", 200, 10.0, tokens=12),
            RequestRecord(now, key.id, "/v1/chat/completions", "POST", 429, 0.5),
            RequestRecord(now, None, "/v1/models", "GET", 200, 1.0),
        ]
    )
    assert store.get("ci").last_used == pytest.approx(now)
    assert store.prune(30) == 1
    rows = {r["name"]: r for r in store.usage()}
    assert rows["ci"]["requests"] == 2 and rows["ci"]["tokens"] == 12
    assert rows["ci"]["errors"] == 1 and rows["ci"]["rate_limited"] == 1
    assert rows[None]["requests"] == 1
    routes = store.routes(ref="ci")
    assert routes == [
        {
            "key_id": key.id,
            "method": "POST",
            "route": "/v1/chat/completions",
            "requests": 2,
            "errors": 1,
        }
    ]
