"""`impetus search`, `impetus chat`, `impetus eval retrieval` and `impetus bench retrieval`.

search and chat go through a running server when one answers on serve.host:serve.port (it owns
the embedded store: one writer), else run in this process: search opens the store itself, chat
runs the same app (serving/http/app.py) in-process without HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.console import JsonOpt, api_error, domain_errors, echo_json, fail, settings

if TYPE_CHECKING:
    from pipelines.settings import Settings

ModeOpt = Annotated[
    str | None,
    typer.Option("--mode", "-m", help="hybrid | dense | sparse (rag.search_mode)."),
]
CollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="Collection (rag.collection).")
]

# What a hit's score means in each search mode (pipelines/retrieve/).
SCORES = {
    "hybrid": "reciprocal rank fusion, the sum over dense and BM25 of 1/({k} + rank); "
    "only the order means something",
    "dense": "cosine similarity of the embeddings (-1 to 1)",
    "sparse": "BM25 (unbounded; higher is better)",
}

eval_app = typer.Typer(
    help="Evaluations: flows that log to MLflow and print a table.", no_args_is_help=True
)


def server_url(s: Settings) -> str | None:
    """The base URL of a server answering on serve.host:serve.port, or None."""
    import httpx

    url = f"http://{s.serve.host}:{s.serve.port}"
    try:
        r = httpx.get(f"{url}/api/health/live", timeout=1.0)
    except httpx.HTTPError:
        return None
    return url if r.status_code == 200 else None


def search(
    query: Annotated[str, typer.Argument(help="What to search for.")],
    collection: CollectionOpt = None,
    k: Annotated[
        int | None, typer.Option("-k", "--top-k", help="Chunks to return (rag.top_k).")
    ] = None,
    mode: ModeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search a collection: ranked chunks with their source, score and text."""
    s = settings()
    if mode is not None and mode not in ("hybrid", "dense", "sparse"):
        raise fail(f"--mode must be hybrid, dense or sparse, not {mode!r}")
    hits = _search(s, query, collection, k, mode)
    if as_json:
        echo_json([{f: h[f] for f in ("chunk_id", "source", "score", "text")} for h in hits])
        return
    if not hits:
        typer.echo("no matching chunks")
        return
    used = mode or s.rag.search_mode
    typer.secho(f"{used} search; score: {SCORES[used].format(k=s.rag.rrf_k)}", dim=True)
    for i, h in enumerate(hits, 1):
        where = h.get("section") or h["title"] or Path(h["source"]).name
        text = " ".join(h["text"].split())
        typer.echo(f"{i:>2}. {h['score']:.4f}  {where}  ({h['source']})")
        typer.echo(f"    {text[:200]}{'…' if len(text) > 200 else ''}")


def _search(
    s: Settings, query: str, collection: str | None, k: int | None, mode: str | None
) -> list[dict[str, Any]]:
    from pipelines.errors import ImpetusError
    from pipelines.vectorstore import StoreLockedError

    try:
        return _search_local(s, query, collection, k, mode)
    except StoreLockedError:
        pass  # a server owns the store: ask it
    except ImpetusError as e:
        raise fail(str(e)) from None
    url = server_url(s)
    if url is None:
        raise fail(
            "the vector store is locked by another process and no server answers on "
            f"{s.serve.host}:{s.serve.port}; stop that process or start `impetus serve`"
        )
    import httpx

    body = {"query": query, "collection": collection, "top_k": k, "mode": mode}
    r = httpx.post(
        f"{url}/v1/rag/search", json={k: v for k, v in body.items() if v is not None}, timeout=120
    )
    if r.status_code != 200:
        raise api_error(r)
    return list(r.json()["data"])


def _search_local(
    s: Settings, query: str, collection: str | None, k: int | None, mode: str | None
) -> list[dict[str, Any]]:
    from pipelines.retrieve import Retriever
    from pipelines.vectorstore import create_store

    store = create_store(s)  # raises StoreLockedError when a server owns it
    try:

        def embed(text: str) -> Any:
            from pipelines.embed.dispatch import load_embedder

            return load_embedder(s).encode([text]).vectors[0]

        retriever = Retriever(store, s.rag, data_dir=s.data_dir, embed=embed)
        hits = retriever.search(query, collection=collection, k=k, mode=mode)
        return [h.to_dict() for h in hits]
    finally:
        store.close()


