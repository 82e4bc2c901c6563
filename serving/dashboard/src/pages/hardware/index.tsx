/**
 * Hardware: what the server runs on (GET /api/hardware/info: chip, memory, MLX device, BLAS,
 * Neural Engine and Core ML, the embedding backend in use) and a 3D view of the machine's units
 * lit by live load from the snapshots.
 *
 * The 3D view is its own lazy chunk (three.js, React Three Fiber), loaded only when the browser
 * has WebGL; without it, or when drawing fails, the page says why and the unit list below the
 * view carries the same figures as text.
 */
import { Component, type ReactNode, Suspense, lazy, useMemo, useState } from "react";

import { useHardwareInfo } from "../../api/hooks";
import { ErrorPanel } from "../../components/ErrorPanel";
import { Badge, Card, Code, PageHeader, Spinner, formatBytes } from "../../components/ui";
import { selectLatest, useLive } from "../../store/live";
import { type HardwareInfo, type Unit, hasWebGL, loadColor, unitsOf } from "./units";

const MachineView = lazy(() => import("./MachineView"));

function yesNo(v: boolean | undefined | null): ReactNode {
  if (v === undefined || v === null) return "unknown";
  return <Badge tone={v ? "good" : "neutral"}>{v ? "yes" : "no"}</Badge>;
}

function Facts({ hw }: { hw: HardwareInfo }) {
  const e = hw.embedding;
  const rows: [string, ReactNode][] = [
    ["Chip", hw.chip || hw.machine],
    ["OS", `${hw.os}${hw.os_version ? ` ${hw.os_version}` : ""} (${hw.machine})`],
    ["CPU cores", hw.cpu_count],
    ["Memory", formatBytes(hw.memory_bytes)],
    ["MLX", hw.mlx_version ? `${hw.mlx_version} on ${hw.mlx_device ?? "?"}` : "not installed"],
    ["BLAS", hw.blas ?? "unknown"],
    ["Apple Silicon", yesNo(hw.apple_silicon)],
    ["Metal", yesNo(hw.metal_available)],
    ["CUDA", yesNo(hw.cuda_available)],
    ["Neural Engine (ANE)", yesNo(hw.neural_engine)],
    ["Core ML usable", yesNo(hw.coreml_usable)],
  ];
  return (
    <Card title="Machine">
      <dl className="grid grid-cols-[max-content_1fr] gap-x-4 gap-y-1 text-sm">
        {rows.map(([k, v]) => (
          <div key={k} className="contents">
            <dt className="text-zinc-600 dark:text-zinc-400">{k}</dt>
            <dd>{v}</dd>
          </div>
        ))}
      </dl>
      <h3 className="mt-4 mb-1 text-sm font-semibold">Embedding backend</h3>
      <dl className="grid grid-cols-[max-content_1fr] gap-x-4 gap-y-1 text-sm">
        <dt className="text-zinc-600 dark:text-zinc-400">Model</dt>
        <dd>{e.model}</dd>
        <dt className="text-zinc-600 dark:text-zinc-400">In use</dt>
        <dd data-testid="embedding-backend">
          <Badge tone="info">{e.backend}</Badge> {e.loaded ? "(loaded)" : "(what loading it would use)"}
        </dd>
        <dt className="text-zinc-600 dark:text-zinc-400">Configured</dt>
        <dd>
          <Code>embedding.backend: {e.configured_backend}</Code>
        </dd>
        {e.reason && (
          <>
            <dt className="text-zinc-600 dark:text-zinc-400">Why</dt>
            <dd>{e.reason}</dd>
          </>
        )}
        {e.fallback ? (
          <>
            <dt className="text-zinc-600 dark:text-zinc-400">Fallback</dt>
            <dd>{typeof e.fallback === "string" ? e.fallback : "fell back from the configured backend"}</dd>
          </>
        ) : null}
      </dl>
    </Card>
  );
}

