"""The dashboard's HTTP routes (serving/http/routes/dashboard.py) on a real uvicorn server with the
real app (fake engines), driven by httpx and the `openai` SDK: /api/info per role, keys created,
listed and revoked over HTTP (the secret once, never listed), the request ring buffer fed by an
SDK chat, knowledge (collections, documents with failure reasons, a chunk's lineage) read from a
real Qdrant Edge store and DuckDB lineage written the way the ingest flow writes them, index
roots as relative folders, experiments from a real MLflow store, and the OpenAPI document.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from pipelines.keys import KeyStore
from pipelines.lineage import Lineage
from pipelines.records import Chunk, SourceDocument, chunk_id_for, doc_id_for
from pipelines.vectorstore import create_store, prepare_collection, upsert_chunks
from tests.serving.http.fake_server import FakeServer, fake_servers

VERSION = "pv0123456789abcd"


def _doc(path: Path) -> SourceDocument:
    text = path.read_bytes()
    return SourceDocument(
        doc_id_for(str(path.resolve())),
        str(path.resolve()),
        hashlib.sha256(text).hexdigest(),
        len(text),
        0.0,
    )


def _populate(data_dir: Path, settings: Any, corpus: Path) -> dict[str, Any]:
    """One good document indexed (two chunks) and one quarantined, as the ingest flow records
    them: lineage intent, store upsert, lineage commit."""
    good, bad = corpus / "guides" / "intro.md", corpus / "broken.md"
    doc = _doc(good)
    chunks = [
        Chunk(chunk_id_for(doc.doc_id, doc.content_hash, VERSION, i), doc.doc_id, doc.source,
              doc.content_hash, i, text, len(text.split()))
        for i, text in enumerate(["Impetus serves local models.", "It indexes documents."])
    ]  # fmt: skip
    store = create_store(settings)
    try:
        physical = prepare_collection(store, "default", 16, VERSION)
        with Lineage.open(settings) as lin:
            lin.start_run("run-1", physical, VERSION)
            lin.record_chunks("run-1", physical, chunks, VERSION)
            vectors = np.eye(16, dtype=np.float32)[: len(chunks)]
            upsert_chunks(store, physical, chunks, vectors, VERSION)
            lin.record_indexed("run-1", physical, doc, VERSION, [c.chunk_id for c in chunks])
            lin.record_failure(
                "run-1", physical, _doc(bad), VERSION, "quarantined", f"empty text in {bad}"
            )
            lin.finish_run("run-1", "completed", {"indexed": 1, "quarantined": 1})
    finally:
        store.close()
    return {"physical": physical, "chunk": chunks[1], "doc": doc}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("dash")
    corpus = root / "corpus"
    (corpus / "guides" / "deep").mkdir(parents=True)
    (corpus / ".hidden").mkdir()
    (corpus / "guides" / "intro.md").write_text("# Intro\nImpetus serves local models.\n")
    (corpus / "broken.md").write_text("")
    with fake_servers(root) as start:
        from pipelines.settings import load_settings

        rag = {"index_roots": [str(corpus)]}
        settings = load_settings(data_dir=root / "keyed", rag=rag)
        known = _populate(root / "keyed", settings, corpus)
        keyed = start(
            "keyed",
            auth={"mode": "on"},
            rag=rag,
            serve={"prefect_ui_url": "http://prefect.test:4200/"},
        )
        open_srv = start("open", auth={"mode": "off"})
        keys = KeyStore.open(keyed.settings.data_dir)
        tokens = {
            role: keys.create(f"{role}-key", role)[1] for role in ("admin", "user", "readonly")
        }
        keys.close()
        yield {"keyed": keyed, "open": open_srv, "tokens": tokens, **known}


def _get(srv: FakeServer, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(srv.url + path, headers=headers, timeout=30, **kw)


def test_info_says_who_is_asking(world: dict[str, Any]) -> None:
    info = _get(world["open"], "/api/info").json()
    assert info["auth_enabled"] is False and info["role"] is None and info["key_name"] is None
    assert info["default_model"] == "fake-llm" and info["default_collection"] == "default"
    assert _get(world["keyed"], "/api/info").status_code == 401
    info = _get(world["keyed"], "/api/info", world["tokens"]["readonly"]).json()
    assert (info["auth_enabled"], info["role"], info["key_name"]) == (
        True,
        "readonly",
        "readonly-key",
    )
    assert info["prefect_ui_url"] == "http://prefect.test:4200"
    assert info["version"]


def test_keys_are_created_listed_and_revoked_over_http(world: dict[str, Any]) -> None:
    srv, admin = world["keyed"], world["tokens"]["admin"]
    auth = {"Authorization": f"Bearer {admin}"}
    made = httpx.post(
        srv.url + "/api/keys",
        json={"name": "ci-bot", "role": "user", "expires_in": "30d"},
        headers=auth,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    secret, key = made.json()["secret"], made.json()["key"]
    assert secret.startswith(key["prefix"] + "_") and key["status"] == "active"
    assert key["expires_at"] is not None and key["role"] == "user"
    # the new key works with the SDK at once
    sdk = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=secret, max_retries=0)
    assert [m.id for m in sdk.models.list().data]
    listed = _get(srv, "/api/keys", admin)
    assert listed.status_code == 200
    assert secret not in listed.text and "hash" not in listed.text
    assert "ci-bot" in {k["name"] for k in listed.json()["data"]}
    # a duplicate name and a bad duration are 400s in the API's error shape
    dup = httpx.post(
        srv.url + "/api/keys", json={"name": "ci-bot", "role": "user"}, headers=auth, timeout=30
    )
    assert dup.status_code == 400 and dup.json()["error"]["code"] == "invalid_request"
    bad = httpx.post(
        srv.url + "/api/keys",
        json={"name": "x", "role": "user", "expires_in": "soon"},
        headers=auth,
        timeout=30,
    )
    assert bad.status_code == 400
    revoked = httpx.delete(srv.url + "/api/keys/ci-bot", headers=auth, timeout=30)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        sdk.models.list()
    missing = httpx.delete(srv.url + "/api/keys/no-such-key", headers=auth, timeout=30)
    assert missing.status_code == 404
    # below admin: refused
    for role in ("user", "readonly"):
        assert _get(srv, "/api/keys", world["tokens"][role]).status_code == 403


def test_requests_ring_buffer_after_an_sdk_chat(world: dict[str, Any]) -> None:
    srv, user = world["keyed"], world["tokens"]["user"]
    sdk = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=user, max_retries=0)
    sdk.chat.completions.create(
        model="fake-llm", messages=[{"role": "user", "content": "hello there"}], max_tokens=3
    )
    rows = _get(srv, "/api/requests?limit=50", world["tokens"]["readonly"]).json()["data"]
    chat = next(r for r in rows if r["route"] == "/v1/chat/completions")
    assert chat["model"] == "fake-llm" and chat["status"] == 200
    assert chat["completion_tokens"] == 3 and chat["prompt_tokens"] > 0
    assert chat["ttft_ms"] is not None and chat["latency_ms"] >= chat["ttft_ms"]
    assert chat["key_name"] == "user-key" and chat["id"]
    assert [r["ts"] for r in rows] == sorted((r["ts"] for r in rows), reverse=True)
    assert len(_get(srv, "/api/requests?limit=1", user).json()["data"]) == 1
    assert _get(srv, "/api/requests?limit=0", user).status_code == 400


def test_collections_documents_and_chunk_lineage(world: dict[str, Any]) -> None:
    srv, user = world["keyed"], world["tokens"]["user"]
    colls = _get(srv, "/api/rag/collections", user).json()["data"]
    default = next(c for c in colls if c["name"] == "default")
    assert default["physical"] == world["physical"] and default["points"] == 2
    assert default["documents"] == 1 and default["size_bytes"] > 0
    assert [v["active"] for v in default["versions"]] == [True]
    docs = _get(srv, "/api/rag/collections/default/documents", user).json()["data"]
    by_status = {d["status"]: d for d in docs}
    assert by_status["indexed"]["source"] == "corpus/guides/intro.md"
    assert by_status["indexed"]["chunks"] == 2
    quarantined = by_status["quarantined"]
    assert quarantined["source"] == "corpus/broken.md" and "empty text" in quarantined["reason"]
    assert str(srv.settings.data_dir.parent) not in str(docs)  # no absolute server path
    missing = _get(srv, "/api/rag/collections/nope/documents", user)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "collection"

    chunk = world["chunk"]
    lineage = _get(srv, f"/api/lineage/chunks/{chunk.chunk_id}", user).json()
    assert lineage["text"] == "It indexes documents." and lineage["collection"] == "default"
    assert lineage["source"] == "corpus/guides/intro.md" and lineage["index"] == 1
    assert lineage["document"]["content_hash"] == world["doc"].content_hash
    assert lineage["document"]["version"] == 1 and lineage["document"]["current"] is True
    assert lineage["pipeline_version"] == VERSION and lineage["flow_run_id"] == "run-1"
    assert lineage["flow_run_url"] == "http://prefect.test:4200/runs/flow-run/run-1"
    assert lineage["indexed_at"]
    for unknown in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        r = _get(srv, f"/api/lineage/chunks/{unknown}", user)
        assert r.status_code == 404 and r.json()["error"]["code"] == "invalid_request"
    assert _get(srv, "/api/rag/collections", world["tokens"]["readonly"]).status_code == 403


def test_roots_are_relative_and_index_runs_listed(world: dict[str, Any]) -> None:
    srv, admin = world["keyed"], world["tokens"]["admin"]
    roots = _get(srv, "/api/rag/roots", admin).json()["roots"]
    assert roots == [
        {
            "path": "corpus",
            "folders": ["corpus", "corpus/guides", "corpus/guides/deep"],
            "truncated": False,
        }
    ]
    # a folder as the picker shows it is what POST /v1/rag/index takes
    started = httpx.post(
        srv.url + "/v1/rag/index",
        json={"paths": ["corpus/guides"]},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert started.status_code == 202, started.text
    runs = _get(srv, "/api/rag/runs?limit=5", admin).json()["data"]
    assert runs[0]["id"] == started.json()["id"] and runs[0]["paths"] == ["corpus/guides"]
    assert "run-1" in {r["id"] for r in runs}  # from lineage
    assert _get(srv, "/api/rag/runs", world["tokens"]["user"]).status_code == 403


def test_models_registry(world: dict[str, Any]) -> None:
    rows = _get(world["open"], "/api/models").json()["data"]
    llm = next(r for r in rows if r["id"] == "fake-llm")
    assert llm["kind"] == "llm" and llm["format"] == "fake" and llm["default"] is True
    assert llm["status"] in ("loaded", "available")


def test_experiments_empty_then_from_mlflow(world: dict[str, Any]) -> None:
    srv = world["open"]
    assert _get(srv, "/api/experiments").json() == {"mlflow_ui_url": None, "data": []}
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{srv.settings.data_dir / 'mlflow.db'}")
    mlflow.set_experiment("bench-ws")
    with mlflow.start_run(run_name="ws-bench") as run:
        mlflow.log_param("clients", 50)
        mlflow.log_metric("throughput_ratio", 0.98)
    data = _get(srv, "/api/experiments?limit=5").json()["data"]
    assert data[0]["run_id"] == run.info.run_id and data[0]["experiment"] == "bench-ws"
    assert data[0]["params"] == {"clients": "50"}
    assert data[0]["metrics"] == {"throughput_ratio": 0.98}


def test_openapi_types_the_dashboard_routes(world: dict[str, Any]) -> None:
    doc = _get(world["open"], "/openapi.json").json()
    for path in ("/api/info", "/api/requests", "/api/keys", "/api/rag/collections"):
        ok = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        assert "$ref" in ok["schema"], path
