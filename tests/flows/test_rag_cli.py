"""`impetus search --json` and the one-writer hand-off: with a server owning the embedded store,
`impetus ingest` (a subprocess) sends its work to the server and follows the run there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.ingest.flow import ingest
from flows.ingest.runner import PrefectIndexRunner
from pipelines.settings import load_settings
from serving.engine.manager import ModelManager
from serving.http.app import create_app
from tests.flows.conftest import run_cli
from tests.serving.fakes import FakeEngine
from tests.serving.servers import uvicorn_server

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

DOCS = {
    "kepler.md": "# Orbits\n\nKepler's first law: planets move on ellipses with the sun at a focus.",
    "yeast.txt": "Sourdough rises with a starter of wild yeast and lactic acid bacteria.",
}


def corpus(root: Path, docs: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (root / name).write_text(text)
    return root


def test_search_json_shape(data_dir: Path, tmp_path: Path) -> None:
    ingest([str(corpus(tmp_path / "docs", DOCS))], collection="c")
    r = run_cli(["search", "wild yeast starter", "-c", "c", "-k", "2", "--json"], data_dir)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert len(hits) == 2 and all(set(h) == {"chunk_id", "source", "score", "text"} for h in hits)
    assert hits[0]["source"] == str((tmp_path / "docs" / "yeast.txt").resolve())
    assert hits[0]["score"] >= hits[1]["score"]
    bad = run_cli(["search", "x", "-c", "missing", "--mode", "sparse", "--json"], data_dir)
    assert bad.returncode == 1 and "does not exist" in bad.stderr


@pytest.fixture
def owning_server(data_dir: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A server on data_dir: it opens, and so owns, the embedded store (and may index tmp_path)."""
    settings = load_settings(data_dir=data_dir, rag={"index_roots": [str(tmp_path / "docs")]})
    manager = ModelManager.from_settings(settings, lambda name, path: FakeEngine(name))
    app = create_app(settings, manager=manager, index_runner=PrefectIndexRunner(settings))
    with uvicorn_server(app) as url:
        yield {"url": url, "port": url.rsplit(":", 1)[1]}


def test_ingest_hands_off_to_the_server_that_owns_the_store(
    data_dir: Path, tmp_path: Path, owning_server: dict[str, Any]
) -> None:
    env = {"IMPETUS_SERVE__HOST": "127.0.0.1", "IMPETUS_SERVE__PORT": owning_server["port"]}
    docs = corpus(tmp_path / "docs", DOCS)
    r = run_cli(["ingest", str(docs), "-c", "c", "--json"], data_dir, **env)
    assert r.returncode == 0, r.stderr
    assert "handing the run to it" in r.stderr
    summary = json.loads(r.stdout)
    assert summary["documents"]["new"] == 2 and summary["points_upserted"] >= 2
    # the run is the server's flow run, recorded in lineage like any other
    import httpx

    run = httpx.get(f"{owning_server['url']}/v1/rag/runs/{summary['run_id']}", timeout=30).json()
    assert run["status"] == "completed" and run["summary"] == summary
    # search goes through the server too while it owns the store
    r = run_cli(["search", "ellipses", "-c", "c", "--json"], data_dir, **env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["source"].endswith("kepler.md")
    # chat through the server: the sources first, one line per document, then the answer
    r = run_cli(
        ["chat", "What do planets move on?", "-c", "c", "--max-tokens", "6"], data_dir, **env
    )
    assert r.returncode == 0, r.stderr
    head, answer = r.stdout.split("\n\n", 1)
    lines = head.splitlines()
    assert lines[0] == "Sources:" and len(lines) == 3  # two documents
    assert lines[1].startswith("  [1] ") and lines[1].endswith("kepler.md)")
    assert answer.strip()
    # a folder outside the server's rag.index_roots: one line saying what to change
    other = corpus(tmp_path / "other", DOCS)
    r = run_cli(["ingest", str(other), "-c", "c"], data_dir, **env)
    assert r.returncode == 1 and "add them to rag.index_roots" in r.stderr
    assert "IMPETUS_RAG__INDEX_ROOTS" in r.stderr and "Traceback" not in r.stderr
    # with no server answering, a locked store is a clear error
    r = run_cli(["ingest", str(docs), "-c", "c"], data_dir, IMPETUS_SERVE__PORT="9")
    assert r.returncode == 1 and "no server on" in r.stderr.lower()


def test_scheduled_runs_read_only_the_index_roots(data_dir: Path, tmp_path: Path) -> None:
    """prefect.yaml's deployment runs `ingest_in_roots`: paths outside rag.index_roots fail
    before anything is read, with the same error as POST /v1/rag/index's 403."""
    from flows.ingest.flow import ingest_in_roots
    from pipelines.roots import PathNotAllowed

    docs = corpus(tmp_path / "docs", DOCS)
    for path in ("/etc", str(docs), "../.."):
        with pytest.raises(PathNotAllowed, match=r"rag\.index_roots"):
            ingest_in_roots([path], collection="c")


def test_chat_lists_each_document_once_with_its_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.commands.rag import print_sources

    cites = [
        {"index": 1, "source": "/d/a.md", "title": "A"},
        {"index": 2, "source": "/d/b.txt", "title": ""},
        {"index": 3, "source": "/d/a.md", "title": "A"},
    ]
    print_sources(cites)
    assert capsys.readouterr().out == "Sources:\n  [1], [3] A (/d/a.md)\n  [2] b.txt (/d/b.txt)\n\n"
