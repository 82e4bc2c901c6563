/**
 * Models: the registry (name, kind, format, size, status) with load/unload for admins, the memory
 * budget and what is resident in it, the idle TTL, and live memory from the WebSocket snapshots.
 */
import { usePermissions } from "../../api/hooks";
import { ErrorPanel } from "../../components/ErrorPanel";
import {
  Badge,
  Button,
  Card,
  Code,
  EmptyState,
  PageHeader,
  Spinner,
  Table,
  formatBytes,
  statusTone,
} from "../../components/ui";
import { selectLatest, useLive } from "../../store/live";
import {
  type Action,
  type RegistryModel,
  type ServerStatus,
  idleTtlOf,
  useModelAction,
  useRefreshOnModelEvents,
  useRegistry,
  useServerStatus,
} from "./api";
import { formatDuration, percent } from "./format";

function MemoryBar({ used, budget }: { used: number; budget: number }) {
  const pct = percent(used, budget);
  const tone = pct >= 90 ? "bg-red-600" : pct >= 70 ? "bg-amber-500" : "bg-indigo-600";
  return (
    <div>
      <div
        role="meter"
        aria-label="Model memory in use"
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={pct}
        aria-valuetext={`${formatBytes(used)} of ${formatBytes(budget)} (${pct} %)`}
        className="h-3 w-full overflow-hidden rounded bg-zinc-200 dark:bg-zinc-800"
      >
        <div className={`h-full ${tone}`} style={{ width: `${pct}%` }} />
      </div>
      <p className="mt-1 text-sm">
        <strong>{formatBytes(used)}</strong> of {formatBytes(budget)} budget ({pct} %)
      </p>
    </div>
  );
}

function MemoryCard({ status, ttl }: { status: ServerStatus; ttl: number | null }) {
  const latest = useLive(selectLatest);
  const live = useLive((s) => s.status);
  return (
    <Card title="Memory">
      <MemoryBar used={status.memory.in_use_bytes} budget={status.memory.budget_bytes} />
      <dl className="mt-3 grid grid-cols-2 gap-x-4 gap-y-1 text-sm sm:grid-cols-4">
        <dt className="text-zinc-600 dark:text-zinc-400">Server RSS (live)</dt>
        <dd data-testid="live-rss">
          {latest ? formatBytes(latest.process.rss_bytes) : live === "open" ? "waiting…" : "not connected"}
        </dd>
        <dt className="text-zinc-600 dark:text-zinc-400">Idle TTL</dt>
        <dd>
          {ttl === null ? (
            <span>
              set by <Code>models.idle_ttl_s</Code> in configs/impetus.yaml (default 30 min)
            </span>
          ) : ttl === 0 ? (
            "never unloaded when idle"
          ) : (
            `unloaded after ${formatDuration(ttl)} idle`
          )}
        </dd>
      </dl>
    </Card>
  );
}

function ResidentCard({ status }: { status: ServerStatus }) {
  const latest = useLive(selectLatest);
  // A model already resident is not loading, whatever a stale load record says.
  const resident = new Set(status.models.map((m) => m.model));
  const loading = status.loading.filter((l) => !resident.has(l.name));
  const liveMemory = new Map(latest?.models.map((m) => [m.model, m.memory_bytes]) ?? []);
  return (
    <Card title="Resident in memory">
      {status.models.length === 0 && loading.length === 0 ? (
        <EmptyState title="No LLM is loaded.">
          Load one from the registry below, or send a chat: the default model loads on first use.
        </EmptyState>
      ) : (
        <Table caption="Models resident in memory" head={["Model", "Memory", "Active requests", "Idle for", "State"]}>
          {status.models.map((m) => (
            <tr key={m.model}>
              <td className="px-2 py-1.5 font-medium">
                {m.model} {m.default && <Badge tone="info">default</Badge>}
              </td>
              <td className="px-2 py-1.5">{formatBytes(liveMemory.get(m.model) ?? m.memory_bytes)}</td>
              <td className="px-2 py-1.5">{m.active_requests}</td>
              <td className="px-2 py-1.5">{formatDuration(m.idle_s)}</td>
              <td className="px-2 py-1.5">
                <Badge tone="good">loaded</Badge>
              </td>
            </tr>
          ))}
          {loading.map((l) => (
            <tr key={l.name}>
              <td className="px-2 py-1.5 font-medium">{l.name}</td>
              <td className="px-2 py-1.5">–</td>
              <td className="px-2 py-1.5">–</td>
              <td className="px-2 py-1.5">–</td>
              <td className="px-2 py-1.5">
                <Badge tone={l.state === "failed" ? "bad" : "info"}>{l.state}</Badge>
                {l.error && <p className="mt-1 text-xs text-red-700 dark:text-red-300">{l.error}</p>}
              </td>
            </tr>
          ))}
        </Table>
      )}
      {status.embedders.length > 0 && (
        <p className="mt-2 text-sm text-zinc-600 dark:text-zinc-400">
          Embedding models loaded: {status.embedders.join(", ")}
        </p>
      )}
    </Card>
  );
}

