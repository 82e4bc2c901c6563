import { act } from "@testing-library/react";
import { renderHook } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { useAuth } from "../store/auth";
import { MAX_EVENTS, MAX_SNAPSHOTS, selectLatest, useLive } from "../store/live";
import { MockWebSocket, installMockWebSocket } from "../test/utils";
import { connectLive, disconnectLive, useLiveSocket, wsUrl } from "./socket";

const snap = (seq: number) => ({ type: "snapshot", seq, ts: seq, process: { rss_bytes: 1, cpu_percent: 0, threads: 1, open_fds: 1 }, models: [], gpu: null });

describe("live store", () => {
  beforeEach(() => useLive.getState().reset());

  it("keeps the last snapshots and events and ignores junk", () => {
    const { receive } = useLive.getState();
    for (let i = 0; i < MAX_SNAPSHOTS + 5; i++) receive(snap(i));
    for (let i = 0; i < MAX_EVENTS + 3; i++) receive({ type: "event", event: "request.finished", ts: i, data: {} });
    receive({ type: "hello", role: "admin", interval_s: 1 });
    receive(null);
    receive({ type: "other" });
    const s = useLive.getState();
    expect(s.snapshots).toHaveLength(MAX_SNAPSHOTS);
    expect(s.snapshots[0]!.seq).toBe(5);
    expect(selectLatest(s)!.seq).toBe(MAX_SNAPSHOTS + 4);
    expect(s.events).toHaveLength(MAX_EVENTS);
    expect(s.eventSeq).toBe(MAX_EVENTS + 3);
    expect(s.hello?.role).toBe("admin");
    expect(selectLatest({ ...s, snapshots: [] })).toBeNull();
  });
});

describe("live socket", () => {
  beforeEach(() => {
    installMockWebSocket();
    useLive.getState().reset();
    vi.useFakeTimers();
  });
  afterEach(() => {
    disconnectLive();
    vi.useRealTimers();
    vi.unstubAllGlobals();
    useAuth.setState({ apiKey: null });
  });

  it("builds the URL from the page's location", () => {
    expect(wsUrl({ protocol: "https:", host: "h:1" } as Location)).toBe("wss://h:1/api/ws");
    expect(wsUrl({ protocol: "http:", host: "h" } as Location)).toBe("ws://h/api/ws");
  });

  it("opens one socket with the key as a subprotocol, feeds the store and reconnects", () => {
    useAuth.setState({ apiKey: "imp_abc" });
    connectLive();
    connectLive(); // still connecting: no second socket
    expect(MockWebSocket.instances).toHaveLength(1);
    const ws = MockWebSocket.last()!;
    expect(ws.protocols).toEqual(["impetus.v1", "bearer.imp_abc"]);
    ws.open();
    expect(useLive.getState().status).toBe("open");
    ws.emit(snap(1));
    ws.emit("not json");
    ws.onmessage?.(new MessageEvent("message", { data: new Blob() }));
    expect(useLive.getState().snapshots).toHaveLength(1);
    ws.close();
    expect(useLive.getState().status).toBe("closed");
    vi.advanceTimersByTime(1000);
    expect(MockWebSocket.instances).toHaveLength(2);
    expect(MockWebSocket.last()!.protocols).toEqual(["impetus.v1", "bearer.imp_abc"]);
  });

  it("stops reconnecting after disconnect, and the hook manages the lifetime", () => {
    const { unmount } = renderHook(() => useLiveSocket(true));
    const ws = MockWebSocket.last()!;
    expect(ws.protocols).toEqual(["impetus.v1"]);
    act(() => ws.open());
    unmount();
    expect(useLive.getState().status).toBe("idle");
    vi.advanceTimersByTime(20_000);
    expect(MockWebSocket.instances).toHaveLength(1);
    renderHook(() => useLiveSocket(false));
    expect(MockWebSocket.instances).toHaveLength(1);
  });
});
