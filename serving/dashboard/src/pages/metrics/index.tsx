/**
 * Metrics: live charts of throughput, TTFT and inter-token latency, sequences and server memory
 * from the WebSocket snapshots (one a second, the store keeps two minutes), headline tiles, and
 * the request inspector. The chart module (recharts) is lazy, so no other page pays for it.
 */
import { Suspense, lazy, useMemo, useState } from "react";

import { Card, EmptyState, PageHeader, SelectField, Spinner } from "../../components/ui";
import { type LiveStatus, useLive } from "../../store/live";
import { RequestInspector } from "./RequestInspector";
import { ALL_MODELS, headline, modelsIn, toSeries } from "./series";

const Charts = lazy(() => import("./Charts"));

const LIVE_TEXT: Record<LiveStatus, string> = {
  idle: "not connected",
  connecting: "connecting…",
  open: "live",
  closed: "disconnected: reconnecting by itself; check that the server is running",
};

function Tile({ label, value, testId }: { label: string; value: string; testId: string }) {
  return (
    <div className="rounded-lg border border-zinc-200 bg-white p-3 dark:border-zinc-800 dark:bg-zinc-900">
      <dt className="text-xs text-zinc-600 dark:text-zinc-400">{label}</dt>
      <dd className="mt-0.5 text-lg font-semibold tabular-nums" data-testid={testId}>
        {value}
      </dd>
    </div>
  );
}

export default function MetricsPage() {
  const snapshots = useLive((s) => s.snapshots);
  const live = useLive((s) => s.status);
  const [model, setModel] = useState(ALL_MODELS);
  const series = useMemo(() => toSeries(snapshots, model), [snapshots, model]);
  const names = useMemo(() => modelsIn(snapshots), [snapshots]);
  const h = headline(series);

  return (
    <>
      <PageHeader
        title="Metrics"
        description="Live figures from the server, one sample a second over the last two minutes; latency percentiles cover the last minute."
        actions={
          <p className="flex items-center gap-2 text-sm" role="status">
            <span
              aria-hidden
              className={`h-2.5 w-2.5 rounded-full ${live === "open" ? "bg-emerald-500" : live === "closed" ? "bg-red-500" : "bg-amber-500"}`}
            />
            Stream: {LIVE_TEXT[live]}
          </p>
        }
      />
      <div className="grid grid-cols-1 gap-4">
        <Card
          title="Live"
          actions={
            <SelectField
              label="Model"
              value={model}
              onChange={(e) => setModel(e.target.value)}
              options={[{ value: ALL_MODELS, label: "All models" }, ...names.map((n) => ({ value: n }))]}
              className="w-56"
            />
          }
        >
          <dl className="mb-4 grid grid-cols-2 gap-2 sm:grid-cols-3 lg:grid-cols-6">
            <Tile label="tok/s now" value={h.tps.toFixed(1)} testId="stat-tps" />
            <Tile label="peak tok/s (2 min)" value={h.peakTps.toFixed(1)} testId="stat-peak-tps" />
            <Tile label="running" value={String(h.running)} testId="stat-running" />
            <Tile label="waiting" value={String(h.waiting)} testId="stat-waiting" />
            <Tile label="TTFT p95" value={h.ttft95 === null ? "–" : `${h.ttft95} ms`} testId="stat-ttft95" />
            <Tile label="server RSS" value={h.rssMiB === null ? "–" : `${h.rssMiB} MiB`} testId="stat-rss" />
          </dl>
          {series.length === 0 ? (
            <EmptyState title="Waiting for the first sample.">
              The server sends one a second over its live stream; if none comes, check that it is
              running and reload.
            </EmptyState>
          ) : (
            <Suspense fallback={<Spinner label="Loading charts" />}>
              <Charts series={series} />
            </Suspense>
          )}
        </Card>
        <RequestInspector />
      </div>
    </>
  );
}
