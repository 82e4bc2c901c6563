/**
 * The machine's units (CPU cores, GPU, Neural Engine, memory) and how loaded each one is,
 * from GET /api/hardware/info and the latest WebSocket snapshot.
 *
 * The 3D view and its text fallback both draw from this list, so they never disagree. Load is
 * a number in [0, 1] or null when nothing measures it (the Neural Engine: no counter is exposed).
 * The server reports the process's CPU percent summed over cores (psutil: 250 % = two and a half
 * cores busy), so core i is lit by the share of that sum that falls on it.
 */

import type { Snapshot } from "../../api/types";
import { formatBytes } from "../../components/ui";

export interface HardwareInfo {
  os: string;
  os_version?: string;
  machine: string;
  chip?: string;
  cpu_count: number;
  memory_bytes: number;
  apple_silicon?: boolean;
  mlx_version?: string | null;
  mlx_device?: string | null;
  metal_available?: boolean;
  cuda_available?: boolean;
  neural_engine?: boolean;
  coreml_usable?: boolean;
  blas?: string;
  embedding: {
    model: string;
    backend: string;
    configured_backend: string;
    reason?: string | null;
    fallback?: string | boolean | null;
    loaded: boolean;
  };
}

export type UnitKind = "cpu" | "gpu" | "ane" | "memory";

export interface Unit {
  id: string;
  kind: UnitKind;
  label: string;
  /** present on this machine (a GPU or Neural Engine may not be) */
  present: boolean;
  load: number | null;
  detail: string;
}

const clamp01 = (v: number): number => Math.min(1, Math.max(0, v));

function gpuLoad(gpu: Record<string, unknown> | null | undefined): number | null {
  if (!gpu) return null;
  const v = gpu.utilization ?? gpu.util_percent ?? gpu.percent;
  return typeof v === "number" ? clamp01(v > 1 ? v / 100 : v) : null;
}

export function unitsOf(hw: HardwareInfo, snap: Snapshot | null | undefined): Unit[] {
  const cores = Math.max(1, Math.min(hw.cpu_count, 64)); // a 3D grid past 64 says nothing more
  const cpu = snap?.process.cpu_percent;
  const busy = typeof cpu === "number" ? Math.max(0, cpu) / 100 : null;
  const units: Unit[] = [];
  for (let i = 0; i < cores; i += 1) {
    const load = busy === null ? null : clamp01(busy - i);
    units.push({
      id: `cpu-${i}`,
      kind: "cpu",
      label: `CPU core ${i + 1}`,
      present: true,
      load,
      detail: load === null ? "no sample yet" : `${Math.round(load * 100)} %`,
    });
  }
  const hasGpu = Boolean(hw.metal_available || hw.cuda_available || snap?.gpu);
  const gLoad = gpuLoad(snap?.gpu);
  units.push({
    id: "gpu",
    kind: "gpu",
    label: "GPU",
    present: hasGpu,
    load: hasGpu ? gLoad : null,
    detail: !hasGpu
      ? `not used (MLX runs on ${hw.mlx_device ?? "the CPU"})`
      : gLoad === null
        ? "present, no load counter"
        : `${Math.round(gLoad * 100)} %`,
  });
  const ane = Boolean(hw.neural_engine);
  units.push({
    id: "ane",
    kind: "ane",
    label: "Neural Engine",
    present: ane,
    load: null,
    detail: !ane
      ? "not on this machine"
      : hw.embedding.backend === "coreml"
        ? "in use by the embedding model (no load counter)"
        : "present, not in use",
  });
  const rss = snap?.process.rss_bytes ?? null;
  const modelBytes = snap ? snap.models.reduce((a, m) => a + (m.memory_bytes ?? 0), 0) : 0;
  const used = rss === null ? null : Math.max(rss, modelBytes);
  units.push({
    id: "memory",
    kind: "memory",
    label: "Memory",
    present: true,
    load: used === null || !hw.memory_bytes ? null : clamp01(used / hw.memory_bytes),
    detail:
      used === null
        ? `${formatBytes(hw.memory_bytes)} total`
        : `server ${formatBytes(used)} of ${formatBytes(hw.memory_bytes)}`,
  });
  return units;
}

/** A colour from cool (idle) to hot (busy); grey when unmeasured or absent. */
export function loadColor(unit: Pick<Unit, "load" | "present">): string {
  if (!unit.present) return "#3f3f46";
  if (unit.load === null) return "#64748b";
  const hue = Math.round(200 - 200 * unit.load); // 200 (blue) -> 0 (red)
  return `hsl(${hue}, 85%, ${Math.round(45 + 15 * unit.load)}%)`;
}

/** WebGL present? jsdom and some headless browsers have none; the 3D view needs it. */
export function hasWebGL(doc: Document = document): boolean {
  try {
    const canvas = doc.createElement("canvas");
    const ctx = canvas.getContext("webgl2") ?? canvas.getContext("webgl");
    return ctx !== null && ctx !== undefined;
  } catch {
    return false;
  }
}
