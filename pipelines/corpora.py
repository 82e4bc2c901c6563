"""Real corpora that nobody here wrote, fetched on demand (never committed): Debian's Python docs.

    python -m pipelines.corpora python-docs            # `make corpus`: fetch + unpack, print root
    python -m pipelines.corpora python-docs --subset   # also link the evaluation subset, print it

`python-docs` is the HTML of Debian bookworm's `python3.11-doc` package, fetched with
`apt-get download` (no root needed) and unpacked with `dpkg -x` into
`data_dir/corpora/python3.11-doc/`. The corpus root (what the questions in
`data/eval/python-docs.jsonl` name their sources relative to) is its `usr/share/doc/python3.11/html`.

Embedding the whole manual (about 500 pages) takes long on a CPU, so the retrieval evaluation
ingests a subset: every `library/` page a question points to, plus, as distractors, every other
`library/` page with less than `DISTRACTOR_MAX_CHARS` characters of text. `--subset` builds it
as a folder of symlinks (`data_dir/corpora/python-docs-subset/library/*.html`) to ingest.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipelines.errors import ImpetusError

PACKAGE = "python3.11-doc"
DOC_ROOT = Path("usr/share/doc/python3.11/html")
DATASET = Path(__file__).resolve().parents[1] / "data" / "eval" / "python-docs.jsonl"
DISTRACTOR_MAX_CHARS = 10_000
_TAG = re.compile(r"<[^>]+>")


class CorpusError(ImpetusError, RuntimeError):
    """The corpus could not be fetched; the message says what to install or do."""


def python_docs(data_dir: Path) -> Path:
    """The unpacked python3.11-doc HTML root under data_dir, fetched once."""
    target = data_dir / "corpora" / PACKAGE
    root = target / DOC_ROOT
    if (root / "library" / "index.html").is_file():
        return root
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise CorpusError(f"`{tool}` not found: the python-docs corpus needs Debian's apt/dpkg")
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(
            ["apt-get", "download", PACKAGE], cwd=tmp, capture_output=True, text=True
        )
        debs = list(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise CorpusError(
                f"`apt-get download {PACKAGE}` failed ({run.stderr.strip()[-300:]}); "
                "run `apt-get update` first, or check the network"
            )
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(debs[0]), str(target)], check=True)
    return root


def text_chars(html_path: Path) -> int:
    """A rough size of a page's visible text (tags stripped, whitespace squeezed)."""
    text = _TAG.sub(" ", html_path.read_text(errors="replace"))
    return len(" ".join(text.split()))


def dataset_sources(dataset: Path = DATASET) -> set[str]:
    """Every source path the questions of `dataset` point to."""
    out: set[str] = set()
    for line in dataset.read_text().splitlines():
        if line.strip():
            out.update(json.loads(line)["sources"])
    return out


def python_docs_subset(data_dir: Path, dataset: Path = DATASET) -> Path:
    """A folder of symlinks: the pages the questions point to, plus the small library pages."""
    root = python_docs(data_dir)
    wanted = {p for p in dataset_sources(dataset) if p.startswith("library/")}
    for page in sorted((root / "library").glob("*.html")):
        if text_chars(page) < DISTRACTOR_MAX_CHARS:
            wanted.add(f"library/{page.name}")
    subset = data_dir / "corpora" / "python-docs-subset"
    if subset.exists():
        shutil.rmtree(subset)
    for rel in sorted(wanted):
        link = subset / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(root / rel)
    return subset


def main(argv: list[str]) -> int:
    from pipelines.settings import get_settings

    if not argv or argv[0] != "python-docs":
        print("usage: python -m pipelines.corpora python-docs [--subset]", file=sys.stderr)
        return 2
    data_dir = get_settings().data_dir
    try:
        if "--subset" in argv:
            subset = python_docs_subset(data_dir)
            print(f"{subset} ({len(list(subset.rglob('*.html')))} pages)")
        else:
            print(python_docs(data_dir))
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
