"""The data directory on a small filesystem that fills during an ingest: the run fails with a
clear message naming the disk, nothing half-written is searchable, and once the filesystem grows
the next run converges to a clean run's state.

The filesystem is a size-limited tmpfs mounted by the test (root only; skipped otherwise)."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.ingest.flow import ingest
from pipelines.lineage import Lineage
from pipelines.settings import get_settings
from tests.faults.state import state, write_corpus
from tests.flows.conftest import link_models, run_cli, use_data_dir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

WORDS = [
    "lighthouse",
    "keeper",
    "storm",
    "harbor",
    "vessel",
    "signal",
    "beacon",
    "tide",
    "rock",
    "coast",
    "night",
    "fog",
    "bell",
]
MiB = 1 << 20


def corpus_files(n: int = 8) -> dict[str, str]:
    """`n` documents of four sections each (about a dozen chunks a document), always the same."""
    rng = random.Random(19)
    return {
        f"doc{i:02d}.md": "\n\n".join(
            f"# Part {j} of {i}\n\n" + " ".join(rng.choice(WORDS) for _ in range(300))
            for j in range(4)
        )
        for i in range(n)
    }


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs, unmounted at the end whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_fills_during_ingest_then_grows_and_the_next_run_converges(
    small_disk: Path,
    tmp_path: Path,
    ready_models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    corpus = write_corpus(tmp_path / "corpus", corpus_files())
    ref = tmp_path / "ref"
    link_models(ref, ready_models_dir)
    use_data_dir(ref, monkeypatch)
    ingest([str(corpus)], collection="c")
    clean = state()

    data = small_disk / "state"
    link_models(data, ready_models_dir)
    use_data_dir(data, monkeypatch)
    # Batches of two; when the first batch's points are written, something else fills the disk
    # (all but 1 MiB), below the 4 MiB that ingest.min_free_bytes asks here: the first batch
    # commits, the second is refused.
    env = {
        "IMPETUS_INGEST__BATCH_DOCUMENTS": "2",
        "IMPETUS_INGEST__MIN_FREE_BYTES": str(4 * MiB),
        "IMPETUS_TEST_FILL_AT": "record:1",
        "IMPETUS_TEST_FILL_FILE": str(small_disk / "filler"),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
    }
    proc = run_cli(["ingest", str(corpus), "-c", "c", "--json"], data, **env)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert f"error: the disk holding {data} is full" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]

    with Lineage.open(get_settings(), read_only=True) as lin:
        (last,) = lin.runs(limit=1)
    assert last["status"] == "failed"
    # On the full disk, search cannot open the store (it would need a fresh 32 MiB segment):
    # a clear error, not the SIGBUS of a write into a mapped page.
    proc = run_cli(["search", "storm", "-c", "c"], data)
    assert proc.returncode == 1 and "is full" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]

    # Space freed: the filesystem grows past the default ingest.min_free_bytes (256 MiB; tmpfs
    # takes memory only for what is written).
    subprocess.run(["mount", "-o", "remount,size=400m", str(small_disk)], check=True)
    half = snapshot_after_failure()
    assert len(half["documents"]) == 2, half["documents"]
    assert set(half["points"]) < set(clean["points"])
    rerun = ingest([str(corpus)], collection="c")
    assert rerun["documents"]["failed"] == 0
    assert state() == clean


def snapshot_after_failure() -> dict[str, Any]:
    """The state a failed run left: `snapshot` asserts that every point in the store is of a
    document's committed version (none written only in intent), and search finds only those."""
    now = state()
    found = {cid for hits in now["searches"] for cid, _ in hits}
    assert found <= set(now["points"])
    return now
