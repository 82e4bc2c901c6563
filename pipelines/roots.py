"""The folders a server may index (`rag.index_roots`, plus `data_dir/uploads`), and how a
document's path is shown to clients: relative to its root, never absolute.

    roots = IndexRoots.from_settings(settings)
    roots.allowed("data/samples/intro.md")     # -> the resolved Path, or raises PathNotAllowed
    roots.display("/…/data/samples/intro.md")   # -> "samples/intro.md"

A path is resolved (symlinks and `..` followed) before it is compared with the roots, so a
symlink that points out of a root, or `../..`, is outside. Every path outside the roots gets the
same `PathNotAllowed` whether or not it exists, so a caller learns nothing about the server's
disk; only a missing path inside a root says that it is missing. The local CLI does not use this:
a user running `impetus ingest` owns the disk already.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.errors import ImpetusError

if TYPE_CHECKING:
    from pipelines.settings import Settings

UPLOADS_DIR = "uploads"
NOT_ALLOWED = (
    "This path may not be indexed by the server: only folders under rag.index_roots (and "
    "uploads, POST /v1/files) are. Ask the server's operator to add the folder to "
    "rag.index_roots, or upload the files."
)


class PathNotAllowed(ImpetusError):
    """A path outside the index roots (or one that cannot be named): always the same message."""

    def __init__(self) -> None:
        super().__init__(NOT_ALLOWED)


class PathMissing(ImpetusError):
    """A path inside an index root that does not exist."""


@dataclass(frozen=True)
class IndexRoots:
    """Resolved index roots; `uploads` (data_dir/uploads) is always one of them."""

    roots: tuple[Path, ...]
    uploads: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> IndexRoots:
        from pipelines.settings import PROJECT_ROOT

        uploads = (settings.data_dir / UPLOADS_DIR).resolve()
        roots = [(PROJECT_ROOT / p).expanduser().resolve() for p in settings.rag.index_roots]
        return cls(tuple(dict.fromkeys([*roots, uploads])), uploads)

    def root_of(self, path: Path) -> Path | None:
        """The root `path` (already resolved) lies in, the deepest one if roots nest."""
        inside = [r for r in self.roots if path == r or path.is_relative_to(r)]
        return max(inside, key=lambda r: len(r.parts)) if inside else None

    def allowed(self, raw: str) -> Path:
        """`raw` resolved, if it lies in a root and exists; relative paths are taken from the
        checkout's root (as the settings' paths are), or else as `display` shows them
        (`samples/guides`: what the dashboard's folder picker lists, GET /api/rag/roots)."""
        from pipelines.settings import PROJECT_ROOT

        if not raw or "\x00" in raw:
            raise PathNotAllowed()
        try:
            path = (PROJECT_ROOT / Path(raw).expanduser()).resolve()
            root = self.root_of(path)
            shown = Path(self.absolute(raw)) if root is None else None
            if shown is not None and shown.is_absolute() and not Path(raw).is_absolute():
                path = shown.resolve()
                root = self.root_of(path)
        except (OSError, RuntimeError, ValueError):  # a symlink loop, an unnameable path
            raise PathNotAllowed() from None
        if root is None:
            raise PathNotAllowed()
        if not path.exists():
            raise PathMissing(f"{self.display(str(path))}: no such file or directory")
        return path

    def allowed_all(self, paths: Sequence[str]) -> list[str]:
        """Each of `paths` checked with `allowed`, as resolved strings."""
        return [str(self.allowed(p)) for p in paths]

    def display(self, source: str) -> str:
        """How clients see a document's path: `<root's name>/<path in the root>`; an upload as
        `uploads/<name>`; a path outside every root (indexed by the local CLI) by its file name."""
        if not source:
            return source
        path = Path(source)
        root = self.root_of(path) if path.is_absolute() else None
        if root is None:
            return path.name
        rel = path.relative_to(root)
        if root == self.uploads and len(rel.parts) > 1:
            rel = Path(*rel.parts[1:])  # drop the upload's <file_id>/ folder
        return str(Path(root.name) / rel)

    def relative(self, source: str) -> str | None:
        """`source` relative to its root (None outside every root)."""
        path = Path(source)
        root = self.root_of(path) if path.is_absolute() else None
        return None if root is None else str(path.relative_to(root))

    def scrub(self, text: str, data_dir: Path | None = None) -> str:
        """`text` (an error message) with the roots' and data_dir's absolute paths replaced by
        their display names, deepest first."""
        names = {str(r): r.name for r in self.roots}
        if data_dir is not None:
            names.setdefault(str(data_dir.resolve()), "<data_dir>")
            names.setdefault(str(data_dir), "<data_dir>")
        for prefix in sorted(names, key=len, reverse=True):
            text = text.replace(prefix, names[prefix])
        return text

    def absolute(self, shown: str) -> str:
        """The stored path of a source as `display` shows it (`samples/intro.md`), for filters;
        `shown` itself when no root has that name."""
        parts = Path(shown).parts
        if not parts or Path(shown).is_absolute():
            return shown
        for root in self.roots:
            if root.name == parts[0] and root != self.uploads:
                return str(root.joinpath(*parts[1:]))
        return shown
