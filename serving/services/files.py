"""Uploads and the names clients see for documents: file ids, file names, display paths.

    ref = file_ref(source, roots)   # -> ("file-…", "intro.md")

One scheme for every API that names a document (vector store files and search results,
Responses' file_search citations): an uploaded document's id is its upload id (the folder it is
stored in, `uploads/<file_id>/<name>`); a document indexed from a root path gets the stable id
"file-" + the first 24 hex characters of sha256 of its path relative to its root (its absolute
path when it lies in no root: indexed by the local CLI), so ids do not change when the data
directory moves. `receive_upload` streams a multipart part to disk under the size limit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import anyio

from pipelines.roots import IndexRoots
from pipelines.uploads import SNIFF_BYTES, FileRecord, UploadStore, check_content, is_file_id

CHUNK_BYTES = 1 << 20


class UploadTooLarge(Exception):
    """The upload passed `max_bytes` (413); what was received is already removed."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            f"The file is larger than {max_bytes} bytes (rag.upload_max_bytes); nothing was kept."
        )


class Readable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


def file_ref(source: str, roots: IndexRoots) -> tuple[str, str]:
    """(file id, file name) of the document whose stored path is `source`."""
    path = Path(source)
    if path.is_absolute() and roots.root_of(path) == roots.uploads:
        parts = path.relative_to(roots.uploads).parts
        if len(parts) >= 2 and is_file_id(parts[0]):
            return parts[0], path.name
    key = roots.relative(source) or source
    return "file-" + hashlib.sha256(key.encode()).hexdigest()[:24], path.name


async def receive_upload(
    store: UploadStore,
    upload: Readable,
    filename: str,
    purpose: str,
    max_bytes: int,
) -> FileRecord:
    """Write `upload` into a staging folder, counting bytes (UploadTooLarge past `max_bytes`),
    check its content type, then move it into place; nothing stays behind on failure."""
    import shutil

    staging = await anyio.to_thread.run_sync(store.staging)
    target = staging / filename
    try:
        size = 0
        head = b""
        with target.open("wb") as out:
            while chunk := await upload.read(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(max_bytes)
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                await anyio.to_thread.run_sync(out.write, chunk)
        mime = check_content(filename, head)
        return await anyio.to_thread.run_sync(store.add, filename, purpose, target, mime)
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(staging, ignore_errors=True))