def chat(
    question: Annotated[str, typer.Argument(help="Your question.")],
    no_rag: Annotated[bool, typer.Option("--no-rag", help="Answer without retrieval.")] = False,
    collection: CollectionOpt = None,
    mode: ModeOpt = None,
    model: Annotated[str | None, typer.Option(help="LLM to answer with (models.llm).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 256,
    as_json: JsonOpt = False,
) -> None:
    """Ask a question: the numbered sources it retrieved, then the answer as it is written.

    Sampling is the model's default (`impetus models list`), as for any API request."""
    s = settings()
    payload: dict[str, Any] = {
        "model": model or s.models.llm,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "stream": not as_json,
    }
    if not no_rag:
        payload["rag_mode"] = True
        if collection:
            payload["rag_collection"] = collection
        if mode:
            payload["rag_search_mode"] = mode
    url = server_url(s)
    with domain_errors():
        if url is not None:
            _chat(url, payload)
            return
        typer.secho(
            f"no server on {s.serve.host}:{s.serve.port}: loading the models in this process",
            err=True,
            dim=True,
        )
        with _local_server(s) as local:
            _chat(local, payload)


def _chat(url: str, payload: dict[str, Any]) -> None:
    """Print the sources, then the answer's tokens as they come (or the whole body as JSON)."""
    import httpx

    if not payload["stream"]:
        r = httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=600)
        if r.status_code != 200:
            raise api_error(r)
        echo_json(r.json())
        return
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=600) as r:
        if r.status_code != 200:
            r.read()
            raise api_error(r)
        first, answered = True, False
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise fail(f"the answer stopped: {chunk['error'].get('message', chunk)}")
            if first:
                first = False
                print_sources(chunk.get("citations") or [])
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                text = text if answered else text.lstrip()  # the answer's leading spaces
                if text:
                    answered = True
                    typer.echo(text, nl=False)
    typer.echo()


def print_sources(citations: list[dict[str, Any]]) -> None:
    """The retrieved sources, one line per document with the numbers the answer may cite."""
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for c in citations:
        by_doc.setdefault(c["source"], []).append(c)
    if not by_doc:
        return
    typer.secho("Sources:", bold=True)
    for source, cites in by_doc.items():
        numbers = ", ".join(f"[{c['index']}]" for c in cites)
        title = cites[0]["title"] or Path(source).name
        typer.echo(f"  {numbers} {title} ({source})")
    typer.echo()


@contextmanager
def _local_server(s: Settings) -> Iterator[str]:
    """The server's app on a free 127.0.0.1 port of this process, for as long as a chat lasts."""
    from flows.ingest.runner import PrefectIndexRunner
    from serving.engine.manager import ModelManager, mlx_engine_factory
    from serving.http.app import create_app
    from serving.http.threaded import serve_in_thread

    manager = ModelManager.from_settings(s, mlx_engine_factory(s))
    app = create_app(s, manager=manager, index_runner=PrefectIndexRunner(s))
    with ExitStack() as stack:
        try:
            url = stack.enter_context(serve_in_thread(app, startup_timeout_s=120))
        except RuntimeError:
            raise fail("the in-process server did not start (see the log above)") from None
        yield url


@eval_app.command("retrieval")
def eval_retrieval(
    dataset: Annotated[Path, typer.Option("--dataset", "-d", help='JSON lines {"q", "sources"}.')],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to search.")],
    as_json: JsonOpt = False,
) -> None:
    """hit@1/5/10, MRR@10 and nDCG@10 of dense, sparse and hybrid search; logged to MLflow."""
    s = settings()
    if not dataset.is_file():
        raise fail(f"no such dataset: {dataset}")
    from flows.console import _State
    from flows.prefect_env import prefect_env

    prefect_env(s, _State.verbose)
    from flows.commands.bench import report
    from flows.eval_retrieval import eval_retrieval as flow
    from pipelines.evaluation.retrieval import DatasetError

    try:
        with domain_errors():
            result = flow(str(dataset.resolve()), collection)
    except DatasetError as e:
        raise fail(str(e)) from None
    report(s, result, as_json)


def bench_retrieval(
    chunks: Annotated[int, typer.Option(help="Synthetic chunks in the store.")] = 100_000,
    queries: Annotated[int, typer.Option(help="Queries per search mode.")] = 300,
    as_json: JsonOpt = False,
) -> None:
    """Search latency (p50/p95) of dense, sparse and hybrid over synthetic chunks; to MLflow."""
    s = settings()
    from flows.console import _State
    from flows.prefect_env import prefect_env

    prefect_env(s, _State.verbose)
    from flows.bench.retrieval import RetrievalBenchConfig
    from flows.bench.retrieval import bench_retrieval as flow
    from flows.commands.bench import report

    with domain_errors():
        result = flow(RetrievalBenchConfig(chunks=chunks, queries=queries))
    report(s, result, as_json)
