/**
 * The 3D scene's composition without WebGL: the fiber Canvas is replaced by a plain element, so
 * react-dom renders the scene graph as unknown tags whose attributes we can read.
 */
import { render } from "@testing-library/react";
import type { ReactNode } from "react";
import { describe, expect, it, vi } from "vitest";

import MachineView from "./MachineView";
import { unitsOf, type HardwareInfo } from "./units";

const frames = vi.hoisted(() => ({ count: 0 }));
vi.mock("@react-three/fiber", () => ({
  Canvas: ({ children }: { children: ReactNode }) => <div data-testid="canvas">{children}</div>,
  useFrame: (cb: (state: unknown, delta: number) => void) => {
    frames.count += 1;
    cb({}, 0.016);
  },
}));

const HW = {
  os: "Linux",
  machine: "x86_64",
  cpu_count: 3,
  memory_bytes: 1024,
  embedding: { model: "e", backend: "mlx", configured_backend: "auto", loaded: false },
} satisfies HardwareInfo;

describe("MachineView", () => {
  it("draws one block per unit, lit by load", () => {
    const error = vi.spyOn(console, "error").mockImplementation(() => {}); // <mesh> is no DOM tag
    const units = unitsOf(HW, {
      type: "snapshot",
      seq: 1,
      ts: 1,
      process: { rss_bytes: 512, cpu_percent: 100, threads: 1, open_fds: 1 },
      models: [],
      gpu: null,
    });
    const { getByTestId } = render(<MachineView units={units} />);
    const canvas = getByTestId("canvas");
    // the floor plus one mesh per unit (3 cores, GPU, ANE, memory)
    expect(canvas.querySelectorAll("mesh")).toHaveLength(1 + units.length);
    expect(canvas.querySelectorAll("boxgeometry")).toHaveLength(units.length);
    expect(frames.count).toBeGreaterThan(0);
    error.mockRestore();
  });
});
