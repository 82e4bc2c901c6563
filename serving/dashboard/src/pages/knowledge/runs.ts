/** Index runs this tab started or saw: fed by POST /v1/rag/index answers, WebSocket index.*
 * events and polling of GET /v1/rag/runs/{id} (for runs the socket may not report). */
import { useEffect } from "react";
import { create } from "zustand";
import { api } from "../../api/client";
import type { IndexRun } from "../../api/types";
import { useLive } from "../../store/live";

export const TERMINAL = new Set(["completed", "failed", "cancelled", "canceled"]);

interface RunsState {
  runs: Record<string, IndexRun>;
  upsert: (run: IndexRun) => void;
}

export const useTrackedRuns = create<RunsState>((set) => ({
  runs: {},
  upsert: (run) => set((s) => ({ runs: { ...s.runs, [run.id]: { ...s.runs[run.id], ...run } } })),
}));

/** The stage a run reports last: the server sends `{label: {done, total}}` per stage. */
export function currentStage(progress: unknown): { label: string; fraction: number } | null {
  if (!progress || typeof progress !== "object") return null;
  const stages = Object.entries(progress as Record<string, unknown>).filter(([, v]) => v && typeof v === "object");
  const last = stages[stages.length - 1];
  if (!last) return null;
  const f = progressFraction(last[1]);
  return f === null ? null : { label: last[0], fraction: f };
}

/** Progress as a fraction 0..1 when the run says so (a number, {done,total}-like fields, or the
 * last of the stages). */
export function progressFraction(progress: unknown): number | null {
  if (typeof progress === "number") return progress > 1 ? progress / 100 : progress;
  if (progress && typeof progress === "object") {
    const p = progress as Record<string, unknown>;
    const done = Number(p.done ?? p.documents_done ?? p.processed ?? p.current);
    const total = Number(p.total ?? p.documents_total ?? p.documents);
    if (Number.isFinite(done) && Number.isFinite(total) && total > 0) return Math.min(1, done / total);
    if (typeof p.fraction === "number") return p.fraction;
    return currentStage(progress)?.fraction ?? null;
  }
  return null;
}

/** Milliseconds since the epoch from an ISO string or epoch seconds (0 when absent). */
export function toMillis(t: unknown): number {
  if (typeof t === "number") return t < 1e12 ? t * 1000 : t;
  if (typeof t === "string") return Date.parse(t) || 0;
  return 0;
}

/** Feed index.* events into the tracked runs, and poll active runs every second. */
export function useRunTracking(): void {
  const events = useLive((s) => s.events);
  const upsert = useTrackedRuns((s) => s.upsert);
  const runs = useTrackedRuns((s) => s.runs);
  useEffect(() => {
    const last = events[events.length - 1];
    if (last && last.event.startsWith("index.") && typeof last.data.id === "string") upsert(last.data as unknown as IndexRun);
  }, [events, upsert]);
  const active = Object.values(runs)
    .filter((r) => !TERMINAL.has(r.status))
    .map((r) => r.id)
    .join(",");
  useEffect(() => {
    if (!active) return;
    const ids = active.split(",");
    const timer = setInterval(() => {
      for (const id of ids)
        api<IndexRun>(`/v1/rag/runs/${encodeURIComponent(id)}`)
          .then(upsert)
          .catch(() => {});
    }, 1000);
    return () => clearInterval(timer);
  }, [active, upsert]);
}
