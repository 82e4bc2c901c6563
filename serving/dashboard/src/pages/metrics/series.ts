/**
 * Time series for the Metrics charts, derived from the WebSocket snapshots.
 *
 * Pure functions so the charts stay dumb and the arithmetic is tested without a browser:
 * one snapshot in, one chart point out. "All models" sums the rates and queues and takes the
 * worst (largest) percentile of any model, which is what an operator watching latency wants.
 */

import type { ModelSnapshot, Snapshot } from "../../api/types";

export type { ModelSnapshot, Snapshot };

/** One x position of every chart. Null values leave a gap instead of a misleading zero. */
export interface SeriesPoint {
  seq: number;
  /** seconds since the first point shown, for the x axis */
  t: number;
  /** wall clock, for the tooltip */
  time: string;
  tps: number;
  ttft50: number | null;
  ttft95: number | null;
  itl50: number | null;
  itl95: number | null;
  running: number;
  waiting: number;
  rssMiB: number;
  cpu: number;
}

export const ALL_MODELS = "";

const MiB = 1024 * 1024;

function worst(values: (number | null | undefined)[]): number | null {
  const present = values.filter((v): v is number => typeof v === "number" && Number.isFinite(v));
  return present.length ? Math.max(...present) : null;
}

function round(v: number | null, digits = 1): number | null {
  if (v === null) return null;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

/** The chart point of one snapshot, for one model or (model === ALL_MODELS) all of them. */
export function toPoint(s: Snapshot, model: string, t0: number): SeriesPoint {
  const models = model === ALL_MODELS ? s.models : s.models.filter((m) => m.model === model);
  const sum = (f: (m: ModelSnapshot) => number | null | undefined): number =>
    models.reduce((acc, m) => acc + (f(m) ?? 0), 0);
  return {
    seq: s.seq,
    t: Math.round(s.ts - t0),
    time: new Date(s.ts * 1000).toLocaleTimeString(),
    tps: round(sum((m) => m.tokens_per_second)) ?? 0,
    ttft50: round(worst(models.map((m) => m.ttft_ms?.p50))),
    ttft95: round(worst(models.map((m) => m.ttft_ms?.p95))),
    itl50: round(worst(models.map((m) => m.itl_ms?.p50))),
    itl95: round(worst(models.map((m) => m.itl_ms?.p95))),
    running: sum((m) => m.running),
    waiting: sum((m) => m.waiting),
    rssMiB: Math.round(s.process.rss_bytes / MiB),
    cpu: Math.round(s.process.cpu_percent ?? 0),
  };
}

/** The last `limit` snapshots as chart points, oldest first. */
export function toSeries(snapshots: readonly Snapshot[], model: string, limit = 120): SeriesPoint[] {
  const shown = snapshots.slice(-limit);
  const t0 = shown[0]?.ts ?? 0;
  return shown.map((s) => toPoint(s, model, t0));
}

/** Every model seen in the window, sorted, for the model picker. */
export function modelsIn(snapshots: readonly Snapshot[]): string[] {
  const names = new Set<string>();
  for (const s of snapshots) for (const m of s.models) names.add(m.model);
  return [...names].sort();
}

/** Headline figures of the latest point: what the stat tiles above the charts show. */
export interface Headline {
  tps: number;
  peakTps: number;
  running: number;
  waiting: number;
  ttft95: number | null;
  rssMiB: number | null;
}

export function headline(series: readonly SeriesPoint[]): Headline {
  const last = series.at(-1);
  return {
    tps: last?.tps ?? 0,
    peakTps: series.reduce((acc, p) => Math.max(acc, p.tps), 0),
    running: last?.running ?? 0,
    waiting: last?.waiting ?? 0,
    ttft95: last?.ttft95 ?? null,
    rssMiB: last?.rssMiB ?? null,
  };
}