function ActionButton({
  model,
  pending,
  onAction,
}: {
  model: RegistryModel;
  pending: Action | null;
  onAction: (action: Action) => void;
}) {
  if (model.status === "loaded")
    return (
      <Button
        onClick={() => onAction("unload")}
        disabled={pending !== null}
        aria-label={`Unload ${model.id}`}
      >
        {pending === "unload" ? "Unloading…" : "Unload"}
      </Button>
    );
  if (model.status === "available" || model.status === "importable")
    return (
      <Button
        variant="primary"
        onClick={() => onAction("load")}
        disabled={pending !== null}
        aria-label={`Load ${model.id}`}
      >
        {pending === "load" ? "Loading…" : "Load"}
      </Button>
    );
  return <span className="text-xs text-zinc-600 dark:text-zinc-400">run <Code>impetus models import</Code></span>;
}

function RegistryCard({ models, isAdmin }: { models: RegistryModel[]; isAdmin: boolean }) {
  const action = useModelAction();
  const pendingFor = (id: string): Action | null =>
    action.isPending && action.variables?.model === id ? action.variables.action : null;
  const head = ["Name", "Kind", "Format", "Size", "Status", ...(isAdmin ? ["Action"] : [])];
  return (
    <Card title="Registry">
      {action.isError && (
        <div className="mb-3">
          <ErrorPanel error={action.error} onRetry={() => action.variables && action.mutate(action.variables)} />
        </div>
      )}
      {!isAdmin && (
        <p className="mb-2 text-sm text-zinc-600 dark:text-zinc-400">
          Loading and unloading models needs an admin key.
        </p>
      )}
      {models.length === 0 ? (
        <EmptyState title="The registry is empty.">
          Import the bundled models with <Code>impetus models import</Code>, then reload.
        </EmptyState>
      ) : (
        <Table caption="Model registry" head={head}>
          {models.map((m) => (
            <tr key={m.id} data-testid={`model-row-${m.id}`}>
              <td className="px-2 py-1.5 font-medium">
                {m.id} {m.default && <Badge tone="info">default</Badge>}
              </td>
              <td className="px-2 py-1.5">{m.kind}</td>
              <td className="px-2 py-1.5">{m.format ?? "–"}</td>
              <td className="px-2 py-1.5">{formatBytes(m.size_bytes)}</td>
              <td className="px-2 py-1.5">
                <Badge tone={m.status === "available" ? "neutral" : statusTone(m.status)}>{m.status}</Badge>
              </td>
              {isAdmin && (
                <td className="px-2 py-1.5">
                  <ActionButton
                    model={m}
                    pending={pendingFor(m.id)}
                    onAction={(a) => action.mutate({ action: a, model: m.id })}
                  />
                </td>
              )}
            </tr>
          ))}
        </Table>
      )}
    </Card>
  );
}

export default function ModelsPage() {
  useRefreshOnModelEvents();
  const { isAdmin } = usePermissions();
  const registry = useRegistry();
  const status = useServerStatus();
  return (
    <>
      <PageHeader
        title="Models"
        description="The model registry, the memory budget and what is resident in it. Idle models are unloaded after the idle TTL."
      />
      <div className="grid grid-cols-1 gap-4">
        {status.isPending ? (
          <Spinner label="Loading memory status" />
        ) : status.isError ? (
          <ErrorPanel error={status.error} onRetry={() => void status.refetch()} />
        ) : (
          <div className="grid grid-cols-1 gap-4 lg:grid-cols-2">
            <MemoryCard status={status.data} ttl={idleTtlOf(registry.data, status.data)} />
            <ResidentCard status={status.data} />
          </div>
        )}
        {registry.isPending ? (
          <Spinner label="Loading the registry" />
        ) : registry.isError ? (
          <ErrorPanel error={registry.error} onRetry={() => void registry.refetch()} />
        ) : (
          <RegistryCard models={registry.data.data} isAdmin={isAdmin} />
        )}
      </div>
    </>
  );
}
