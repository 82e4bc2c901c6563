"""Grounded chat and the /v1/rag routes against a real server, in every server mode.

The module indexes a tiny corpus through the server itself (`POST /v1/rag/index`, the one-writer
path: the flow runs inside the server against the store it owns; the in-process server's flow
talks to Prefect's test harness), then the OpenAI SDK asks questions with `rag_mode` and gets
answers that carry citations, streamed or not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.serving.servers import RunningServer

COLLECTION = "rag-sdk"
CORPUS = {
    "lighthouse.md": "# Lighthouses\n\nThe Bell Rock lighthouse stands on a reef off Scotland. "
    "Its keepers lit the lamp at dusk and logged every ship that passed.\n",
    "bread.md": "# Sourdough\n\nSourdough bread rises with a starter of wild yeast and lactic "
    "bacteria instead of baker's yeast; the dough ferments overnight.\n",
    "orbits.txt": "Kepler's laws describe planetary orbits: each planet moves on an ellipse with "
    "the sun at one focus.",
}


def wait_run(base_url: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{base_url}/v1/rag/runs/{run_id}", timeout=30).json()
        if run["status"] in ("completed", "failed"):
            return dict(run)
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish: {run}")


@pytest.fixture(scope="module")
def indexed(
    server: RunningServer, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The corpus indexed into COLLECTION by the server; yields the finished run."""
    request.getfixturevalue("prefect_harness")
    corpus = tmp_path_factory.mktemp("rag-corpus")
    for name, text in CORPUS.items():
        (corpus / name).write_text(text)
    r = httpx.post(
        f"{server.base_url}/v1/rag/index",
        json={"paths": [str(corpus)], "collection": COLLECTION},
        timeout=300,
    )
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["status"] in ("pending", "running") and started["id"]
    run = wait_run(server.base_url, started["id"])
    assert run["status"] == "completed", run
    yield run


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300
    )


def _ask(client: openai.OpenAI, server: RunningServer, stream: bool = False, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=server.llm,
        stream=stream,
        messages=[{"role": "user", "content": "Who logged the ships at the Bell Rock lighthouse?"}],
        max_tokens=16,
        temperature=0,
        extra_body={"rag_mode": True, "rag_collection": COLLECTION, "rag_top_k": 2, **kw},
    )


def test_index_run_summary(indexed: dict[str, Any], server: RunningServer) -> None:
    summary = indexed["summary"]
    assert summary["documents"]["new"] == len(CORPUS) and summary["points_upserted"] >= 3
    assert summary["run_id"] == indexed["id"]  # the flow run id is the lineage run id
    assert indexed["progress"]["documents"]["done"] == len(CORPUS)


def test_cited_answer(
    indexed: dict[str, Any], client: openai.OpenAI, server: RunningServer
) -> None:
    r = _ask(client, server)
    assert isinstance(r.choices[0].message.content, str)
    citations = r.model_extra["citations"]
    assert [c["index"] for c in citations] == list(range(1, len(citations) + 1))
    assert 1 <= len(citations) <= 2
    top = citations[0]
    assert set(top) == {"index", "chunk_id", "source", "title", "score", "snippet"}
    assert top["source"].endswith("lighthouse.md") and "Bell Rock" in top["snippet"]


def test_streamed_citations_come_first(
    indexed: dict[str, Any], client: openai.OpenAI, server: RunningServer
) -> None:
    chunks = list(_ask(client, server, rag_search_mode="dense", stream=True))
    first = chunks[0].model_extra or {}
    assert first["citations"][0]["source"].endswith("lighthouse.md")
    assert all("citations" not in (c.model_extra or {}) for c in chunks[1:])


def test_no_rag_no_citations(
    indexed: dict[str, Any], client: openai.OpenAI, server: RunningServer
) -> None:
    r = _ask(client, server, rag_mode=False)
    assert "citations" not in (r.model_extra or {})
    with pytest.raises(openai.BadRequestError, match="rag_mode"):
        _ask(client, server, rag_mode="sometimes")
    with pytest.raises(openai.NotFoundError):
        _ask(client, server, rag_collection="no-such-collection")


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_search_route(indexed: dict[str, Any], server: RunningServer, mode: str) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/rag/search",
        json={"query": "wild yeast starter", "collection": COLLECTION, "top_k": 2, "mode": mode},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data[0]["source"].endswith("bread.md")
    assert {"chunk_id", "source", "title", "section", "score", "text"} <= set(data[0])
    only = httpx.post(
        f"{server.base_url}/v1/rag/search",
        json={"query": "wild yeast", "collection": COLLECTION, "mode": mode,
              "filter": {"source": data[0]["source"].replace("bread.md", "orbits.txt")}},
        timeout=60,
    ).json()["data"]  # fmt: skip
    assert all(h["source"].endswith("orbits.txt") for h in only)


def test_status_and_errors(indexed: dict[str, Any], server: RunningServer) -> None:
    status = httpx.get(f"{server.base_url}/v1/rag/status", timeout=30).json()
    assert status["store"]["owned"] is True
    (coll,) = [c for c in status["collections"] if c["name"] == COLLECTION]
    assert coll["points"] >= 3 and coll["physical"].startswith(f"{COLLECTION}__")
    assert coll["pipeline_version"]
    assert any(r.get("run_id") == indexed["id"] for r in status["runs"])
    missing = httpx.get(f"{server.base_url}/v1/rag/runs/nope", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "run_id"
    bad = httpx.post(
        f"{server.base_url}/v1/rag/index", json={"paths": ["/no/such/dir"]}, timeout=30
    )
    # outside rag.index_roots: refused without saying whether it exists
    assert bad.status_code == 403 and bad.json()["error"]["code"] == "permission_denied"
    bad = httpx.post(
        f"{server.base_url}/v1/rag/search",
        json={"query": "x", "collection": COLLECTION, "filter": {"title": "x"}},
        timeout=30,
    )
    assert bad.status_code == 400 and "cannot filter on 'title'" in bad.json()["error"]["message"]
