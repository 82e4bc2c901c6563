"""Uploaded files (OpenAI's Files API) and the vector stores built from them, on disk.

    store = UploadStore.open(settings.data_dir)
    rec = store.add("notes.md", "assistants", staged_path)   # moved to uploads/<id>/notes.md
    store.get(rec.id), store.files(), store.delete(rec.id)

A file lives at `data_dir/uploads/<file_id>/<sanitised name>` (that folder is always an index
root, pipelines/roots.py); its metadata, the vector stores created through the API and the
index state of each file added to one are in `data_dir/files.sqlite3` (stdlib SQLite, WAL, like
pipelines/keys.py: small, written rarely, read by any process). What a file may be is judged
here too: `check_content` sniffs the first bytes with libmagic (python-magic) and compares them
with the name's extension, so a binary renamed `.md` is refused. No FastAPI here.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import ImpetusError
from pipelines.roots import UPLOADS_DIR

DB_NAME = "files.sqlite3"
MAX_NAME_BYTES = 200
SNIFF_BYTES = 8192
# What libmagic may call a file of each kind pipelines/parse.py parses (by extension).
_MIME_OF_KIND: dict[str, tuple[str, ...]] = {
    "md": ("text/",),
    "text": ("text/", "application/json", "application/csv"),
    "html": ("text/",),
    "pdf": ("application/pdf",),
    "docx": (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/zip",
    ),
}
_FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    mime TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vector_stores (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    metadata TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vector_store_files (
    vector_store_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    run_id TEXT,
    status TEXT NOT NULL,
    last_error TEXT,
    bytes INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (vector_store_id, file_id)
);
"""


class UploadError(ImpetusError):
    """An upload that cannot be kept: its type, its name, or it is empty (400)."""


class FileNotFound(ImpetusError):
    """No uploaded file with that id (404)."""


@dataclass(frozen=True)
class FileRecord:
    """One uploaded file, as OpenAI's `file` object says it (plus its type and path)."""

    id: str
    filename: str
    bytes: int
    purpose: str
    mime: str
    created_at: int

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class StoreFile:
    """A file added to a vector store, and how its index run went."""

    vector_store_id: str
    file_id: str
    run_id: str | None
    status: str  # in_progress | completed | failed | cancelled
    last_error: str | None
    bytes: int
    created_at: int


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def is_file_id(value: str) -> bool:
    return bool(_FILE_ID.match(value))


def sanitize_filename(name: str | None) -> str:
    """A file name safe to store: its last path part, no control or path characters, NFC,
    at most MAX_NAME_BYTES bytes of UTF-8 (the extension kept); raises UploadError if nothing is left."""
    base = re.split(r"[\\/]", unicodedata.normalize("NFC", name or ""))[-1]
    base = "".join(
        c for c in base if unicodedata.category(c)[0] != "C" and c not in '<>:"|?*'
    ).strip(" .")
    if not base:
        raise UploadError("the file needs a name with an extension, e.g. notes.md")
    if len(base.encode()) > MAX_NAME_BYTES:  # file systems count bytes (255 at most)
        stem, dot, ext = base.rpartition(".")
        ext = dot + ext[:16] if dot else ""
        stem = stem if dot else base
        room = MAX_NAME_BYTES - len(ext.encode())
        stem = stem.encode()[:room].decode(errors="ignore").rstrip(" .")
        base = stem + ext
    return base


def check_content(filename: str, head: bytes) -> str:
    """The file's MIME type (libmagic) if it is a kind the ingest pipeline parses and matches
    its extension; UploadError otherwise."""
    import magic

    from pipelines.parse import SUPPORTED_EXTENSIONS

    ext = Path(filename).suffix.lower()
    kind = SUPPORTED_EXTENSIONS.get(ext)
    if kind is None:
        supported = " ".join(sorted(SUPPORTED_EXTENSIONS))
        raise UploadError(
            f"{filename!r}: files of type {ext or '(no extension)'!r} cannot be indexed; "
            f"supported: {supported}"
        )
    if not head:
        raise UploadError(f"{filename!r} is empty")
    mime = str(magic.from_buffer(head, mime=True))
    if not mime.startswith(_MIME_OF_KIND[kind]):
        raise UploadError(
            f"{filename!r}: its content is {mime}, not what a {ext} file holds; upload the "
            "document in its own format"
        )
    return mime


