"""Stored Responses (`POST /v1/responses` with `store: true`): one SQLite file under data_dir.

    store = ResponseStore(settings.data_dir / "responses.sqlite3")
    store.put(StoredResponse(id, owner, created_at, response, items))
    store.get(id)  # None when unknown or deleted

A row keeps the response object as the API returns it, the input items the model saw (the
previous responses' items and outputs, then this request's own: what
`GET /v1/responses/{id}/input_items` lists and what a `previous_response_id` follow-up continues
from) and the id of the API key that created it (None with auth off), so that other keys cannot
read it. SQLite because it is in the standard library, survives restarts and admits the one
server process that writes it; each call is a short transaction under a lock (rows are small, a
call takes well under a millisecond, so the routes call it on the event loop).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT,
    created_at INTEGER NOT NULL,
    response TEXT NOT NULL,
    items TEXT NOT NULL
)
"""


@dataclass
class StoredResponse:
    """One stored response: the API's response object and the input items it answered."""

    id: str
    owner: str | None  # the creating API key's id; None when auth was off
    created_at: int
    response: dict[str, Any]
    items: list[dict[str, Any]]


class ResponseStore:
    """Responses by id in `path` (created on first use)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def put(self, record: StoredResponse) -> None:
        """Insert or replace (a background response is saved as it starts, then as it ends)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (id, owner, created_at, response, items) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.owner,
                    record.created_at,
                    json.dumps(record.response, separators=(",", ":")),
                    json.dumps(record.items, separators=(",", ":")),
                ),
            )

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, owner, created_at, response, items FROM responses WHERE id = ?",
                (response_id,),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]))

    def delete(self, response_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
