/**
 * The Metrics page's live charts (recharts). Loaded on demand by MetricsPage with React.lazy, so
 * recharts stays out of every other page's chunks.
 *
 * Animation is off: a point arrives every second and an animated redraw would lag behind it.
 * Each chart is a <figure> whose caption names it and whose `data-last` carries the newest value,
 * which is what screen readers announce and what the end-to-end test watches move.
 */

import {
  CartesianGrid,
  Legend,
  Line,
  LineChart,
  ResponsiveContainer,
  Tooltip,
  XAxis,
  YAxis,
} from "recharts";

import type { SeriesPoint } from "./series";

type Key = Exclude<keyof SeriesPoint, "seq" | "t" | "time">;

interface ChartSpec {
  id: string;
  title: string;
  unit: string;
  lines: { key: Key; name: string; color: string; dashed?: boolean }[];
}

// Mid-tone colours that keep ≥ 3:1 contrast on both the light and the dark background.
const BLUE = "#3b82f6";
const AMBER = "#d97706";
const GREEN = "#16a34a";
const ROSE = "#e11d48";

export const CHARTS: ChartSpec[] = [
  { id: "tps", title: "Throughput", unit: "tok/s", lines: [{ key: "tps", name: "tok/s", color: BLUE }] },
  {
    id: "ttft",
    title: "Time to first token",
    unit: "ms",
    lines: [
      { key: "ttft50", name: "p50", color: GREEN },
      { key: "ttft95", name: "p95", color: ROSE, dashed: true },
    ],
  },
  {
    id: "itl",
    title: "Inter-token latency",
    unit: "ms",
    lines: [
      { key: "itl50", name: "p50", color: GREEN },
      { key: "itl95", name: "p95", color: ROSE, dashed: true },
    ],
  },
  {
    id: "seqs",
    title: "Sequences",
    unit: "count",
    lines: [
      { key: "running", name: "running", color: BLUE },
      { key: "waiting", name: "waiting", color: AMBER, dashed: true },
    ],
  },
  { id: "rss", title: "Server memory (RSS)", unit: "MiB", lines: [{ key: "rssMiB", name: "RSS", color: AMBER }] },
];

function lastValue(series: readonly SeriesPoint[], key: Key): string {
  const v = series.at(-1)?.[key];
  return v === null || v === undefined ? "no sample" : String(v);
}

export interface ChartsProps {
  series: SeriesPoint[];
  /** fixed size for tests (jsdom has no layout); the page leaves it unset */
  size?: { width: number; height: number };
}

export default function Charts({ series, size }: ChartsProps) {
  return (
    <div className="grid grid-cols-1 gap-4 md:grid-cols-2 xl:grid-cols-3">
      {CHARTS.map((spec) => {
        const summary = spec.lines
          .map((l) => `${l.name} ${lastValue(series, l.key)}`)
          .join(", ");
        const chart = (
          <LineChart
            data={series}
            margin={{ top: 8, right: 12, bottom: 4, left: 0 }}
            width={size?.width}
            height={size?.height}
          >
            <CartesianGrid strokeDasharray="3 3" strokeOpacity={0.25} />
            <XAxis
              dataKey="t"
              type="number"
              domain={["dataMin", "dataMax"]}
              allowDecimals={false}
              tick={{ fill: "currentColor", fontSize: 11 }}
              stroke="currentColor"
              tickFormatter={(t: number) => `${t}s`}
            />
            <YAxis
              tick={{ fill: "currentColor", fontSize: 11 }}
              stroke="currentColor"
              width={44}
              allowDecimals={spec.id !== "seqs"}
            />
            <Tooltip
              labelFormatter={(_, payload) => payload?.[0]?.payload?.time ?? ""}
              contentStyle={{ background: "var(--color-surface, #111827)", border: "1px solid #6b7280" }}
            />
            {spec.lines.length > 1 && <Legend wrapperStyle={{ fontSize: 12 }} />}
            {spec.lines.map((l) => (
              <Line
                key={l.key}
                type="linear"
                dataKey={l.key}
                name={l.name}
                stroke={l.color}
                strokeWidth={2}
                strokeDasharray={l.dashed ? "5 3" : undefined}
                dot={false}
                connectNulls={false}
                isAnimationActive={false}
              />
            ))}
          </LineChart>
        );
        return (
          <figure
            key={spec.id}
            data-testid={`chart-${spec.id}`}
            data-last={lastValue(series, spec.lines[0]?.key ?? "tps")}
            data-points={series.length}
            aria-labelledby={`chart-${spec.id}-title`}
            className="rounded-lg border border-zinc-300 p-3 dark:border-zinc-700"
          >
            <figcaption id={`chart-${spec.id}-title`} className="mb-1 text-sm font-medium">
              {spec.title} <span className="font-normal opacity-75">({spec.unit})</span>
            </figcaption>
            <div className="h-44" role="img" aria-label={`${spec.title}: ${summary}`}>
              {size ? chart : <ResponsiveContainer width="100%" height="100%">{chart}</ResponsiveContainer>}
            </div>
          </figure>
        );
      })}
    </div>
  );
}