/** Catches a failure inside the 3D view (a WebGL context that cannot be created, a lost one). */
class ViewBoundary extends Component<{ fallback: ReactNode; children: ReactNode }, { failed: boolean }> {
  state = { failed: false };
  static getDerivedStateFromError(): { failed: boolean } {
    return { failed: true };
  }
  render(): ReactNode {
    return this.state.failed ? this.props.fallback : this.props.children;
  }
}

function NoWebGL({ why }: { why: string }) {
  return (
    <div role="note" className="flex h-full items-center justify-center p-4 text-center text-sm">
      <p>
        <strong>The 3D view needs WebGL</strong>, {why}. Turn on hardware acceleration in the browser's
        settings, or open this page in a browser with WebGL; the units and their load are listed
        beside it either way.
      </p>
    </div>
  );
}

function UnitList({ units }: { units: Unit[] }) {
  return (
    <ul className="grid gap-1 text-sm" aria-label="Units and their load">
      {units.map((u) => (
        <li key={u.id} className="flex items-center gap-2" data-testid={`unit-${u.id}`}>
          <span aria-hidden className="h-3 w-3 shrink-0 rounded-sm" style={{ background: loadColor(u) }} />
          <span className="font-medium">{u.label}</span>
          <span className="text-zinc-600 dark:text-zinc-400">{u.detail}</span>
        </li>
      ))}
    </ul>
  );
}

function Machine3D({ hw }: { hw: HardwareInfo }) {
  const latest = useLive(selectLatest);
  const units = useMemo(() => unitsOf(hw, latest), [hw, latest]);
  const [webgl] = useState(() => hasWebGL());
  const cores = units.filter((u) => u.kind === "cpu");
  const others = units.filter((u) => u.kind !== "cpu");
  return (
    <Card title="Units, lit by live load">
      <div className="grid grid-cols-1 gap-4 lg:grid-cols-[minmax(0,2fr)_minmax(0,1fr)]">
        <div
          className="h-72 overflow-hidden rounded-md bg-zinc-950 text-zinc-100 sm:h-80"
          role="img"
          aria-label={`3D view of the machine: ${units.map((u) => `${u.label} ${u.detail}`).join("; ")}`}
          data-testid="machine-view"
        >
          {webgl ? (
            <ViewBoundary fallback={<NoWebGL why="and this browser could not start it" />}>
              <Suspense fallback={<div className="p-4"><Spinner label="Loading the 3D view" /></div>}>
                <MachineView units={units} />
              </Suspense>
            </ViewBoundary>
          ) : (
            <NoWebGL why="which this browser does not offer" />
          )}
        </div>
        <div className="grid content-start gap-3">
          {!latest && <p className="text-sm text-zinc-600 dark:text-zinc-400">Waiting for live load from the server…</p>}
          <UnitList units={others} />
          <details>
            <summary className="cursor-pointer text-sm font-medium">CPU cores ({cores.length})</summary>
            <UnitList units={cores} />
          </details>
          <p className="text-xs text-zinc-600 dark:text-zinc-400">
            Blue is idle, red is busy, grey is absent or unmeasured. CPU load is the server process's,
            spread over the cores.
          </p>
        </div>
      </div>
    </Card>
  );
}

export default function HardwarePage() {
  const q = useHardwareInfo();
  const hw = q.data as HardwareInfo | undefined;
  return (
    <>
      <PageHeader title="Hardware" description="What the server runs on and how busy it is." />
      {q.isPending ? (
        <Spinner label="Detecting hardware" />
      ) : q.isError || !hw ? (
        <ErrorPanel error={q.error} onRetry={() => void q.refetch()} />
      ) : (
        <div className="grid grid-cols-1 gap-4 xl:grid-cols-[minmax(0,1fr)_minmax(0,2fr)]">
          <Facts hw={hw} />
          <Machine3D hw={hw} />
        </div>
      )}
    </>
  );
}
