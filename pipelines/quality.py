"""Data-quality gates of ingestion: Great Expectations suites over one document's chunks and vectors.

    from pipelines.quality import check_chunks, check_vectors
    result = check_chunks(chunks, embedder.max_seq_length)
    if not result.passed:
        quarantine(doc, reason=result.reason)   # the flow's job; the run goes on
    result = check_vectors(chunks, vectors, embedder.dim, unit_norm=True)

Chunks: at least one chunk (an empty document, or a PDF without a text layer, fails here with
that reason), every text non-blank, every token count in [1, the embedder's max_seq_length], chunk
ids present and unique, positions unique. Vectors: one per chunk, each of the model's dimension,
every value finite and, optionally, unit norm.

Great Expectations takes seconds to import and its context a moment to build, so one ephemeral
context with both suites is built on first use and reused for the life of the process (a lock
serialises validations, since a GX context is not documented as thread-safe). Analytics are off
(`GX_ANALYTICS_ENABLED=false`, pipelines.telemetry). Each check builds a one-row-per-chunk pandas
frame and runs its suite with the document's bounds as expectation parameters.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.records import Chunk

CHUNK_SUITE = "impetus-chunks"
VECTOR_SUITE = "impetus-vectors"
_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class QualityFailure:
    """One failed expectation, in words."""

    expectation: str  # e.g. "expect_column_values_to_be_unique(chunk_id)"
    details: str  # what was observed, e.g. "2 of 5 values not unique: ['a1', 'a1']"

    def __str__(self) -> str:
        return f"{self.expectation}: {self.details}"


@dataclass
class QualityResult:
    """The outcome of one suite over one document."""

    suite: str
    passed: bool
    failures: list[QualityFailure] = field(default_factory=list)
    checked: int = 0  # rows (chunks) validated

    @property
    def reason(self) -> str:
        """All failures on one line: what the flow records when it quarantines the document."""
        return "; ".join(str(f) for f in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "passed": self.passed,
            "checked": self.checked,
            "failures": [
                {"expectation": f.expectation, "details": f.details} for f in self.failures
            ],
        }


def check_chunks(chunks: Sequence[Chunk], embedder_max_tokens: int) -> QualityResult:
    """Validate one document's chunks: present, non-blank, within token bounds, unique ids."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "chunk_id": [c.chunk_id for c in chunks],
            "index": [c.index for c in chunks],
            "text_chars": [len(c.text.strip()) for c in chunks],
            "token_count": [c.token_count for c in chunks],
        },
        columns=["chunk_id", "index", "text_chars", "token_count"],
    )
    return _gx().validate(CHUNK_SUITE, frame, {"max_tokens": int(embedder_max_tokens)})


def check_vectors(
    chunks: Sequence[Chunk],
    vectors: np.ndarray | Sequence[np.ndarray],
    dim: int,
    *,
    unit_norm: bool = False,
) -> QualityResult:
    """Validate one document's vectors: one per chunk, `dim` wide, finite, unit norm if asked."""
    import pandas as pd

    rows = [np.asarray(v, dtype=np.float64).ravel() for v in vectors]
    with np.errstate(all="ignore"):
        norms = [float(np.linalg.norm(r)) if np.isfinite(r).all() else np.nan for r in rows]
    frame = pd.DataFrame(
        {
            "width": [r.size for r in rows],
            "non_finite": [int(r.size - np.isfinite(r).sum()) for r in rows],
            # Unit-norm check off: a constant 1.0 keeps the suite fixed and the check passing.
            "norm": norms if unit_norm else [1.0] * len(rows),
        },
        columns=["width", "non_finite", "norm"],
    )
    params = {"rows": len(chunks), "dim": int(dim)}
    return _gx().validate(VECTOR_SUITE, frame, params)


# --- Great Expectations, built once -----------------------------------------------------------


