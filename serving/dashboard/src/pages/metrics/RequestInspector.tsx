/**
 * Recent requests (GET /api/requests) merged with live `request.finished` events, in a table the
 * user filters by text (route, model, key, method, status) and by status class.
 */
import { useMemo, useState } from "react";

import { useRequests } from "../../api/hooks";
import { ErrorPanel } from "../../components/ErrorPanel";
import { Badge, Card, Code, EmptyState, SelectField, Spinner, Table, TextField } from "../../components/ui";
import { useLive } from "../../store/live";
import {
  type StatusClass,
  filterRows,
  formatMs,
  formatTokens,
  mergeRows,
  rowsFromEvents,
} from "./requests";

const STATUS_OPTIONS: { value: StatusClass; label: string }[] = [
  { value: "all", label: "All statuses" },
  { value: "2xx", label: "Succeeded (2xx/3xx)" },
  { value: "4xx", label: "Refused (4xx)" },
  { value: "5xx", label: "Failed (5xx)" },
];

function statusTone(status: number): "good" | "warn" | "bad" {
  return status >= 500 ? "bad" : status >= 400 ? "warn" : "good";
}

export function RequestInspector() {
  const fetched = useRequests(200);
  const events = useLive((s) => s.events);
  const [text, setText] = useState("");
  const [status, setStatus] = useState<StatusClass>("all");
  const [includeDashboard, setIncludeDashboard] = useState(false);
  const rows = useMemo(
    () => mergeRows(rowsFromEvents(events), fetched.data?.data ?? []),
    [events, fetched.data],
  );
  const shown = useMemo(
    () => filterRows(rows, { text, status, includeDashboard }),
    [rows, text, status, includeDashboard],
  );

  return (
    <Card title="Request inspector">
      <div className="mb-3 flex flex-wrap items-end gap-3">
        <TextField
          label="Filter"
          placeholder="route, model, key, status…"
          value={text}
          onChange={(e) => setText(e.target.value)}
          className="min-w-48 flex-1"
        />
        <SelectField
          label="Status"
          value={status}
          options={STATUS_OPTIONS}
          onChange={(e) => setStatus(e.target.value as StatusClass)}
          className="w-48"
        />
        <label className="flex items-center gap-2 pb-1.5 text-sm">
          <input
            type="checkbox"
            checked={includeDashboard}
            onChange={(e) => setIncludeDashboard(e.target.checked)}
            className="h-4 w-4"
          />
          Include the dashboard's own reads (GET /api/…)
        </label>
        <p className="pb-1.5 text-sm text-zinc-600 dark:text-zinc-400" aria-live="polite">
          {shown.length} of {rows.length} requests
        </p>
      </div>
      {fetched.isError && (
        <div className="mb-3">
          <ErrorPanel error={fetched.error} onRetry={() => void fetched.refetch()} />
        </div>
      )}
      {fetched.isPending && rows.length === 0 ? (
        <Spinner label="Loading recent requests" />
      ) : rows.length === 0 ? (
        <EmptyState title="No requests yet.">
          Send a chat on the Chat page (or <Code>curl /v1/chat/completions</Code>); each finished request
          appears here as it ends.
        </EmptyState>
      ) : shown.length === 0 && !text && status === "all" ? (
        <EmptyState title="No requests from clients yet.">
          Only the dashboard's own reads so far (tick the box above to see them). Send a chat on the
          Chat page and it appears here as it ends.
        </EmptyState>
      ) : shown.length === 0 ? (
        <EmptyState title="No request matches the filter.">Clear the filter to see all of them.</EmptyState>
      ) : (
        <div role="region" className="max-h-[28rem] overflow-y-auto" tabIndex={0} aria-label="Recent requests (scrolls)">
        <Table
          caption="Recent requests, newest first"
          head={["Time", "Route", "Model", "Status", "Tokens (in → out)", "Latency", "TTFT", "Key"]}
        >
          {shown.map((r) => (
            <tr key={r.id} data-testid="request-row">
              <td className="px-2 py-1.5 whitespace-nowrap">{new Date(r.ts * 1000).toLocaleTimeString()}</td>
              <td className="px-2 py-1.5 font-mono text-xs">
                {r.method} {r.route}
              </td>
              <td className="px-2 py-1.5">{r.model ?? "–"}</td>
              <td className="px-2 py-1.5">
                <Badge tone={statusTone(r.status)}>{r.status}</Badge>
              </td>
              <td className="px-2 py-1.5 whitespace-nowrap">{formatTokens(r)}</td>
              <td className="px-2 py-1.5 whitespace-nowrap">{formatMs(r.latency_ms)}</td>
              <td className="px-2 py-1.5 whitespace-nowrap">{formatMs(r.ttft_ms)}</td>
              <td className="px-2 py-1.5">{r.key_name ?? "–"}</td>
            </tr>
          ))}
        </Table>
        </div>
      )}
    </Card>
  );
}
