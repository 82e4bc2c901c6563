"""OpenAI's vector stores over Impetus collections, with the real `openai` SDK against a real
server in every serve mode: create, `files.upload_and_poll` (an index run of the upload inside
the server), search with the hybrid retriever, list, delete; documents indexed from a root path
get stable file ids; no response carries the server's paths.
"""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

import httpx
import openai
import pytest

from pipelines.settings import PROJECT_ROOT
from tests.serving.servers import RunningServer

LIGHTHOUSE = (
    b"# Lighthouses\n\nThe Bell Rock lighthouse stands on a reef off Scotland. Its keepers lit "
    b"the lamp at dusk and logged every ship that passed.\n"
)
BREAD = b"Sourdough bread rises with a starter of wild yeast and lactic bacteria.\n"


@pytest.fixture(scope="module")
def client(server: RunningServer, request: pytest.FixtureRequest) -> openai.OpenAI:
    request.getfixturevalue("prefect_harness")
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300
    )


def _no_server_paths(text: str, tmp_root: str) -> None:
    assert tmp_root not in text  # the data directory and the test corpora live under it
    assert str(PROJECT_ROOT) not in text  # nor data/samples' absolute path


def test_upload_and_poll_then_search(
    client: openai.OpenAI, server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp_root = str(tmp_path_factory.getbasetemp())
    vs = client.vector_stores.create(name=f"vs-{server.mode}", metadata={"team": "docs"})
    assert vs.object == "vector_store" and vs.id == f"vs-{server.mode}"
    assert vs.file_counts.total == 0 and vs.metadata == {"team": "docs"}
    vsf = client.vector_stores.files.upload_and_poll(
        vector_store_id=vs.id, file=("lighthouse.md", io.BytesIO(LIGHTHOUSE))
    )
    assert vsf.status == "completed", vsf.last_error
    assert vsf.object == "vector_store.file" and vsf.vector_store_id == vs.id
    assert vsf.id.startswith("file-")
    bread = client.vector_stores.files.upload_and_poll(
        vector_store_id=vs.id, file=("bread.txt", io.BytesIO(BREAD)), poll_interval_ms=200
    )
    assert bread.status == "completed", bread.last_error

    page = client.vector_stores.search(vs.id, query="who logged the ships", max_num_results=2)
    top = page.data[0]
    assert top.file_id == vsf.id and top.filename == "lighthouse.md"
    assert "Bell Rock" in top.content[0].text and top.content[0].type == "text"
    assert top.attributes and top.attributes["source"] == "uploads/lighthouse.md"
    assert len(page.data) == 2 and page.data[0].score >= page.data[1].score
    only = client.vector_stores.search(
        vs.id,
        query="who logged the ships",
        filters={"type": "eq", "key": "file_id", "value": bread.id},
    )
    assert [d.file_id for d in only.data] == [bread.id]
    raw = httpx.post(
        f"{server.base_url}/v1/vector_stores/{vs.id}/search",
        json={"query": "wild yeast"},
        timeout=60,
    )
    assert raw.json()["object"] == "vector_store.search_results.page"
    _no_server_paths(raw.text, tmp_root)

    listed = {v.id: v for v in client.vector_stores.list()}
    assert listed[vs.id].file_counts.completed == 2 and listed[vs.id].file_counts.total == 2
    files = {f.id for f in client.vector_stores.files.list(vector_store_id=vs.id)}
    assert files == {vsf.id, bread.id}
    got = client.vector_stores.files.retrieve(file_id=bread.id, vector_store_id=vs.id)
    assert got.status == "completed"
    # the same collection answers grounded chat (rag_collection = the vector store's id)
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={
            "model": server.llm,
            "messages": [{"role": "user", "content": "Who logged the ships?"}],
            "max_tokens": 4,
            "rag_mode": True,
            "rag_collection": vs.id,
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert r.json()["citations"][0]["source"] == "uploads/lighthouse.md"
    _no_server_paths(r.text, tmp_root)

    # a file that cannot be parsed fails its vector_store.file, with a reason and no path
    bad = client.files.create(
        file=("broken.pdf", io.BytesIO(b"%PDF-1.4\n%garbage")), purpose="assistants"
    )
    failed = client.vector_stores.files.create_and_poll(file_id=bad.id, vector_store_id=vs.id)
    assert failed.status == "failed" and failed.last_error and failed.last_error.message
    _no_server_paths(failed.last_error.message, tmp_root)

    assert client.vector_stores.delete(vs.id).deleted
    assert vs.id not in {v.id for v in client.vector_stores.list()}
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(vs.id)


def test_documents_from_root_paths_have_stable_ids_and_relative_sources(
    client: openai.OpenAI, server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.getbasetemp()
    corpus = tmp_path_factory.mktemp("vs-corpus")
    (corpus / "orbits.txt").write_text(
        "Kepler's laws: each planet moves on an ellipse with the sun at one focus."
    )
    collection = f"roots-{server.mode}"
    r = httpx.post(
        f"{server.base_url}/v1/rag/index",
        json={"paths": [str(corpus)], "collection": collection},
        timeout=300,
    )
    assert r.status_code == 202, r.text
    _no_server_paths(r.text, str(base))
    deadline = time.monotonic() + 600
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = httpx.get(f"{server.base_url}/v1/rag/runs/{r.json()['id']}", timeout=30).json()
        if run["status"] in ("completed", "failed"):
            break
        time.sleep(0.5)
    assert run["status"] == "completed", run
    # the test server's roots include pytest's base temp folder (tests/serving/servers.py)
    rel = str((corpus / "orbits.txt").relative_to(base))
    expected = "file-" + hashlib.sha256(rel.encode()).hexdigest()[:24]
    page = client.vector_stores.search(collection, query="planet ellipse", max_num_results=1)
    assert page.data[0].file_id == expected and page.data[0].filename == "orbits.txt"
    assert page.data[0].attributes and page.data[0].attributes["source"] == f"{base.name}/{rel}"
    files = client.vector_stores.files.list(vector_store_id=collection)
    assert [f.id for f in files] == [expected] and files.data[0].status == "completed"
    hits = httpx.post(
        f"{server.base_url}/v1/rag/search",
        json={"query": "planet ellipse", "collection": collection},
        timeout=60,
    )
    assert hits.json()["data"][0]["source"] == f"{base.name}/{rel}"
    _no_server_paths(hits.text, str(base))
    status = httpx.get(f"{server.base_url}/v1/rag/status", timeout=30)
    _no_server_paths(status.text, str(base))


def test_vector_store_errors(client: openai.OpenAI, server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve("no-such-store")
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.search("no-such-store", query="x")
    vs = client.vector_stores.create(name="has spaces/and slashes")
    assert vs.id.startswith("vs_") and vs.name == "has spaces/and slashes"
    assert client.vector_stores.search(vs.id, query="anything").data == []
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.create(vector_store_id=vs.id, file_id="file-" + "0" * 24)
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.search(
            vs.id, query="x", filters={"type": "gt", "key": "a", "value": 1}
        )
    assert client.vector_stores.delete(vs.id).deleted
