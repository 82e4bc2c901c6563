"""The ingest flow's guarantees, each proved on a tiny corpus with the real parser, embedder,
Qdrant Edge store and DuckDB lineage, under Prefect's test harness:

- re-running an unchanged corpus parses, embeds and upserts nothing;
- a changed document's new points are written before its old ones are deleted;
- a document removed from the source is deleted with prune (and only then);
- a process SIGKILLed at any step, then re-run, ends in the state of an uninterrupted run;
- a corrupt file fails alone, with its reason recorded, and an empty one is quarantined alone
  (documents go through the steps in batches: `ingest.batch_documents`);
- `impetus reindex` builds a new version beside the old one and switches the alias atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.ingest.flow import ingest, reindex
from pipelines.lineage import Lineage
from pipelines.settings import get_settings
from pipelines.vectorstore import create_store
from tests.flows.conftest import link_models, run_cli, use_data_dir

pytestmark = pytest.mark.usefixtures("prefect_harness")

V1 = {
    "alpha.md": "# Alpha\n\nAlpha is the first document. It talks about vector stores.\n\n"
    "## Details\n\nQdrant keeps the points and DuckDB keeps their lineage.\n",
    "beta.txt": "Beta is a plain text document about Prefect flows and retries.",
    "gamma.md": "# Gamma\n\nGamma will be removed from the source before the second run.\n",
}
V2 = {
    "alpha.md": "# Alpha\n\nAlpha changed: it now talks about blue/green re-indexing.\n",
    "beta.txt": V1["beta.txt"],
    "delta.txt": "Delta is new in the second version of the corpus.",
    "epsilon.md": "# Epsilon\n\nEpsilon is new too: in batches of two it is alone in the second.\n",
}
# The crash tests index V2's changes (alpha changed, delta and epsilon new) in batches of two, so a
# step is killed with a whole batch in it, and `parse:2` falls between two batches.
CRASH_BATCH = {"IMPETUS_INGEST__BATCH_DOCUMENTS": "2"}


def write_corpus(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name not in files:
            old.unlink()
    for name, text in files.items():
        if not (root / name).exists() or (root / name).read_text() != text:
            (root / name).write_text(text)
    return root


def snapshot(collection: str = "c") -> dict[str, Any]:
    """The store's points and lineage's view of them; asserts the two agree."""
    settings = get_settings()
    store = create_store(settings)
    try:
        physical = store.resolve(collection)
        points = {p.id: p.payload for p in store.scroll(collection)}
    finally:
        store.close()
    with Lineage.open(settings, read_only=True) as lin:
        live = lin.live_points(physical)
        stale = lin.stale_points(physical)
        docs = lin.current_documents(physical)
        hashes = lin.content_hashes(physical)
    assert live == set(points), "lineage and the store disagree on which points exist"
    assert stale == [], "points left over that are not of their document's current version"
    for payload in points.values():
        assert payload["content_hash"] == hashes[payload["doc_id"]]
    return {
        "points": sorted(points),
        "documents": sorted((Path(src).name, hashes[d]) for d, src in docs),
    }


def task_runs(run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    return sorted(r.name.rsplit("-", 1)[0] for r in runs)


def test_unchanged_corpus_parses_embeds_and_upserts_nothing(data_dir: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", V1)
    first = ingest([str(corpus)], collection="c")
    assert first["documents"] == {"new": 3, "changed": 0, "unchanged": 0, "deleted": 0, "failed": 0}
    assert first["chunks_embedded"] == first["points_upserted"] > 0
    before = snapshot()

    second = ingest([str(corpus)], collection="c")
    assert second["documents"] == {
        "new": 0,
        "changed": 0,
        "unchanged": 3,
        "deleted": 0,
        "failed": 0,
    }
    assert (second["chunks_embedded"], second["points_upserted"], second["points_deleted"]) == (
        0,
        0,
        0,
    )
    assert snapshot() == before
    steps = set(task_runs(second["run_id"]))
    assert steps.isdisjoint({"parse", "chunk", "embed", "upsert", "delete"}), steps
    assert {"parse", "embed", "upsert"} <= set(task_runs(first["run_id"]))


def test_changed_document_new_points_written_before_old_deleted(
    data_dir: Path, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus", V1)
    ingest([str(corpus)], collection="c")
    (corpus / "alpha.md").write_text(V2["alpha.md"])
    summary = ingest([str(corpus)], collection="c")
    assert summary["documents"]["changed"] == 1 and summary["documents"]["unchanged"] == 2
    assert summary["points_deleted"] > 0
    snapshot()
    with Lineage.open(get_settings(), read_only=True) as lin:
        docs = lin.documents("alpha.md")
        assert docs
        doc_id = docs[0]["doc_id"]
        rows = lin.point_history(doc_id)
    new = [r["written_at"] for r in rows if r["deleted_at"] is None]
    old_deleted = [r["deleted_at"] for r in rows if r["deleted_at"] is not None]
    assert new and old_deleted
    assert max(new) <= min(old_deleted)


def test_removed_document_is_deleted_only_with_prune(data_dir: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", V1)
    ingest([str(corpus)], collection="c")
    gamma = snapshot()["points"]
    (corpus / "gamma.md").unlink()
    kept = ingest([str(corpus)], collection="c")
    assert kept["documents"]["deleted"] == 0 and snapshot()["points"] == gamma
    pruned = ingest([str(corpus)], collection="c", prune=True)
    assert pruned["documents"]["deleted"] == 1 and pruned["points_deleted"] > 0
    after = snapshot()
    assert "gamma.md" not in {name for name, _ in after["documents"]}
    assert len(after["points"]) == len(gamma) - pruned["points_deleted"]


def test_corrupt_file_fails_alone_with_its_reason(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of two: the corrupt and the empty file share batches with documents that index.
    use_data_dir(data_dir, monkeypatch, IMPETUS_INGEST__BATCH_DOCUMENTS="2")
    corpus = write_corpus(tmp_path / "corpus", V1)
    (corpus / "broken.pdf").write_bytes(b"this is not a PDF at all \x00\x01\x02")
    (corpus / "empty.txt").write_text("   \n")
    summary = ingest([str(corpus)], collection="c")
    assert summary["documents"]["new"] == 3 and summary["documents"]["failed"] == 2
    assert len(snapshot()["documents"]) == 3
    with Lineage.open(get_settings(), read_only=True) as lin:
        (chain,) = lin.trace(str(corpus / "broken.pdf"))
        (empty,) = lin.trace(str(corpus / "empty.txt"))
    assert chain["document_version"]["status"] == "failed"
    assert "broken.pdf" in chain["document_version"]["reason"]
    assert empty["document_version"]["status"] == "quarantined"
    assert empty["document_version"]["reason"]
    # Failed documents are retried by the next run; the others stay unchanged.
    again = ingest([str(corpus)], collection="c")
    assert again["documents"]["unchanged"] == 3 and again["documents"]["failed"] == 2


# --- crash safety: the CLI in a subprocess, SIGKILLed at a step, then re-run ---------------------

# Every step the flow reaches in a V1 -> V2 --prune run (flows/ingest/flow.py, IMPETUS_TEST_CRASH_AT).
CRASH_STEPS = [
    "discover",
    "load_embedder",
    "parse:2",  # mid-run: the first batch (alpha, delta) fully indexed, epsilon not parsed
    "chunk",
    "check_chunks",
    "embed",
    "check_vectors",
    "record_chunks",
    "upsert",  # lineage intent recorded, nothing written yet
    "record",  # new points written, lineage not committed
    "prune",
    "find_stale",
    "delete",  # committed, old points not deleted yet (both versions searchable)
    "mark_deleted",  # old points deleted from the store, lineage not told
    "finish",
]


@pytest.fixture(scope="module")
def reference(
    prefect_harness: None, tmp_path_factory: pytest.TempPathFactory, ready_models_dir: Path
) -> dict[str, Any]:
    """Corpus path and the state an uninterrupted V1 → V2 (prune) ingest ends in."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("crash")
    corpus = root / "corpus"
    ref = root / "ref"
    link_models(ref, ready_models_dir)
    try:
        use_data_dir(ref, mp)
        write_corpus(corpus, V1)
        ingest([str(corpus)], collection="c")
        write_corpus(corpus, V2)
        ingest([str(corpus)], collection="c", prune=True)
        state = snapshot()
    finally:
        write_corpus(corpus, V1)
        mp.undo()
        get_settings.cache_clear()
    return {"root": root, "corpus": corpus, "state": state}


