"""Serving fixtures: a real server on 127.0.0.1, per server mode, for the SDK tests.

`server` is parametrized over `SERVER_MODES`; each mode has a starter in `SERVER_STARTERS` that
yields a `RunningServer` (tests/serving/servers.py). The Ray Serve mode plugs in by adding "ray"
to `SERVER_MODES` and a starter to `SERVER_STARTERS`; the tests in test_openai_sdk.py then run
against both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from tests.serving.ray_server import ray_server, start_ray  # noqa: F401 (session fixture)
from tests.serving.servers import RunningServer, start_inprocess

# Ray Serve mode (serving/ray/deployments.py) is `impetus serve --ray` in a subprocess, started once per
# session (tests/serving/ray_server.py); slow to start, hence the marker.
SERVER_MODES: list[Any] = ["inprocess", pytest.param("ray", marks=pytest.mark.slow)]
SERVER_STARTERS: dict[
    str, Callable[[pytest.FixtureRequest], AbstractContextManager[RunningServer]]
] = {"inprocess": start_inprocess, "ray": start_ray}


@pytest.fixture(scope="module", params=SERVER_MODES)
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """A running server of each mode (module scope: started once per test module and mode)."""
    with SERVER_STARTERS[request.param](request) as running:
        yield running
