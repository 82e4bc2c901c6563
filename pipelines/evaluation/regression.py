"""Compare a benchmark's results with an earlier run's: per configuration and metric, the delta
and whether it moved past its threshold (settings `bench:`) the wrong way.

Each metric has a direction (higher or lower is better) and a threshold: absolute for 0-1 quality
metrics, relative for perplexity, throughputs and costs. Metrics without a rule (counts, sizes of
the input) are shown but never fail; configurations missing on either side are reported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pipelines.settings import BenchSettings

Rule = tuple[Literal["higher", "lower"], Literal["abs", "rel"], str]

# (better direction, absolute or relative, BenchSettings field) by metric-name pattern.
RULES: tuple[tuple[re.Pattern[str], Rule], ...] = (
    (re.compile(r"(hit_at_\d+|mrr_at_\d+|ndcg_at_\d+|agreement)$"), ("higher", "abs", "max_quality_drop")),
    (re.compile(r"perplexity$"), ("lower", "rel", "max_perplexity_rise")),
    (re.compile(r"(_tps|_per_s)$"), ("higher", "rel", "max_speed_drop")),
    (re.compile(r"(_ms|_mb|_bytes)$"), ("lower", "rel", "max_cost_rise")),
)  # fmt: skip


@dataclass(frozen=True)
class Delta:
    config: str
    metric: str
    baseline: float
    current: float
    limit: float | None  # the threshold that applies (None: informational)
    failed: bool

    @property
    def change(self) -> float:
        return self.current - self.baseline

    @property
    def relative(self) -> float:
        return self.change / abs(self.baseline) if self.baseline else math.nan


def rule_for(metric: str) -> Rule | None:
    for pattern, rule in RULES:
        if pattern.search(metric):
            return rule
    return None


def compare(
    current: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    thresholds: BenchSettings,
) -> tuple[list[Delta], list[str]]:
    """Deltas of every metric both runs have for each configuration both ran, and notes on the
    configurations only one of them has."""
    deltas: list[Delta] = []
    for config, metrics in current.items():
        base = baseline.get(config)
        if base is None:
            continue
        for metric, value in sorted(metrics.items()):
            if metric not in base or _nan(value) or _nan(base[metric]):
                continue
            deltas.append(_delta(config, metric, base[metric], value, thresholds))
    notes = [f"{c}: not in the baseline run" for c in current if c not in baseline]
    notes += [f"{c}: in the baseline run only" for c in baseline if c not in current]
    return deltas, notes


def _delta(config: str, metric: str, base: float, value: float, thresholds: BenchSettings) -> Delta:
    rule = rule_for(metric)
    if rule is None:
        return Delta(config, metric, base, value, None, False)
    better, kind, field = rule
    limit = float(getattr(thresholds, field))
    worse = (base - value) if better == "higher" else (value - base)
    if kind == "rel":
        worse = worse / abs(base) if base else 0.0
    return Delta(config, metric, base, value, limit, worse > limit + 1e-12)


def _nan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)


def table(deltas: list[Delta], notes: list[str], *, only_rules: bool = True) -> str:
    """A Markdown table of the deltas (those with a threshold, by default), failures marked."""
    rows = [d for d in deltas if d.limit is not None or not only_rules]
    out = [
        "| configuration | metric | baseline | current | change | limit | |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for d in rows:
        rule = rule_for(d.metric)
        rel = rule is not None and rule[1] == "rel"
        change = f"{d.relative:+.1%}" if rel else f"{d.change:+.4g}"
        limit = "" if d.limit is None else (f"{d.limit:.0%}" if rel else f"{d.limit:g}")
        mark = "FAIL" if d.failed else "ok"
        out.append(
            f"| {d.config} | {d.metric} | {d.baseline:.4g} | {d.current:.4g} | {change} | "
            f"{limit} | {mark} |"
        )
    out += [f"\n{n}" for n in notes]
    failed = sum(d.failed for d in deltas)
    out.append(f"\n{failed} of {len(rows)} compared metrics past their threshold")
    return "\n".join(out)
