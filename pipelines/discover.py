"""Find the documents to ingest: files named on the command line, and supported files under
directories (hidden files and folders skipped), each hashed into a `SourceDocument`.

    from pipelines.discover import discover_documents
    found = discover_documents(["data/samples"])
    found.documents, found.unreadable

A file named explicitly is always taken (an unsupported type then fails in parsing, with its
reason recorded); inside a directory only the parser's supported extensions are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import ImpetusError
from pipelines.records import SourceDocument, doc_id_for


class SourceNotFound(ImpetusError):
    """A path given to ingest does not exist."""


@dataclass
class Discovery:
    documents: list[SourceDocument] = field(default_factory=list)
    # Files found but not readable (permissions, vanished mid-walk): placeholder + reason.
    unreadable: list[tuple[SourceDocument, str]] = field(default_factory=list)

    @property
    def doc_ids(self) -> set[str]:
        return {d.doc_id for d in self.documents} | {d.doc_id for d, _ in self.unreadable}


def discover_documents(paths: Iterable[str | Path]) -> Discovery:
    """Every document under `paths`, in path order (so runs are reproducible)."""
    from pipelines.parse import SUPPORTED_EXTENSIONS

    found = Discovery()
    files: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if path.is_file():
            files[str(path)] = path
        elif path.is_dir():
            for f in _walk(path):
                if f.suffix.lower() in SUPPORTED_EXTENSIONS:
                    files[str(f)] = f
        else:
            raise SourceNotFound(f"{raw}: no such file or directory")
    for source in sorted(files):
        try:
            found.documents.append(SourceDocument.from_path(files[source]))
        except OSError as e:
            placeholder = SourceDocument(doc_id_for(source), source, "", 0, 0.0)
            found.unreadable.append((placeholder, f"{source}: cannot be read: {e.strerror or e}"))
    return found


def _walk(root: Path) -> Iterator[Path]:
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            yield from _walk(p)
        elif p.is_file():
            yield p