class _Suites:
    """An ephemeral GX context holding both suites, each bound to a whole-dataframe batch."""

    def __init__(self) -> None:
        from pipelines import telemetry

        telemetry.disable()  # before great_expectations is imported
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._lock = threading.Lock()
        context = gx.get_context(mode="ephemeral")
        # tqdm bars per validation would spam the flow's logs.
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = context.data_sources.add_pandas("impetus-quality")

        def param(name: str) -> dict[str, str]:
            return {"$PARAMETER": name}

        expectations = {
            CHUNK_SUITE: [
                gxe.ExpectTableRowCountToBeBetween(min_value=1),
                gxe.ExpectColumnValuesToNotBeNull(column="chunk_id"),
                gxe.ExpectColumnValuesToBeUnique(column="chunk_id"),
                gxe.ExpectColumnValuesToBeUnique(column="index"),
                gxe.ExpectColumnValuesToBeBetween(column="text_chars", min_value=1),
                gxe.ExpectColumnValuesToBeBetween(
                    column="token_count", min_value=1, max_value=param("max_tokens")
                ),
            ],
            VECTOR_SUITE: [
                gxe.ExpectTableRowCountToEqual(value=param("rows")),
                gxe.ExpectColumnValuesToBeBetween(
                    column="width", min_value=param("dim"), max_value=param("dim")
                ),
                gxe.ExpectColumnValuesToBeInSet(column="non_finite", value_set=[0]),
                gxe.ExpectColumnValuesToBeBetween(
                    column="norm",
                    min_value=1 - _NORM_TOLERANCE,
                    max_value=1 + _NORM_TOLERANCE,
                ),
            ],
        }
        self._definitions: dict[str, Any] = {}
        for name, items in expectations.items():
            suite = gx.ExpectationSuite(name=name)
            for expectation in items:
                suite.add_expectation(expectation)
            suite = context.suites.add(suite)
            batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("doc")
            self._definitions[name] = context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch, suite=suite)
            )

    def validate(self, suite: str, frame: Any, params: dict[str, Any]) -> QualityResult:
        definition = self._definitions[suite]
        with self._lock:
            # BOOLEAN_ONLY is about a third cheaper; the common case (a pass) needs no details,
            # and a failing document is validated again for the readable reasons.
            for result_format in ("BOOLEAN_ONLY", "SUMMARY"):
                result = definition.run(
                    batch_parameters={"dataframe": frame},
                    expectation_parameters=params,
                    result_format=result_format,
                )
                if result.success:
                    break
        failures = [_failure(r, params) for r in result.results if not r.success]
        return QualityResult(
            suite=suite, passed=bool(result.success), failures=failures, checked=len(frame)
        )


def _failure(result: Any, params: dict[str, Any]) -> QualityFailure:
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column")
    name = f"{config.type}({column})" if column else config.type
    if result.exception_info and result.exception_info.get("raised_exception"):
        return QualityFailure(
            name, f"could not be evaluated: {result.exception_info.get('exception_message')}"
        )
    observed = result.result or {}
    bounds = {
        k: _resolve(kwargs[k], params)
        for k in ("min_value", "max_value", "value", "value_set")
        if k in kwargs
    }
    expected = ", ".join(f"{k}={v}" for k, v in bounds.items() if v is not None)
    if "observed_value" in observed:
        details = f"observed {observed['observed_value']}"
    else:
        count = observed.get("unexpected_count", 0)
        total = observed.get("element_count", 0)
        sample = observed.get("partial_unexpected_list", [])[:5]
        details = f"{count} of {total} rows unexpected, e.g. {sample}"
    return QualityFailure(name, f"{details} (expected {expected})" if expected else details)


def _resolve(value: Any, params: dict[str, Any]) -> Any:
    if isinstance(value, dict) and "$PARAMETER" in value:
        return params.get(value["$PARAMETER"])
    return value


_suites: _Suites | None = None
_suites_lock = threading.Lock()


def _gx() -> _Suites:
    """The process's GX suites, built on first use."""
    global _suites
    with _suites_lock:
        if _suites is None:
            _suites = _Suites()
        return _suites