@pytest.mark.slow
@pytest.mark.parametrize("step", CRASH_STEPS)
def test_sigkill_at_any_step_then_rerun_matches_an_uninterrupted_run(
    step: str, reference: dict[str, Any], ready_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus: Path = reference["corpus"]
    data = reference["root"] / f"crash-{step.replace(':', '-')}"
    link_models(data, ready_models_dir)
    use_data_dir(data, monkeypatch)
    write_corpus(corpus, V1)
    ingest([str(corpus)], collection="c")
    v1_docs = {name for name, _ in snapshot()["documents"]}
    write_corpus(corpus, V2)
    try:
        args = ["ingest", str(corpus), "-c", "c", "--prune", "--json"]
        proc = run_cli(args, data, crash_at=step, **CRASH_BATCH)
        assert proc.returncode == -9, proc.stderr[-3000:]
        # Killed mid-run: every document of both versions is still findable.
        store = create_store(get_settings())
        try:
            with Lineage.open(get_settings(), read_only=True) as lin:
                physical = store.resolve("c")
                sources = dict(lin.current_documents(physical))
            for doc_id, source in sources.items():
                if Path(source).name in v1_docs & set(V2):
                    assert store.count("c", {"doc_id": doc_id}) > 0, f"{source} went missing"
        finally:
            store.close()
        rerun = ingest([str(corpus)], collection="c", prune=True)
        assert rerun["documents"]["failed"] == 0
        assert snapshot() == reference["state"]
        # A third run finds nothing to do: the re-run really converged.
        third = ingest([str(corpus)], collection="c", prune=True)
        assert (third["chunks_embedded"], third["points_upserted"], third["points_deleted"]) == (
            0,
            0,
            0,
        )
    finally:
        write_corpus(corpus, V1)


@pytest.mark.slow
def test_cli_json_summary_shape(data_dir: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", {"one.txt": "One small document about lineage."})
    proc = run_cli(["ingest", str(corpus), "--collection", "c", "--json"], data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert set(out) == {
        "run_id",
        "documents",
        "chunks_embedded",
        "points_upserted",
        "points_deleted",
    }
    assert set(out["documents"]) == {"new", "changed", "unchanged", "deleted", "failed"}
    assert out["documents"]["new"] == 1
    point = snapshot()["points"][0]
    proc = run_cli(["lineage", point, "--json"], data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (chain,) = json.loads(proc.stdout)
    assert chain["run"]["run_id"] == out["run_id"]
    assert chain["document_version"]["source"] == str(corpus / "one.txt")


# --- blue/green ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_reindex_builds_beside_the_old_version_and_switches_atomically(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write_corpus(tmp_path / "corpus", V1)
    ingest([str(corpus)], collection="c")
    before = snapshot()
    store = create_store(get_settings())
    old = store.resolve("c")
    store.close()

    # Another chunk size is another pipeline version; keep no old version after the switch.
    env = {"IMPETUS_CHUNKING__MAX_TOKENS": "48", "IMPETUS_CHUNKING__OVERLAP_TOKENS": "8"}
    proc = run_cli(["reindex", "-c", "c", "--json"], data_dir, crash_at="switch", **env)
    assert proc.returncode == -9, proc.stderr[-3000:]
    store = create_store(get_settings())
    try:
        # Killed just before the switch: the alias still answers from the old version, intact.
        assert store.resolve("c") == old
        assert sorted(p.id for p in store.scroll("c")) == before["points"]
        (new,) = [c for c in store.collections() if c != old]
        assert store.count(new) > 0
    finally:
        store.close()

    use_data_dir(data_dir, monkeypatch, IMPETUS_VECTOR_STORE__KEEP_VERSIONS="0", **env)
    result = reindex("c")
    assert (result["from"], result["to"]) == (old, new)
    assert result["dropped"] == [old]
    after = snapshot()
    assert after["documents"] == before["documents"] and after["points"] != before["points"]
    store = create_store(get_settings())
    try:
        assert store.resolve("c") == new and store.collections() == [new]
    finally:
        store.close()
    assert reindex("c")["from"] == new  # already at this version: nothing to do
