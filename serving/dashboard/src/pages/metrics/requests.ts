/**
 * The request inspector's rows: recent requests from GET /api/requests merged with the live
 * `request.finished` events, newest first, and the filter the table applies to them.
 */

import type { RequestRow } from "../../api/types";

export type { RequestRow };

export type StatusClass = "all" | "2xx" | "4xx" | "5xx";

export interface RequestFilter {
  text: string;
  status: StatusClass;
  /** keep GET /api/* (the dashboard's own polling, which would bury the inference requests) */
  includeDashboard?: boolean;
}

/** A read the dashboard itself makes (health, models, info...), not a client's request. */
export function isDashboardRead(r: RequestRow): boolean {
  return r.method === "GET" && r.route.startsWith("/api/");
}

/** Live rows first, then fetched ones, each id once, newest first, at most `limit`. */
export function mergeRows(
  live: readonly RequestRow[],
  fetched: readonly RequestRow[],
  limit = 500,
): RequestRow[] {
  const seen = new Set<string>();
  const out: RequestRow[] = [];
  for (const row of [...live, ...fetched]) {
    if (seen.has(row.id)) continue;
    seen.add(row.id);
    out.push(row);
  }
  out.sort((a, b) => b.ts - a.ts);
  return out.slice(0, limit);
}

function statusClassOf(status: number): StatusClass {
  if (status >= 500) return "5xx";
  if (status >= 400) return "4xx";
  return "2xx";
}

/** Rows whose route, model, key name, method or status contain every word of `text`. */
export function filterRows(rows: readonly RequestRow[], filter: RequestFilter): RequestRow[] {
  const words = filter.text.toLowerCase().split(/\s+/).filter(Boolean);
  return rows.filter((r) => {
    if (filter.status !== "all" && statusClassOf(r.status) !== filter.status) return false;
    if (!filter.includeDashboard && isDashboardRead(r)) return false;
    if (!words.length) return true;
    const hay = [r.method, r.route, r.model ?? "", r.key_name ?? "", String(r.status)]
      .join(" ")
      .toLowerCase();
    return words.every((w) => hay.includes(w));
  });
}

/** The request.finished events of the store's event list, as rows. */
export function rowsFromEvents(
  events: readonly { event: string; data: unknown }[],
): RequestRow[] {
  return events
    .filter((e) => e.event === "request.finished" && isRow(e.data))
    .map((e) => e.data as RequestRow);
}

function isRow(v: unknown): v is RequestRow {
  return (
    typeof v === "object" &&
    v !== null &&
    typeof (v as RequestRow).id === "string" &&
    typeof (v as RequestRow).route === "string"
  );
}

export function formatTokens(r: RequestRow): string {
  if (r.prompt_tokens === null && r.completion_tokens === null) return "–";
  return `${r.prompt_tokens ?? "?"} → ${r.completion_tokens ?? "?"}`;
}

export function formatMs(ms: number | null): string {
  if (ms === null || !Number.isFinite(ms)) return "–";
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}
