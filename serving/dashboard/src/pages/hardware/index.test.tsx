import { act, screen, waitFor } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import type { Snapshot } from "../../api/types";
import { useLive } from "../../store/live";
import { apiError, info, mockFetch, renderWithProviders } from "../../test/utils";
import HardwarePage from "./index";
import { layout } from "./MachineView";
import { type HardwareInfo, hasWebGL, loadColor, unitsOf } from "./units";

const HW: HardwareInfo = {
  os: "Linux",
  os_version: "6.1",
  machine: "x86_64",
  chip: "AMD EPYC",
  cpu_count: 2,
  memory_bytes: 8 * 1024 ** 3,
  apple_silicon: false,
  mlx_version: "0.29.0",
  mlx_device: "cpu",
  metal_available: false,
  cuda_available: false,
  neural_engine: false,
  coreml_usable: false,
  blas: "openblas",
  embedding: { model: "bge-small-en", backend: "mlx", configured_backend: "auto", reason: "no Neural Engine", fallback: null, loaded: true },
};

function snap(cpu: number, rss: number): Snapshot {
  return {
    type: "snapshot",
    seq: 1,
    ts: 1,
    process: { rss_bytes: rss, cpu_percent: cpu, threads: 1, open_fds: 1 },
    models: [],
    gpu: null,
  };
}

// vi.mock is hoisted: the flags below switch the mocked WebGL check and 3D view per test.
const flags = vi.hoisted(() => ({ webgl: false, throws: false }));
vi.mock("./units", async (importOriginal) => {
  const mod = await importOriginal<typeof import("./units")>();
  return { ...mod, hasWebGL: () => flags.webgl };
});
vi.mock("./MachineView", async (importOriginal) => {
  const mod = await importOriginal<typeof import("./MachineView")>();
  return {
    ...mod,
    default: ({ units }: { units: { id: string }[] }) => {
      if (flags.throws) throw new Error("WebGL context lost");
      return <div data-testid="canvas-stub">{units.length} units</div>;
    },
  };
});

beforeEach(() => {
  useLive.getState().reset();
  flags.webgl = false;
  flags.throws = false;
});
afterEach(() => vi.unstubAllGlobals());

describe("HardwarePage", () => {
  it("shows the machine, the embedding backend, and a clear message without WebGL", async () => {
    mockFetch({ "/api/info": info(), "/api/hardware/info": HW });
    renderWithProviders(<HardwarePage />);
    expect(await screen.findByText("AMD EPYC")).toBeInTheDocument();
    expect(screen.getByText("0.29.0 on cpu")).toBeInTheDocument();
    expect(screen.getByText("openblas")).toBeInTheDocument();
    expect(screen.getByTestId("embedding-backend")).toHaveTextContent("mlx (loaded)");
    expect(screen.getByText("no Neural Engine")).toBeInTheDocument();
    expect(screen.getByRole("note")).toHaveTextContent("The 3D view needs WebGL");
    expect(screen.getByText("Waiting for live load from the server…")).toBeInTheDocument();
    expect(screen.getByTestId("unit-gpu")).toHaveTextContent("not used (MLX runs on cpu)");
  });

  it("lights the units from the live snapshots", async () => {
    mockFetch({ "/api/info": info(), "/api/hardware/info": HW });
    renderWithProviders(<HardwarePage />);
    await screen.findByText("AMD EPYC");
    act(() => useLive.getState().receive(snap(150, 2 * 1024 ** 3)));
    await waitFor(() => expect(screen.getByTestId("unit-cpu-0")).toHaveTextContent("100 %"));
    expect(screen.getByTestId("unit-cpu-1")).toHaveTextContent("50 %");
    expect(screen.getByTestId("unit-memory")).toHaveTextContent("server 2.0 GB of 8.0 GB");
    expect(screen.getByTestId("machine-view")).toHaveAccessibleName(/CPU core 1 100 %/);
  });

  it("loads the 3D view when WebGL is there, and falls back when it fails", async () => {
    flags.webgl = true;
    mockFetch({ "/api/info": info(), "/api/hardware/info": HW });
    const { unmount } = renderWithProviders(<HardwarePage />);
    expect(await screen.findByTestId("canvas-stub")).toHaveTextContent("5 units");
    unmount();
    flags.throws = true;
    vi.spyOn(console, "error").mockImplementation(() => {});
    renderWithProviders(<HardwarePage />);
    expect(await screen.findByRole("note")).toHaveTextContent("could not start it");
  });

  it("shows an error with a retry", async () => {
    mockFetch({ "/api/info": info(), "/api/hardware/info": apiError(0 + 503, "starting", "model_not_loaded") });
    renderWithProviders(<HardwarePage />);
    expect(await screen.findByRole("alert")).toHaveTextContent("still starting");
  });
});

describe("units", () => {
  const apple: HardwareInfo = {
    ...HW,
    chip: "Apple M3",
    apple_silicon: true,
    metal_available: true,
    neural_engine: true,
    coreml_usable: true,
    embedding: { ...HW.embedding, backend: "coreml" },
  };

  it("has no load before a sample, and marks absent units", () => {
    const units = unitsOf(HW, null);
    expect(units.map((u) => u.id)).toEqual(["cpu-0", "cpu-1", "gpu", "ane", "memory"]);
    expect(units.every((u) => u.load === null)).toBe(true);
    expect(units.find((u) => u.id === "ane")).toMatchObject({ present: false, detail: "not on this machine" });
    expect(units.find((u) => u.id === "memory")!.detail).toBe("8.0 GB total");
  });

  it("reads GPU load and the Neural Engine's use on Apple silicon", () => {
    const s = { ...snap(0, 1024), gpu: { utilization: 40 } };
    const units = unitsOf(apple, s);
    expect(units.find((u) => u.id === "gpu")).toMatchObject({ present: true, load: 0.4, detail: "40 %" });
    expect(units.find((u) => u.id === "ane")!.detail).toMatch(/in use by the embedding model/);
    expect(unitsOf(apple, snap(0, 1)).find((u) => u.id === "gpu")!.detail).toBe("present, no load counter");
    expect(unitsOf({ ...apple, embedding: HW.embedding }, null).find((u) => u.id === "ane")!.detail).toBe(
      "present, not in use",
    );
  });

  it("colours by load and places every unit", () => {
    expect(loadColor({ present: false, load: null })).toBe("#3f3f46");
    expect(loadColor({ present: true, load: null })).toBe("#64748b");
    expect(loadColor({ present: true, load: 0 })).toBe("hsl(200, 85%, 45%)");
    expect(loadColor({ present: true, load: 1 })).toBe("hsl(0, 85%, 60%)");
    const placed = layout(unitsOf({ ...HW, cpu_count: 4 }, snap(100, 1)));
    expect(placed).toHaveLength(7);
    expect(placed[0]!.size[1]).toBeCloseTo(0.9); // a busy core stands taller
    expect(placed[1]!.size[1]).toBeCloseTo(0.3);
  });

  it("detects WebGL from a canvas context", async () => {
    const real = await vi.importActual<typeof import("./units")>("./units");
    expect(real.hasWebGL()).toBe(false); // jsdom has none
    const doc = { createElement: () => ({ getContext: () => ({}) }) } as unknown as Document;
    expect(real.hasWebGL(doc)).toBe(true);
    const broken = { createElement: () => { throw new Error("no canvas"); } } as unknown as Document;
    expect(real.hasWebGL(broken)).toBe(false);
    expect(hasWebGL()).toBe(false); // the mocked one, per flags
  });
});
