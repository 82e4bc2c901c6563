/**
 * The 3D view of the machine (React Three Fiber): CPU cores as a grid of blocks, the GPU, the
 * Neural Engine and a memory bank, each lit (colour and glow) by its live load.
 *
 * Loaded on demand by HardwarePage, and only when the browser has WebGL, so three.js costs
 * nothing to the other pages nor to a browser that cannot draw it. The group turns slowly unless
 * the user asked for reduced motion.
 */

import { Canvas, useFrame } from "@react-three/fiber";
import { useRef } from "react";
import type { Group } from "three";

import { loadColor, type Unit } from "./units";

interface Placed {
  unit: Unit;
  position: [number, number, number];
  size: [number, number, number];
}

/** Where each unit sits: cores in a square grid on the left, the rest in a row on the right,
 * the whole centred on the origin so the camera and the turn stay on it. */
export function layout(units: readonly Unit[]): Placed[] {
  const cores = units.filter((u) => u.kind === "cpu");
  const side = Math.ceil(Math.sqrt(Math.max(1, cores.length)));
  const pitch = 0.7;
  const placed: Placed[] = cores.map((unit, i) => ({
    unit,
    position: [(i % side) * pitch, 0, Math.floor(i / side) * pitch - ((side - 1) * pitch) / 2],
    size: [0.55, 0.3 + 0.6 * (unit.load ?? 0), 0.55],
  }));
  let x = side * pitch + 0.4;
  for (const unit of units.filter((u) => u.kind !== "cpu")) {
    const height = unit.kind === "memory" ? 0.3 + 1.7 * (unit.load ?? 0) : 0.5;
    const width = unit.kind === "gpu" ? 1.4 : 0.8;
    placed.push({ unit, position: [x + width / 2, 0, 0], size: [width, height, 1.2] });
    x += width + 0.4;
  }
  const centre = (-0.275 + (x - 0.4)) / 2; // midpoint from the first core's left edge to the last unit's right
  return placed.map((p) => ({ ...p, position: [p.position[0] - centre, p.position[1], p.position[2]] }));
}

function Block({ p }: { p: Placed }) {
  const color = loadColor(p.unit);
  return (
    <mesh position={[p.position[0], p.size[1] / 2, p.position[2]]}>
      <boxGeometry args={p.size} />
      <meshStandardMaterial
        color={color}
        emissive={color}
        emissiveIntensity={p.unit.present ? 0.15 + 0.85 * (p.unit.load ?? 0) : 0}
        transparent={!p.unit.present}
        opacity={p.unit.present ? 1 : 0.35}
      />
    </mesh>
  );
}

function Machine({ units, spin }: { units: readonly Unit[]; spin: boolean }) {
  const group = useRef<Group>(null);
  useFrame((_, delta) => {
    if (spin && group.current) group.current.rotation.y += delta * 0.15;
  });
  return (
    <group ref={group} position={[0, -0.6, 0]}>
      <mesh rotation={[-Math.PI / 2, 0, 0]} position={[0, -0.01, 0]}>
        <planeGeometry args={[8, 4]} />
        <meshStandardMaterial color="#1f2937" />
      </mesh>
      {layout(units).map((p) => (
        <Block key={p.unit.id} p={p} />
      ))}
    </group>
  );
}

export default function MachineView({ units }: { units: readonly Unit[] }) {
  const reduced =
    typeof window !== "undefined" &&
    typeof window.matchMedia === "function" &&
    window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  return (
    <Canvas camera={{ position: [0, 3.2, 5.2], fov: 45 }} dpr={[1, 2]} frameloop="always">
      <ambientLight intensity={0.6} />
      <directionalLight position={[4, 6, 3]} intensity={1.2} />
      <Machine units={units} spin={!reduced} />
    </Canvas>
  );
}
