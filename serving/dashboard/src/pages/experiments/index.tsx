/**
 * Experiments: the newest MLflow runs (benchmarks, retrieval evaluations) from GET
 * /api/experiments, one table per experiment with its runs' params and metrics, linked into the
 * MLflow UI when the server knows its address. Empty: how to create runs.
 */
import { useQuery } from "@tanstack/react-query";

import { api } from "../../api/client";
import { ErrorPanel } from "../../components/ErrorPanel";
import { Badge, Card, Code, EmptyState, PageHeader, Spinner, Table, formatTime, statusTone } from "../../components/ui";

export interface ExperimentRun {
  run_id: string;
  experiment: string;
  name: string | null;
  status: string;
  start_time: number | null;
  params: Record<string, string>;
  metrics: Record<string, number>;
  url: string | null;
}

export interface Experiments {
  mlflow_ui_url: string | null;
  data: ExperimentRun[];
}

export const experimentsKey = ["/api/experiments"] as const;

export function useExperiments(limit = 20) {
  return useQuery({
    queryKey: [...experimentsKey, limit],
    queryFn: () => api<Experiments>(`/api/experiments?limit=${limit}`),
  });
}

/** Runs grouped by experiment, in the order the server sent them (newest first). */
export function groupByExperiment(runs: readonly ExperimentRun[]): [string, ExperimentRun[]][] {
  const groups = new Map<string, ExperimentRun[]>();
  for (const r of runs) {
    const list = groups.get(r.experiment) ?? [];
    list.push(r);
    groups.set(r.experiment, list);
  }
  return [...groups.entries()];
}

/** Every key any run has, sorted, so the columns line up. */
export function keysOf(runs: readonly ExperimentRun[], field: "params" | "metrics"): string[] {
  return [...new Set(runs.flatMap((r) => Object.keys(r[field])))].sort();
}

export function formatMetric(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return "–";
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(1) : Math.abs(v) >= 1 ? v.toFixed(3) : v.toPrecision(3);
}

function ExperimentTable({ name, runs }: { name: string; runs: ExperimentRun[] }) {
  const params = keysOf(runs, "params");
  const metrics = keysOf(runs, "metrics");
  return (
    <Card title={name}>
      <Table
        caption={`Runs of ${name}`}
        head={["Run", "Status", "Started", ...params, ...metrics.map((m) => `${m} ▸`)]}
      >
        {runs.map((r) => {
          const href = r.url;
          const label = r.name ?? r.run_id.slice(0, 8);
          return (
            <tr key={r.run_id}>
              <td className="px-2 py-1.5 font-medium whitespace-nowrap">
                {href ? (
                  <a
                    href={href}
                    target="_blank"
                    rel="noreferrer"
                    className="text-indigo-700 underline dark:text-indigo-300"
                    aria-label={`${label} in the MLflow UI (opens a new tab)`}
                  >
                    {label}
                  </a>
                ) : (
                  label
                )}
              </td>
              <td className="px-2 py-1.5">
                <Badge tone={statusTone(r.status.toLowerCase() === "finished" ? "completed" : r.status.toLowerCase())}>
                  {r.status.toLowerCase()}
                </Badge>
              </td>
              <td className="px-2 py-1.5 whitespace-nowrap">{formatTime(r.start_time)}</td>
              {params.map((p) => (
                <td key={p} className="px-2 py-1.5 font-mono text-xs">
                  {r.params[p] ?? "–"}
                </td>
              ))}
              {metrics.map((m) => (
                <td key={m} className="px-2 py-1.5 tabular-nums">
                  {formatMetric(r.metrics[m])}
                </td>
              ))}
            </tr>
          );
        })}
      </Table>
      <p className="mt-2 text-xs text-zinc-600 dark:text-zinc-400">Columns marked ▸ are metrics; the others are parameters.</p>
    </Card>
  );
}

export default function ExperimentsPage() {
  const q = useExperiments();
  const base = q.data?.mlflow_ui_url ?? null;
  return (
    <>
      <PageHeader
        title="Experiments"
        description="The newest benchmark and retrieval-evaluation runs logged to MLflow."
        actions={
          base ? (
            <a
              href={base}
              target="_blank"
              rel="noreferrer"
              className="rounded-md border border-zinc-300 px-3 py-1.5 text-sm font-medium dark:border-zinc-700"
            >
              Open the MLflow UI
            </a>
          ) : undefined
        }
      />
      {q.isPending ? (
        <Spinner label="Loading runs" />
      ) : q.isError ? (
        <ErrorPanel error={q.error} onRetry={() => void q.refetch()} />
      ) : q.data.data.length === 0 ? (
        <EmptyState title="No runs yet.">
          <p>
            Benchmarks and evaluations log here. Create one with <Code>impetus bench serving</Code> (or{" "}
            <Code>impetus bench llm</Code>, <Code>impetus bench embeddings</Code>), or score retrieval with{" "}
            <Code>make eval-retrieval</Code>; then reload this page.
          </p>
        </EmptyState>
      ) : (
        <div className="grid grid-cols-1 gap-4">
          {!base && (
            <p className="text-sm text-zinc-600 dark:text-zinc-400">
              To browse runs in MLflow, run <Code>impetus ui mlflow</Code> and set <Code>serve.mlflow_ui_url</Code>{" "}
              for links here.
            </p>
          )}
          {groupByExperiment(q.data.data).map(([name, runs]) => (
            <ExperimentTable key={name} name={name} runs={runs} />
          ))}
        </div>
      )}
    </>
  );
}
