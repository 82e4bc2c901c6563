/** Where a cited chunk came from (GET /api/lineage/chunks/{id}): its text, the document and
 * version, the pipeline version, and the index flow run with a link into the Prefect UI. */
import { useEffect, useRef } from "react";
import { useQuery } from "@tanstack/react-query";
import { api } from "../../api/client";
import { useInfo } from "../../api/hooks";
import type { Citation, Lineage } from "../../api/types";
import { ErrorPanel } from "../../components/ErrorPanel";
import { Button, Spinner, formatTime } from "../../components/ui";

export function flowRunLink(lineage: Lineage, prefectUi: string | null | undefined): string | null {
  if (lineage.flow_run_url) return lineage.flow_run_url;
  if (prefectUi && lineage.flow_run_id) return `${prefectUi.replace(/\/$/, "")}/runs/flow-run/${lineage.flow_run_id}`;
  return null;
}

function Row({ label, children }: { label: string; children: React.ReactNode }) {
  return (
    <div className="grid grid-cols-[8rem_1fr] gap-2 py-1 text-sm">
      <dt className="text-zinc-600 dark:text-zinc-400">{label}</dt>
      <dd className="min-w-0 break-words">{children ?? "—"}</dd>
    </div>
  );
}

export function LineagePanel({ citation, onClose }: { citation: Citation; onClose: () => void }) {
  const { data: info } = useInfo();
  const query = useQuery({
    queryKey: ["/api/lineage/chunks", citation.chunk_id],
    queryFn: () => api<Lineage>(`/api/lineage/chunks/${encodeURIComponent(citation.chunk_id)}`),
  });
  const closeRef = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    closeRef.current?.focus();
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && onClose();
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [onClose]);
  const l = query.data;
  const link = l ? flowRunLink(l, info?.prefect_ui_url) : null;
  return (
    <aside
      role="dialog"
      aria-modal="false"
      aria-label={`Lineage of source ${citation.index}`}
      className="fixed inset-y-0 right-0 z-20 w-full max-w-md overflow-y-auto border-l border-zinc-200 bg-white p-4 shadow-xl dark:border-zinc-800 dark:bg-zinc-900"
    >
      <div className="mb-3 flex items-center justify-between">
        <h2 className="text-base font-semibold">
          Source [{citation.index}] lineage
        </h2>
        <Button ref={closeRef} variant="ghost" onClick={onClose} aria-label="Close lineage">
          Close
        </Button>
      </div>
      {query.isLoading && <Spinner />}
      {query.error && <ErrorPanel error={query.error} onRetry={() => void query.refetch()} />}
      {l && (
        <>
          <dl>
            <Row label="Document">{l.document?.path ?? l.source}</Row>
            <Row label="Version">{l.document?.version != null ? String(l.document.version) : null}</Row>
            <Row label="Content hash">
              {l.document?.content_hash ? <span className="font-mono text-xs">{l.document.content_hash.slice(0, 16)}</span> : null}
            </Row>
            <Row label="Collection">{l.collection}</Row>
            <Row label="Pipeline">{l.pipeline_version}</Row>
            <Row label="Flow run">
              {l.flow_run_id ? (
                link ? (
                  <a href={link} target="_blank" rel="noreferrer" className="font-mono text-xs text-indigo-700 underline dark:text-indigo-300">
                    {l.flow_run_id} (Prefect UI)
                  </a>
                ) : (
                  <span className="font-mono text-xs">{l.flow_run_id}</span>
                )
              ) : null}
            </Row>
            <Row label="Indexed">{formatTime(l.indexed_at)}</Row>
          </dl>
          <h3 className="mt-3 text-sm font-semibold">Chunk text</h3>
          <blockquote className="mt-1 max-h-96 overflow-y-auto whitespace-pre-wrap rounded bg-zinc-100 p-2 text-sm dark:bg-zinc-800" data-testid="lineage-text">
            {l.text ?? "(the chunk text is not stored)"}
          </blockquote>
        </>
      )}
    </aside>
  );
}
