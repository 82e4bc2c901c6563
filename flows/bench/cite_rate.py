"""How often the default LLM cites its sources: grounded chat on data/eval/samples.jsonl's
questions, counting the answers that carry at least one `[n]` mark of a source it was given.

A plain script (no flow, no MLflow run) for comparing versions of the grounded prompt
(pipelines/prompt.py) on the sample collection, which must be ingested first:

    impetus ingest data/samples
    python -m flows.bench.cite_rate [--seeds 3] [--max-tokens 128] [--prompt FILE] [--reminder TEXT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from typing import Any

from pipelines.settings import PROJECT_ROOT, Settings, get_settings

MARK = re.compile(r"\[(\d+)\]")


async def cite_rate(s: Settings, seeds: int, max_tokens: int) -> dict[str, Any]:
    """Answers with a valid [n] mark / answers, over every question and seed."""
    import httpx

    from serving.engine.manager import ModelManager, mlx_engine_factory
    from serving.http.app import create_app

    questions = [
        json.loads(line)["q"]
        for line in (PROJECT_ROOT / "data" / "eval" / "samples.jsonl").read_text().splitlines()
        if line.strip()
    ]
    app = create_app(s, manager=ModelManager.from_settings(s, mlx_engine_factory(s)))
    cited = total = 0
    examples = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://impetus") as client:
            for q in questions:
                for seed in range(seeds):
                    body = {
                        "model": s.models.llm,
                        "messages": [{"role": "user", "content": q}],
                        "max_tokens": max_tokens,
                        "seed": seed,
                        "rag_mode": True,
                    }
                    r = (await client.post("/v1/chat/completions", json=body, timeout=600)).json()
                    answer = r["choices"][0]["message"]["content"]
                    numbers = {c["index"] for c in r.get("citations") or []}
                    ok = any(int(n) in numbers for n in MARK.findall(answer))
                    cited += ok
                    total += 1
                    if seed == 0:
                        examples.append({"q": q, "cited": ok, "answer": answer[:160]})
    return {"cited": cited, "answers": total, "rate": cited / total, "examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--prompt", help="A file with another system prompt ({sources} marks the sources) to try."
    )
    parser.add_argument("--reminder", help="Another CITE_REMINDER (after the question) to try.")
    args = parser.parse_args()
    from pipelines import prompt

    if args.prompt:
        from pathlib import Path

        prompt.SYSTEM_PROMPT = Path(args.prompt).read_text()
    if args.reminder is not None:
        prompt.CITE_REMINDER = args.reminder
    from pipelines import telemetry

    telemetry.disable()
    result = asyncio.run(cite_rate(get_settings(), args.seeds, args.max_tokens))
    for e in result["examples"]:
        print(f"{'cited ' if e['cited'] else 'NO    '} {e['q'][:50]!r}: {e['answer']!r}")
    print(f"answers with a [n] mark: {result['cited']}/{result['answers']} ({result['rate']:.0%})")


if __name__ == "__main__":
    main()
