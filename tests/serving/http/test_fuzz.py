"""Schemathesis against the real app's own OpenAPI document: every operation the document lists
(so routes added later are fuzzed too), with valid and invalid inputs, on a real uvicorn server
with small fake engines (tests/serving/fakes.py), keys off and on (an admin key: every route).

Findings, all collected before the test fails so one run shows them all:
- any 5xx the operation does not document as its own (/api/health/ready's 503 before the
  default model is loaded, say, after a fuzzed unload);
- a response that breaks its own documented schema, status or content type;
- a traceback, or the data directory's path, in any body.

`IMPETUS_FUZZ_EXAMPLES` (default 25; more for a deeper run) bounds the examples per operation
and generation mode; both runs take 30-50 s on two busy cores.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from serving.engine.base import Delta, GenerationRequest
from tests.serving.fakes import FakeEngine
from tests.serving.http.fake_server import FakeServer, fake_servers

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("IMPETUS_FUZZ_EXAMPLES", "25"))
CONTEXT = 64  # tokens: the fake's "context window"


class WindowedFakeEngine(FakeEngine):
    """A FakeEngine that caps generation at a context window, as the MLX engine does (it clamps
    max_tokens to the room the prompt leaves): fuzzed max_tokens of 2**31 end at once."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        params = dataclasses.replace(
            request.params, max_tokens=min(request.params.max_tokens, CONTEXT)
        )
        return super().generate(dataclasses.replace(request, params=params))


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[FakeServer, dict[str, str]]]]:
    from pipelines.keys import KeyStore

    root = tmp_path_factory.mktemp("fuzz")
    unlimited = {"inference": "100000/minute", "read": "100000/minute"}
    with fake_servers(root) as start:
        open_srv = start("open", engine=WindowedFakeEngine, auth={"mode": "off"})
        keyed = start(
            "keyed", engine=WindowedFakeEngine, auth={"mode": "on"}, rate_limits=unlimited
        )
        keys = KeyStore.open(keyed.settings.data_dir)
        _, token = keys.create("fuzzer", "admin")
        keys.close()
        yield {"off": (open_srv, {}), "on": (keyed, {"Authorization": f"Bearer {token}"})}


def _problems(server: FakeServer, case: Any, response: Any) -> list[str]:
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    found = []
    text = response.text
    documented = case.operation.definition.raw.get("responses", {})
    if response.status_code >= 500 and str(response.status_code) not in documented:
        found.append(f"{response.status_code}: {text[:300]}")
    if "Traceback" in text or 'File "/' in text:
        found.append(f"a traceback in the body: {text[:300]}")
    data_dir = server.settings.data_dir
    if str(data_dir) in text or str(data_dir.resolve()) in text:
        found.append(f"the data directory in the body: {text[:300]}")
    try:
        case.validate_response(
            response,
            checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
        )
    except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup
        found.append(_failure(exc))
    return found


def _fuzz(
    server: FakeServer,
    headers: dict[str, str],
    cases: Any,
    findings: dict[str, list[str]],
    statuses: Counter[tuple[str, int]],
    where: str,
) -> None:
    """Send EXAMPLES cases of one operation in one generation mode; record what breaks."""

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],  # findings are collected, not shrunk
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        response = case.call(base_url=server.url, headers=headers, timeout=30)
        statuses[case.operation.label, response.status_code // 100 * 100] += 1
        for problem in _problems(server, case, response):
            findings.setdefault(where, []).append(
                f"{problem}\n    request: {case.as_curl_command()}"
            )

    fuzz()


def _failure(exc: BaseException) -> str:
    """What broke, in a few lines: the failures of a FailureGroup, else the exception."""
    inner = getattr(exc, "exceptions", None) or [exc]
    return "; ".join(
        " ".join(line.strip() for line in str(e).strip().splitlines()[:4] if line.strip())
        or repr(e)
        for e in inner
    )


@pytest.mark.parametrize("auth", ["off", "on"])
def test_every_operation_answers_within_its_document(
    servers: dict[str, tuple[FakeServer, dict[str, str]]], auth: str
) -> None:
    import schemathesis
    from schemathesis import GenerationMode

    server, headers = servers[auth]
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=headers)
    _name_known_models(schema)
    findings: dict[str, list[str]] = {}
    statuses: Counter[tuple[str, int]] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 15, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            where = f"{operation.label} [{mode.value}]"
            try:
                cases = operation.as_strategy(generation_mode=mode)
                _fuzz(server, headers, cases, findings, statuses, where)
            except Unsatisfiable:
                pass  # no input to make invalid (a GET without parameters)
            except Exception as exc:  # generation itself failed: a finding too
                findings.setdefault(where, []).append(f"could not fuzz: {exc!r}")
    report = "\n".join(
        f"{where}: {len(items)} finding(s)\n  " + "\n  ".join(items[:3])
        for where, items in findings.items()
    )
    assert not findings, report
    # Not vacuous: each operation was answered, and valid requests reached the engines.
    assert {label for label, _ in statuses} == {op.label for op in operations}
    generation = ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings")
    assert sum(statuses[label, 200] for label in generation) > 0, sorted(statuses.items())


def _name_known_models(schema: Any) -> None:
    """Random strings name no model, so valid requests would stop at 404: a model name (in a
    body or a path) is also drawn from the fake registry's, to reach the engines."""
    from hypothesis import strategies as st

    names = ["fake-llm", "fake-embed"]

    @schema.hook("flatmap_body")
    def known_model(context: Any, body: Any) -> Any:
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            return st.sampled_from([*names, *names, body["model"]]).map(
                lambda m: {**body, "model": m}
            )
        return st.just(body)

    @schema.hook("flatmap_path_parameters")
    def known_model_id(context: Any, params: Any) -> Any:
        if isinstance(params, dict) and isinstance(params.get("model_id"), str):
            return st.sampled_from([params["model_id"], *names]).map(
                lambda m: {**params, "model_id": m}
            )
        return st.just(params)
