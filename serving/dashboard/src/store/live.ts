/** Live state from the server's WebSocket (/api/ws): the last MAX_SNAPSHOTS snapshots (one a
 * second: two minutes of charts) and the last MAX_EVENTS events. Fed by ONE shared socket
 * (live/socket.ts); pages only read, e.g. `useLive((s) => s.snapshots)`. */
import { create } from "zustand";
import type { Hello, LiveEvent, Snapshot } from "../api/types";

export const MAX_SNAPSHOTS = 120;
export const MAX_EVENTS = 200;

export type LiveStatus = "idle" | "connecting" | "open" | "closed";

export interface LiveState {
  status: LiveStatus;
  hello: Hello | null;
  snapshots: Snapshot[];
  events: LiveEvent[];
  /** Bumped on every event: a cheap dependency for effects that refetch on events. */
  eventSeq: number;
  setStatus: (status: LiveStatus) => void;
  receive: (message: unknown) => void;
  reset: () => void;
}

export const useLive = create<LiveState>((set) => ({
  status: "idle",
  hello: null,
  snapshots: [],
  events: [],
  eventSeq: 0,
  setStatus: (status) => set({ status }),
  receive: (message) => {
    if (!message || typeof message !== "object") return;
    const m = message as { type?: string };
    if (m.type === "hello") set({ hello: m as Hello });
    else if (m.type === "snapshot")
      set((s) => ({ snapshots: [...s.snapshots, m as Snapshot].slice(-MAX_SNAPSHOTS) }));
    else if (m.type === "event")
      set((s) => ({ events: [...s.events, m as LiveEvent].slice(-MAX_EVENTS), eventSeq: s.eventSeq + 1 }));
  },
  reset: () => set({ status: "idle", hello: null, snapshots: [], events: [], eventSeq: 0 }),
}));

/** The newest snapshot, or null before the first. */
export const selectLatest = (s: LiveState): Snapshot | null => s.snapshots[s.snapshots.length - 1] ?? null;
