/** Collections with their versions and sizes; pick one to see its documents and their status. */
import { useCollections, useDocuments } from "../../api/hooks";
import { ErrorPanel } from "../../components/ErrorPanel";
import { Badge, Button, Card, Code, EmptyState, Spinner, Table, formatBytes, formatTime, statusTone } from "../../components/ui";

export function Collections({ selected, onSelect }: { selected: string | null; onSelect: (name: string) => void }) {
  const q = useCollections();
  return (
    <Card title="Collections">
      {q.isLoading && <Spinner />}
      {q.error && <ErrorPanel error={q.error} onRetry={() => void q.refetch()} />}
      {q.data && q.data.data.length === 0 && (
        <EmptyState title="No collections yet">
          Index the samples with <Code>impetus ingest data/samples</Code>, or upload files below.
        </EmptyState>
      )}
      {q.data && q.data.data.length > 0 && (
        <Table caption="Collections" head={["Name", "Documents", "Chunks", "Size", "Versions"]}>
          {q.data.data.map((c) => (
            <tr key={c.name} className={selected === c.name ? "bg-indigo-50 dark:bg-indigo-950/40" : undefined}>
              <td className="px-2 py-1.5">
                <Button variant="ghost" className="px-1 py-0.5" aria-pressed={selected === c.name} onClick={() => onSelect(c.name)}>
                  {c.name}
                </Button>
              </td>
              <td className="px-2 py-1.5">{c.documents ?? "—"}</td>
              <td className="px-2 py-1.5">{c.points}</td>
              <td className="px-2 py-1.5">{formatBytes(c.size_bytes)}</td>
              <td className="px-2 py-1.5 text-xs">
                {c.versions.length
                  ? c.versions.map((v) => (
                      <span key={v.name} className="mr-2 inline-flex items-center gap-1" title={formatTime(v.created_at)}>
                        <span className="font-mono">{v.name}</span>
                        {v.active && <Badge tone="good">active</Badge>}
                      </span>
                    ))
                  : "—"}
              </td>
            </tr>
          ))}
        </Table>
      )}
    </Card>
  );
}

export function Documents({ collection }: { collection: string }) {
  const q = useDocuments(collection);
  return (
    <Card title={`Documents in ${collection}`}>
      {q.isLoading && <Spinner />}
      {q.error && <ErrorPanel error={q.error} onRetry={() => void q.refetch()} />}
      {q.data && q.data.data.length === 0 && <EmptyState title="No documents in this collection" />}
      {q.data && q.data.data.length > 0 && (
        <Table caption={`Documents in ${collection}`} head={["Source", "Status", "Chunks", "Updated"]}>
          {q.data.data.map((d) => (
            <tr key={`${d.source}-${d.content_hash}`}>
              <td className="px-2 py-1.5 break-all">{d.source}</td>
              <td className="px-2 py-1.5">
                <Badge tone={statusTone(d.status)}>{d.status}</Badge>
                {d.reason && <p className="mt-0.5 text-xs text-zinc-600 dark:text-zinc-400">{d.reason}</p>}
              </td>
              <td className="px-2 py-1.5">{d.chunks ?? "—"}</td>
              <td className="px-2 py-1.5 text-xs">{formatTime(d.updated_at)}</td>
            </tr>
          ))}
        </Table>
      )}
    </Card>
  );
}