class UploadStore:
    """The uploads folder and its SQLite database; safe to share between threads."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / UPLOADS_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            data_dir / DB_NAME, check_same_thread=False, isolation_level=None, timeout=10
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def open(cls, data_dir: Path) -> UploadStore:
        return cls(data_dir)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    # -- files ----------------------------------------------------------------------------------

    def staging(self) -> Path:
        """A fresh folder under uploads/.staging for a file being received (hidden: discovery
        skips dot-folders, so a half-written file is never indexed)."""
        path = self.root / ".staging" / secrets.token_hex(8)
        path.mkdir(parents=True)
        return path

    def add(self, filename: str, purpose: str, staged: Path, mime: str) -> FileRecord:
        """Move a received file from its staging folder into place and record it."""
        file_id = new_file_id()
        folder = self.root / file_id
        folder.mkdir()
        target = folder / filename
        staged.replace(target)
        rec = FileRecord(file_id, filename, target.stat().st_size, purpose, mime, int(time.time()))
        with self._sql() as db:
            db.execute(
                "INSERT INTO files (id, filename, bytes, purpose, mime, created_at) "
                "VALUES (:id, :filename, :bytes, :purpose, :mime, :created_at)",
                asdict(rec),
            )
        return rec

    def get(self, file_id: str) -> FileRecord:
        with self._sql() as db:
            row = db.execute(
                "SELECT id, filename, bytes, purpose, mime, created_at FROM files WHERE id = ?",
                [file_id],
            ).fetchone()
        if row is None:
            raise FileNotFound(f"no file {file_id!r}; GET /v1/files lists the uploaded files")
        return FileRecord(*row)

    def files(self, purpose: str | None = None) -> list[FileRecord]:
        sql = "SELECT id, filename, bytes, purpose, mime, created_at FROM files"
        args: list[Any] = []
        if purpose:
            sql, args = sql + " WHERE purpose = ?", [purpose]
        with self._sql() as db:
            rows = db.execute(sql + " ORDER BY created_at DESC, id", args).fetchall()
        return [FileRecord(*r) for r in rows]

    def path(self, rec: FileRecord) -> Path:
        return self.root / rec.id / rec.filename

    def delete(self, file_id: str) -> None:
        """Forget the file and remove it from disk (what was indexed stays until a prune)."""
        self.get(file_id)
        with self._sql() as db:
            db.execute("DELETE FROM files WHERE id = ?", [file_id])
            db.execute("DELETE FROM vector_store_files WHERE file_id = ?", [file_id])
        shutil.rmtree(self.root / file_id, ignore_errors=True)

    # -- vector stores --------------------------------------------------------------------------

    def add_vector_store(self, vs_id: str, name: str, metadata: dict[str, Any] | None) -> int:
        created = int(time.time())
        with self._sql() as db:
            db.execute(
                "INSERT OR IGNORE INTO vector_stores (id, name, metadata, created_at) "
                "VALUES (?, ?, ?, ?)",
                [vs_id, name, json.dumps(metadata or {}), created],
            )
        return created

    def vector_stores(self) -> dict[str, tuple[str, dict[str, Any], int]]:
        """id -> (name, metadata, created_at) of the vector stores created through the API."""
        with self._sql() as db:
            rows = db.execute("SELECT id, name, metadata, created_at FROM vector_stores").fetchall()
        return {r[0]: (r[1], json.loads(r[2] or "{}"), r[3]) for r in rows}

    def delete_vector_store(self, vs_id: str) -> None:
        with self._sql() as db:
            db.execute("DELETE FROM vector_stores WHERE id = ?", [vs_id])
            db.execute("DELETE FROM vector_store_files WHERE vector_store_id = ?", [vs_id])

    def put_store_file(self, f: StoreFile) -> None:
        with self._sql() as db:
            db.execute(
                "INSERT OR REPLACE INTO vector_store_files (vector_store_id, file_id, run_id, "
                "status, last_error, bytes, created_at) VALUES (:vector_store_id, :file_id, "
                ":run_id, :status, :last_error, :bytes, :created_at)",
                asdict(f),
            )

    def store_files(self, vs_id: str) -> list[StoreFile]:
        with self._sql() as db:
            rows = db.execute(
                "SELECT vector_store_id, file_id, run_id, status, last_error, bytes, created_at "
                "FROM vector_store_files WHERE vector_store_id = ? ORDER BY created_at, file_id",
                [vs_id],
            ).fetchall()
        return [StoreFile(*r) for r in rows]
