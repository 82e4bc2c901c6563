"""What every bench returns: a table of configurations → metrics, with the bench's own params and
metrics, that tracking.log_bench logs to MLflow and `impetus bench ...` prints (or `--json`)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Config:
    """One configuration a bench measured (a nested MLflow run tagged with its key)."""

    key: str
    params: dict[str, Any]
    metrics: dict[str, float]
    shown: dict[str, Any] = field(default_factory=dict)  # derived values for the table only

    @property
    def row(self) -> dict[str, Any]:
        return {**self.params, **self.metrics, **self.shown}


@dataclass
class BenchResult:
    """A bench's result: its table, params and metrics (the parent run), configurations (the
    nested runs), where its files are, and (with --compare-to) the comparison."""

    kind: str
    experiment: str
    run_name: str
    table: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    configs: list[Config] = field(default_factory=list)
    files: str | None = None  # logs or state a bench leaves under data_dir
    notes: list[str] = field(default_factory=list)
    run_id: str = ""
    comparison: str | None = None
    baseline_run_id: str | None = None
    regressions: int = 0

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [c.row for c in self.configs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "table": self.table,
            "params": self.params,
            "metrics": self.metrics,
            "rows": self.rows,
            "files": self.files,
            "notes": self.notes,
            "comparison": self.comparison,
            "baseline_run_id": self.baseline_run_id,
            "regressions": self.regressions,
        }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, interpolated linearly; NaN for none."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def split_by_prefix(
    metrics: dict[str, float], keys: Iterable[str], params: dict[str, dict[str, Any]] | None = None
) -> list[Config]:
    """Configurations from flat metrics named `{key}_{metric}` (e.g. `c4_tps_ours`, `dense_p50_ms`)."""
    return [
        Config(
            key,
            (params or {}).get(key, {}),
            {name[len(key) + 1 :]: v for name, v in metrics.items() if name.startswith(f"{key}_")},
        )
        for key in keys
    ]


def markdown(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table of `rows`: columns are (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" if f == "s" else "---:" for _, _, f in columns) + "|"
    body = []
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("" if v is None else (str(v) if fmt == "s" else format(v, fmt)))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def to_csv(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def machine() -> dict[str, Any]:
    """Where the figures come from (a shared, loaded machine gives other numbers)."""
    from pipelines.hardware import detect

    hw = detect()
    return {
        "host": f"{hw.os} {hw.machine} {hw.chip}".strip(),
        "chip": hw.chip,
        "mlx_device": hw.mlx_device,
        "mlx_version": hw.mlx_version,
        "blas": hw.blas,
        "cpu_count": hw.cpu_count,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def plot(panels: list[tuple[str, str, list[tuple[str, list[Any], list[float]]]]], kind: str) -> Any:
    """A row of line/bar plots: each panel is (title, y label, [(series, xs, ys)])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, ylabel, series) in zip(axes[0], panels, strict=True):
        for name, xs, ys in series:
            if kind == "line":
                ax.plot(xs, ys, marker="o", label=name)
            else:
                ax.bar([str(x) for x in xs], ys, label=name)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if kind == "line" and len(series) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
