/** Index runs: the ones started here and the server's recent ones, with live progress and a
 * cancel button for admins. */
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useEffect } from "react";
import { api } from "../../api/client";
import { qk, useCollections, usePermissions, useRuns } from "../../api/hooks";
import type { IndexRun } from "../../api/types";
import { ErrorPanel } from "../../components/ErrorPanel";
import { Badge, Button, Card, Code, EmptyState, Table, formatTime, statusTone } from "../../components/ui";
import { TERMINAL, currentStage, progressFraction, toMillis, useTrackedRuns } from "./runs";

function summaryText(run: IndexRun): string {
  const d = run.summary?.documents;
  if (!d) return run.error ?? "";
  const parts = Object.entries(d)
    .filter(([, n]) => n)
    .map(([k, n]) => `${n} ${k}`);
  const chunks = run.summary?.chunks_embedded;
  return [parts.join(", ") || "no changes", chunks ? `${chunks} chunks` : ""].filter(Boolean).join("; ");
}

function Progress({ run }: { run: IndexRun }) {
  const f = progressFraction(run.progress);
  if (TERMINAL.has(run.status) || f === null) return null;
  const stage = currentStage(run.progress);
  return (
    <>
    {stage && <p className="mt-1 text-xs text-zinc-600 dark:text-zinc-400">{stage.label}</p>}
    <div className="mt-1 h-1.5 w-32 rounded bg-zinc-200 dark:bg-zinc-800" role="progressbar" aria-label={`Run ${run.id} progress`} aria-valuenow={Math.round(f * 100)} aria-valuemin={0} aria-valuemax={100}>
      <div className="h-full rounded bg-indigo-500" style={{ width: `${Math.round(f * 100)}%` }} />
    </div>
    </>
  );
}

export function Runs() {
  const { isAdmin } = usePermissions();
  const tracked = useTrackedRuns((s) => s.runs);
  const upsert = useTrackedRuns((s) => s.upsert);
  const anyActive = Object.values(tracked).some((r) => !TERMINAL.has(r.status));
  const server = useRuns(isAdmin, anyActive ? 2000 : false);
  const qc = useQueryClient();
  // Runs read from lineage name the physical collection (default__<hash>): show its alias.
  const aliases = new Map((useCollections().data?.data ?? []).map((c) => [c.physical ?? c.name, c.name]));
  const cancel = useMutation({
    mutationFn: (id: string) => api<IndexRun>(`/v1/rag/runs/${encodeURIComponent(id)}/cancel`, { method: "POST" }),
    onSuccess: (run) => {
      if (run?.id) upsert(run);
      void qc.invalidateQueries({ queryKey: qk.runs });
    },
  });
  // A run that finished changes the collections and their documents.
  const finished = Object.values(tracked).filter((r) => TERMINAL.has(r.status)).length;
  useEffect(() => {
    if (finished) void qc.invalidateQueries({ queryKey: qk.collections });
  }, [finished, qc]);

  const merged = new Map<string, IndexRun>();
  for (const r of server.data?.data ?? []) merged.set(r.id, r);
  for (const r of Object.values(tracked)) merged.set(r.id, { ...merged.get(r.id), ...r });
  const rows = [...merged.values()].sort((a, b) => toMillis(b.created_at) - toMillis(a.created_at));

  return (
    <Card title="Index runs">
      {server.error && !rows.length && <ErrorPanel error={server.error} />}
      {cancel.error && <ErrorPanel error={cancel.error} />}
      {rows.length === 0 ? (
        <EmptyState title="No index runs yet">
          Upload files or pick a server folder above, or run <Code>impetus ingest data/samples</Code>.
        </EmptyState>
      ) : (
        <Table caption="Index runs" head={["Run", "Collection", "Status", "Result", "Started", ""]}>
          {rows.map((r) => (
            <tr key={r.id} data-testid="index-run">
              <td className="px-2 py-1.5 font-mono text-xs">{r.id.slice(0, 8)}</td>
              <td className="px-2 py-1.5">{aliases.get(r.collection) ?? r.collection}</td>
              <td className="px-2 py-1.5">
                <Badge tone={statusTone(r.status)}>{r.status}</Badge>
                <Progress run={r} />
              </td>
              <td className="px-2 py-1.5 text-xs">{summaryText(r)}</td>
              <td className="px-2 py-1.5 text-xs">{formatTime(r.started_at ?? r.created_at)}</td>
              <td className="px-2 py-1.5 text-right">
                {isAdmin && !TERMINAL.has(r.status) && (
                  <Button variant="danger" onClick={() => cancel.mutate(r.id)} disabled={cancel.isPending} aria-label={`Cancel run ${r.id.slice(0, 8)}`}>
                    Cancel
                  </Button>
                )}
              </td>
            </tr>
          ))}
        </Table>
      )}
    </Card>
  );
}
