"""Shared fixtures: settings on a temporary data_dir, and the default models made ready once."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines import telemetry
from pipelines.settings import Settings, load_settings

telemetry.disable()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose state lives in a fresh temporary data_dir."""
    return load_settings(data_dir=tmp_path / "state")


@pytest.fixture(scope="session")
def ready_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir where the built-in models are ready.

    `make setup` imports them into the default data_dir; reuse that when it is there, else import
    once for the session (a clean checkout running pytest directly).
    """
    from pipelines.models.store import ModelStore

    default = load_settings().models_dir
    store = ModelStore(default)
    if all(e.status == "ready" for e in store.entries()):
        return default
    root = tmp_path_factory.mktemp("models")
    ModelStore(root).import_defaults()
    return root


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness (a temporary server and SQLite database) for the flows that tests
    run in this process and the CLI subprocesses they start (PREFECT_API_URL).

    Defined here only: a session fixture imported into a test module or another conftest is
    another fixture, with a harness of its own (each ~15-20 s of CPU to start here, then idling
    to the session's end): seven such imports started up to eight harnesses per worker."""
    try:
        import prefect.server.api.server  # noqa: F401  (what the harness's server runs)
        from prefect.testing.utilities import prefect_test_harness
    except TypeError as e:
        pytest.fail(
            f"Prefect's server cannot start in this environment ({e}): Prefect 3.8 still passes "
            "Body(min_items=...) which fastapi 0.155 removed; constrain fastapi<0.155"
        )
    # Prefect's events and log workers are process-wide and keep the API URL they were made
    # with: one made by an earlier test in this process (a server's own Prefect child, under
    # xdist) would send this session's task runs there. Stop them; the next ones use the harness.
    from flows.ingest.runner import _flush_prefect_workers

    _flush_prefect_workers()
    # Prefect's server imports its whole API before answering; give a busy CI box time.
    with prefect_test_harness(server_startup_timeout=180):
        yield


# A parameter id "ray" in a test's node id: [ray], [ray-dense], [on-ray].
RAY_PARAM = re.compile(r"\[(?:[^\]]*-)?ray(?:-[^\]]*)?\]$")


def on_ray(nodeid: str) -> bool:
    """Whether a test talks to a Ray cluster: the "ray" server mode, or tests/serving/ray/."""
    return "tests/serving/ray/" in nodeid or RAY_PARAM.search(nodeid) is not None


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist (`--dist loadgroup`), every test that talks to a Ray cluster runs on one
    worker: the session's Ray server (tests/serving/ray_server.py) then starts once, and two Ray
    clusters never compete for this machine's cores. xdist's own `xdist_group` marker does not
    group under pytest 9 (xdist 3.8 renames `item._nodeid`, which pytest 9 no longer reads: every
    worker started its own Ray server), so the scheduler groups by node id itself.

    The other tests go by module, as `--dist loadscope` would: a module's tests then share one
    worker and its module fixtures (an in-process server with its models, an indexed corpus, a
    converted Core ML package) are built once, not once on each worker that ran one of its tests.
    The work queue keeps the collection's order with the Ray group first (its chain is the
    longest), not loadscope's largest-module-first, which would leave the long one-test modules
    (the Prefect outage, the benches) for the end."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class RayGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if on_ray(nodeid) else nodeid.split("::", 1)[0]

        def schedule(self) -> None:
            # xdist 3.8's LoadScopeScheduling.schedule, with the work queue's order above
            assert self.collection_is_completed
            if self.collection is not None:
                for node in self.nodes:
                    self._reschedule(node)
                return
            if not self._check_nodes_have_same_collection():
                self.log("**Different tests collected, aborting run**")
                return
            self.collection = list(next(iter(self.registered_collections.values())))
            if not self.collection:
                return
            units: dict[str, dict[str, bool]] = {}
            for nodeid in self.collection:
                units.setdefault(self._split_scope(nodeid), {})[nodeid] = False
            for scope in sorted(units, key=lambda scope: scope != "ray"):  # stable
                self.workqueue[scope] = units[scope]
            for _ in range(len(self.nodes) - len(self.workqueue)):
                unused, _assigned = self.assigned_work.popitem()
                unused.shutdown()
            for node in self.nodes:
                self._assign_work_unit(node)
            for node in self.nodes:
                self._reschedule(node)
            if not self.workqueue:
                for node in self.nodes:
                    node.shutdown()

    return RayGroupScheduling(config, log)


def uses_session_ray(item: pytest.Item) -> bool:
    """Whether a test uses the session's Ray server (tests/serving/ray_server.py): the "ray"
    value of a server-mode parameter, or the `ray_server` fixture itself."""
    callspec = getattr(item, "callspec", None)
    by_param = callspec is not None and "ray" in callspec.params.values()
    return by_param or "ray_server" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests of the session's Ray server go after the others, test_ray_auth last of them (it
    creates keys there, which turns that server's auth on); the Ray tests that start clusters of
    their own (tests/serving/ray/) come after that, when the session's server can be stopped."""
    session = [i for i in items if uses_session_ray(i)]
    auth = [i for i in session if "tests/serving/ray/test_ray_auth.py" in i.nodeid]
    session = [i for i in session if i not in auth] + auth
    own = [i for i in items if "tests/serving/ray/" in i.nodeid and not uses_session_ray(i)]
    grouped = set(session) | set(own)
    items[:] = [i for i in items if i not in grouped] + session + own


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Under the Ray group's scheduler, a worker runs its session-Ray tests as one block: after
    the last of them (and the module fixtures it ends), stop that server, so that its cluster
    does not idle beside the rest of the session (one Ray cluster costs a share of a core)."""
    result = yield
    grouped = os.environ.get("PYTEST_XDIST_WORKER") and item.config.getoption("loadgroup", False)
    if grouped and uses_session_ray(item) and (nextitem is None or not uses_session_ray(nextitem)):
        from tests.serving.ray_server import stop_ray_server

        stop_ray_server()
    return result
