"""`--compare-to`'s rules: which way each metric should move, absolute vs relative thresholds,
configurations on one side only, and the table that marks failures."""

from __future__ import annotations

import math

from pipelines.evaluation.regression import compare, rule_for, table
from pipelines.settings import BenchSettings

LIMITS = BenchSettings(
    max_quality_drop=0.02, max_perplexity_rise=0.05, max_speed_drop=0.3, max_cost_rise=0.3
)


def test_each_metric_family_has_its_direction_and_threshold() -> None:
    assert rule_for("dense_ndcg_at_10") == ("higher", "abs", "max_quality_drop")
    assert rule_for("greedy_agreement") == ("higher", "abs", "max_quality_drop")
    assert rule_for("perplexity") == ("lower", "rel", "max_perplexity_rise")
    assert rule_for("decode_tps") == ("higher", "rel", "max_speed_drop")
    assert rule_for("embed_chunks_per_s") == ("higher", "rel", "max_speed_drop")
    assert rule_for("dense_query_p95_ms") == ("lower", "rel", "max_cost_rise")
    assert rule_for("peak_memory_mb") == ("lower", "rel", "max_cost_rise")
    assert rule_for("perplexity_stderr") is None  # informational


def test_only_moves_past_a_threshold_the_wrong_way_fail() -> None:
    base = {"m@384": {"dense_ndcg_at_10": 0.90, "perplexity": 10.0, "decode_tps": 10.0}}
    fine = {"m@384": {"dense_ndcg_at_10": 0.885, "perplexity": 10.4, "decode_tps": 7.5}}
    deltas, notes = compare(fine, base, LIMITS)
    assert not any(d.failed for d in deltas) and notes == []
    better = {"m@384": {"dense_ndcg_at_10": 0.99, "perplexity": 5.0, "decode_tps": 50.0}}
    assert not any(d.failed for d in compare(better, base, LIMITS)[0])
    worse = {"m@384": {"dense_ndcg_at_10": 0.87, "perplexity": 10.6, "decode_tps": 6.9}}
    failed = {d.metric for d in compare(worse, base, LIMITS)[0] if d.failed}
    assert failed == {"dense_ndcg_at_10", "perplexity", "decode_tps"}


def test_configurations_on_one_side_are_noted_and_nan_is_skipped() -> None:
    base = {"a@64": {"dense_hit_at_1": 0.5}, "b@64": {"dense_hit_at_1": 0.5}}
    current = {"a@64": {"dense_hit_at_1": math.nan, "new_metric_tps": 3.0}, "c@64": {}}
    deltas, notes = compare(current, base, LIMITS)
    assert deltas == []
    assert notes == ["c@64: not in the baseline run", "b@64: in the baseline run only"]


def test_the_table_marks_failures_and_counts_them() -> None:
    base = {"m@4bit": {"perplexity": 10.0, "perplexity_stderr": 1.0}}
    current = {"m@4bit": {"perplexity": 12.0, "perplexity_stderr": 1.5}}
    text = table(*compare(current, base, LIMITS))
    assert "| m@4bit | perplexity | 10 | 12 | +20.0% | 5% | FAIL |" in text
    assert "perplexity_stderr" not in text  # no rule: not in the default table
    assert "1 of 1 compared metrics past their threshold" in text
