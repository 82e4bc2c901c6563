"""The tracing bench waits for the `on` server's exporter to send the cheap phase's spans before
chat is timed (flows/bench/tracing.py `drained`): a sink still receiving is not drained."""

from __future__ import annotations

import threading
import time

from flows.bench.tracing import SinkStats, drained


def test_drained_waits_until_the_spans_stop_arriving() -> None:
    sink = SinkStats()

    def export() -> None:  # three batches, a second apart, as a batch exporter would send them
        for _ in range(3):
            time.sleep(1.0)
            sink.spans += 512

    thread = threading.Thread(target=export)
    t0 = time.monotonic()
    thread.start()
    assert drained(sink, quiet_s=1.5, limit_s=20) == 3 * 512
    assert time.monotonic() - t0 >= 3.0 + 1.5
    thread.join()


def test_drained_gives_up_at_its_limit() -> None:
    sink = SinkStats()
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            sink.spans += 1
            time.sleep(0.1)

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        t0 = time.monotonic()
        assert drained(sink, quiet_s=1.0, limit_s=2.0) > 0
        assert time.monotonic() - t0 < 3.0
    finally:
        stop.set()
        thread.join()
