"""`impetus ingest`, `impetus reindex` and `impetus lineage`.

Prefect runs here without a server to set up: its home is data_dir/prefect, and unless
PREFECT_API_URL names a running server (then the runs show in its UI) Prefect starts a temporary
local server for the run (SQLite under that home, offline) and stops it at exit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.console import JsonOpt, domain_errors, echo_json, fail, progress, settings
from flows.prefect_env import prefect_env

__all__ = ["ingest", "lineage", "prefect_env", "reindex"]

if TYPE_CHECKING:
    from pipelines.settings import Settings

CollectionOpt = Annotated[
    str, typer.Option("--collection", "-c", help="Collection (an alias of its current version).")
]


def _run(flow_name: str, **params: Any) -> dict[str, Any]:
    s = settings()
    from flows.console import _State

    prefect_env(s, _State.verbose)
    if not _State.verbose:
        # Great Expectations logs every fluent-API registration at info.
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    from flows.ingest.flow import IngestInputs, ingest_flow, reindex_flow
    from flows.ingest.recovery import recover_crashed_runs
    from pipelines.doctor import preflight

    with domain_errors():
        preflight(s)  # a corrupt or held lineage database: one clear line, before Prefect starts
    recover_crashed_runs(s)
    _quiet_domain_tracebacks()
    with domain_errors(), progress(flow_name) as update:
        inputs = IngestInputs.from_settings(s)
        inputs.progress = update
        flow = {"ingest": ingest_flow, "reindex": reindex_flow}[flow_name](inputs)
        return flow(**params)


def _quiet_domain_tracebacks() -> None:
    """Prefect logs a failed flow or task run with its traceback; for a domain error (a full
    disk, a locked store) the message says it all, and `domain_errors` prints it once more."""
    from pipelines.diskspace import is_disk_full
    from pipelines.errors import ImpetusError

    def strip(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and (isinstance(error, ImpetusError) or is_disk_full(error)):
            record.exc_info, record.exc_text = None, None
        return True

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if strip not in logger.filters:
            logger.addFilter(strip)


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to ingest.")],
    collection: CollectionOpt = "default",
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete documents whose files are gone from PATHs.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ingest documents: parse, chunk, check, embed and upsert what is new or changed."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise fail(f"no such file or directory: {', '.join(missing)}")
    resolved = [str(p.resolve()) for p in paths]
    owner = _store_owner(settings())
    if owner is not None:  # one writer: the server that owns the store runs the flow
        summary = _hand_off(owner, resolved, collection, prune)
    else:
        summary = _run("ingest", paths=resolved, collection=collection, prune=prune)
    if as_json:
        echo_json(summary)
        return
    d = summary["documents"]
    typer.echo(
        f"run {summary['run_id']}: {d['new']} new, {d['changed']} changed, "
        f"{d['unchanged']} unchanged, {d['deleted']} deleted, {d['failed']} failed; "
        f"{summary['chunks_embedded']} chunks embedded, {summary['points_upserted']} points "
        f"upserted, {summary['points_deleted']} deleted"
    )
    if d["failed"]:
        typer.echo("see why with: impetus lineage PATH", err=True)


def _store_owner(s: Settings) -> str | None:
    """The URL of the running server that owns the embedded store, when this process cannot
    open it; None when the store is free (this process will be its writer)."""
    import httpx

    from pipelines.vectorstore import StoreLockedError, create_store, store_path
    from serving.services.rag import store_fingerprint

    try:
        create_store(s).close()
        return None
    except StoreLockedError as e:
        locked = str(e)
    url = f"http://{s.serve.host}:{s.serve.port}"
    try:
        status = httpx.get(f"{url}/v1/rag/status", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        status = None
    store = (status or {}).get("store", {})
    if not store.get("owned") or store.get("fingerprint") != store_fingerprint(store_path(s)):
        raise fail(
            f"{locked}. No server on {url} owns it: stop that process, or start `impetus serve` "
            "and run this again"
        )
    return url


def _hand_off(url: str, paths: list[str], collection: str, prune: bool) -> dict[str, Any]:
    """POST /v1/rag/index to the server and follow the run to its end with a progress bar."""
    import time

    import httpx

    from flows.console import api_error

    typer.secho(f"the store is owned by the server at {url}: handing the run to it", err=True)
    body = {"paths": paths, "collection": collection, "prune": prune}
    r = httpx.post(f"{url}/v1/rag/index", json=body, timeout=300)
    if r.status_code == 403 and _code(r) == "permission_denied" and "index_roots" in r.text:
        raise fail(
            "the server may not read these folders: add them to rag.index_roots in "
            "configs/impetus.yaml (or IMPETUS_RAG__INDEX_ROOTS='[\"/path\", ...]'), then "
            "restart the server and run this again"
        )
    if r.status_code != 202:
        raise api_error(r)
    run_id = r.json()["id"]
    with progress("ingest") as update:
        while True:
            r = httpx.get(f"{url}/v1/rag/runs/{run_id}", timeout=30)
            if r.status_code != 200:
                raise api_error(r)
            job = r.json()
            for label, p in (job.get("progress") or {}).items():
                update(label, p["done"], p["total"])
            if job["status"] == "completed":
                return dict(job["summary"])
            if job["status"] == "failed":
                raise fail(f"run {run_id} failed in the server: {job['error']}")
            time.sleep(0.5)


def _code(r: Any) -> str | None:
    try:
        return str(r.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def reindex(collection: CollectionOpt = "default", as_json: JsonOpt = False) -> None:
    """Rebuild a collection with the current pipeline version and switch its alias (blue/green)."""
    summary = _run("reindex", collection=collection)
    if as_json:
        echo_json(summary)
    elif summary["from"] == summary["to"]:
        typer.echo(f"{collection} is already at this pipeline version ({summary['to']})")
    else:
        typer.echo(
            f"{collection}: {summary['from']} -> {summary['to']} "
            f"({summary['chunks_embedded']} chunks embedded); dropped: "
            f"{', '.join(summary['dropped']) or 'none'}"
        )


def lineage(
    target: Annotated[str, typer.Argument(help="A chunk id (= point id) or a document's path.")],
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Only this physical collection.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Trace a point to its chunk, document version, pipeline version and flow run.

    `impetus lineage runs` lists the last runs instead: status (crashed ones with when and why)."""
    s = settings()
    from pipelines.lineage import Lineage

    if not (s.data_dir / "lineage.duckdb").is_file():
        raise fail(f"no lineage yet in {s.data_dir}; run `impetus ingest PATH` first")
    if target == "runs" and not Path(target).exists():
        _runs(s, as_json)
        return
    with domain_errors(), Lineage.open(s, read_only=True) as lin:
        chains = lin.trace(target, collection)
    if as_json:
        echo_json(chains)
        return
    for c in chains:
        v, r = c["document_version"], c["run"]
        if c["point"]:
            p, ch = c["point"], c["chunk"]
            gone = f", deleted {p['deleted_at']}" if p["deleted_at"] else ""
            typer.echo(
                f"point {p['point_id']} in {p['collection']} (written {p['written_at']}{gone})"
            )
            typer.echo(
                f"  chunk #{ch['index']}: {ch['token_count']} tokens, text {ch['text_hash']}"
            )
        typer.echo(
            f"  document {v['source']} @ {str(v['content_hash'])[:12]} "
            f"[{v['status']}{', current' if v['current'] else ''}]"
            + (f": {v['reason']}" if v["reason"] else "")
        )
        typer.echo(f"  pipeline {v['pipeline_version']}, run {r['run_id']} ({r['status']})")


def _runs(s: Settings, as_json: bool, limit: int = 20) -> None:
    """The last runs, newest first; runs a dead process left `running` are marked crashed first
    (flows/ingest/recovery.py), so what this shows is true."""
    from flows.ingest.recovery import mark_crashed_in_lineage
    from pipelines.lineage import Lineage, LineageLocked

    with domain_errors():
        try:
            mark_crashed_in_lineage(s)
            lin = Lineage.open(s)
        except LineageLocked:  # a live writer: read what it has committed
            lin = Lineage.open(s, read_only=True)
        with lin:
            runs = lin.runs(limit=limit)
    if as_json:
        echo_json(runs)
        return
    for r in runs:
        line = f"{r['run_id']}  {r['status']:<9}  {r['collection']}  started {r['started_at']}"
        if r["status"] == "crashed":
            line += f"; crashed {r.get('crashed_at')}: {r.get('error')}"
        elif r["finished_at"]:
            line += f", finished {r['finished_at']}"
        typer.echo(line)
