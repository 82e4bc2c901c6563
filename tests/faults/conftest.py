"""Fault tests: each fault ends in a state checked against a clean run's (same point ids, same
search results), with the real parser, embedder, Qdrant Edge store, DuckDB lineage and Prefect's
test harness; servers are real `impetus serve` processes on 127.0.0.1."""

from __future__ import annotations

from tests.flows.conftest import data_dir

__all__ = ["data_dir"]  # prefect_harness: tests/conftest.py
