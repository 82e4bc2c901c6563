"""TTFT of a Responses `previous_response_id` follow-up, with the prefix cache and without it.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \
        .venv/bin/python -m flows.bench.responses_followup [--rounds 3] [--json]

For each setting (serve.prefix_cache_bytes: the configured size, then 0) it starts the in-process
server on a scratch data_dir (the models come from the configured data_dir), sends a first turn
whose prompt is about 1.5k tokens, then streams a follow-up that continues it by
`previous_response_id` and times the first `response.output_text.delta`. With the cache, the
follow-up's prompt starts with the first turn's prompt and answer token for token (see
serving/http/routes/responses.py), so only the new user message is prefilled. Prints the median
TTFT of each and their ratio (issue 14 wants <= 0.3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from pipelines.settings import load_settings

FILLER = (
    "The lighthouse keeper wrote down every ship that passed the reef, the weather at dusk, "
    "and the state of the lamp. "
)


def _first_delta_s(client: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    first: float | None = None
    last: dict[str, Any] = {}
    with client.stream("POST", "/responses", json={**body, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "response.output_text.delta" and first is None:
                first = time.perf_counter() - started
            last = event
    return (first if first is not None else time.perf_counter() - started), last


def measure(prefix_cache_bytes: int | None, rounds: int) -> list[dict[str, Any]]:
    """Follow-up TTFTs (and cached tokens) on a fresh server with this prefix cache size."""
    from serving.engine.manager import ModelManager, mlx_engine_factory
    from serving.http.app import create_app
    from serving.http.threaded import serve_in_thread

    base = load_settings()
    serve = {} if prefix_cache_bytes is None else {"prefix_cache_bytes": prefix_cache_bytes}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "state"
        data_dir.mkdir()
        (data_dir / "models").symlink_to(base.models_dir.resolve(), target_is_directory=True)
        settings = load_settings(data_dir=data_dir, serve=serve)
        manager = ModelManager.from_settings(settings, mlx_engine_factory(settings))
        app = create_app(settings, manager=manager, preload_default=True)
        with serve_in_thread(app) as url, httpx.Client(base_url=f"{url}/v1", timeout=600) as c:
            model = settings.models.llm
            warm = {"model": model, "input": "hi", "max_output_tokens": 2}
            c.post("/responses", json=warm).raise_for_status()  # loads the model
            for i in range(rounds):
                first = c.post(
                    "/responses",
                    json={
                        "model": model,
                        "instructions": f"Session {i}. Notes:\n" + FILLER * 48,
                        "input": "Summarise the notes in one sentence.",
                        "max_output_tokens": 16,
                        "temperature": 0,
                    },
                ).json()
                ttft, last = _first_delta_s(
                    c,
                    {
                        "model": model,
                        "instructions": f"Session {i}. Notes:\n" + FILLER * 48,
                        "previous_response_id": first["id"],
                        "input": "And what did he do at dusk?",
                        "max_output_tokens": 4,
                        "temperature": 0,
                    },
                )
                usage = last["response"]["usage"]
                out.append(
                    {
                        "ttft_s": ttft,
                        "input_tokens": usage["input_tokens"],
                        "cached_tokens": usage["input_tokens_details"]["cached_tokens"],
                    }
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cached = measure(None, args.rounds)
    uncached = measure(0, args.rounds)
    with_cache = statistics.median(r["ttft_s"] for r in cached)
    without = statistics.median(r["ttft_s"] for r in uncached)
    result = {
        "follow_up_ttft_s": {"prefix_cache": with_cache, "no_prefix_cache": without},
        "ratio": with_cache / without,
        "runs": {"prefix_cache": cached, "no_prefix_cache": uncached},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"input tokens of the follow-up: {cached[0]['input_tokens']}")
        print(f"TTFT with prefix cache:    {with_cache * 1000:8.1f} ms  (median of {args.rounds})")
        print(f"TTFT without prefix cache: {without * 1000:8.1f} ms")
        print(f"ratio: {with_cache / without:.3f}")


if __name__ == "__main__":
    main()
