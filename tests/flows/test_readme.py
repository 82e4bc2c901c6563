"""The README's HTTP examples, extracted from the file and run as written against a real server
on 127.0.0.1 (the real MLX engine and embedder, data/samples ingested into `default`), so the
README cannot drift from what the server does: every `curl` block and every Python block."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.settings import PROJECT_ROOT
from tests.serving.servers import _wait_ready, uvicorn_server

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

README = PROJECT_ROOT / "README.md"
BASE = "http://127.0.0.1:8000"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(README.read_text()) if kind == lang]


def test_the_readme_has_the_examples_this_test_runs() -> None:
    assert [b for b in blocks("sh") if b.startswith("curl ")], "no curl example"
    assert blocks("python"), "no Python example"
    assert all(BASE in b for b in blocks("python")), "the examples use 127.0.0.1:8000"
    assert README.stat().st_size <= 12 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ready_models_dir: Path) -> Iterator[str]:
    """`impetus up`'s server on a fresh data_dir: the samples ingested, the real engine."""
    from flows.ingest.flow import ingest
    from pipelines.settings import get_settings
    from serving.engine.manager import ModelManager, mlx_engine_factory
    from serving.http.app import create_app
    from tests.flows.conftest import link_models, use_data_dir

    data_dir = tmp_path_factory.mktemp("readme") / "state"
    link_models(data_dir, ready_models_dir)
    with pytest.MonkeyPatch.context() as mp:
        settings = use_data_dir(data_dir, mp)  # the flow reads its settings at its edge
        summary = ingest([str(PROJECT_ROOT / "data" / "samples")], "default")
        assert summary["documents"]["failed"] == 0 and summary["documents"]["new"] > 0
        manager = ModelManager.from_settings(settings, mlx_engine_factory(settings))
        app = create_app(settings, manager=manager, preload_default=True)
        with uvicorn_server(app) as url:
            _wait_ready(url)
            yield url
    get_settings.cache_clear()


def test_curl_examples(server: str) -> None:
    for block in (b for b in blocks("sh") if b.startswith("curl ")):
        out = subprocess.run(
            ["bash", "-c", block.replace(BASE, server)], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        body = json.loads(out.stdout)
        assert body["choices"][0]["message"]["content"].strip(), body
        if '"rag_mode": true' in block:
            assert body["citations"] and body["citations"][0]["source"], body


def test_python_examples(server: str) -> None:
    for block in blocks("python"):
        out = subprocess.run(
            [sys.executable, "-c", block.replace(BASE, server)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        # the SDK example, as written (no temperature): the model's defaults answer it
        assert "Paris" in out.stdout, out.stdout
        assert "'source': " in out.stdout  # the RAG answer's citations
