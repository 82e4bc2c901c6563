/** The one WebSocket to /api/ws, shared by every page. The key travels as a subprotocol
 * ("bearer.<key>") because browsers cannot set headers on a WebSocket; it reconnects with a
 * capped backoff. Started by the layout (useLiveSocket), never by pages. */
import { useEffect } from "react";
import { useAuth } from "../store/auth";
import { useLive } from "../store/live";

let socket: WebSocket | null = null;
let retry: ReturnType<typeof setTimeout> | null = null;
let attempts = 0;
let wanted = false;

export function wsUrl(loc: Location = window.location): string {
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/api/ws`;
}

export function connectLive(): void {
  wanted = true;
  if (socket && socket.readyState <= WebSocket.OPEN) return;
  const key = useAuth.getState().apiKey;
  const protocols = key ? ["impetus.v1", `bearer.${key}`] : ["impetus.v1"];
  const live = useLive.getState();
  live.setStatus("connecting");
  const ws = new WebSocket(wsUrl(), protocols);
  socket = ws;
  ws.onopen = () => {
    attempts = 0;
    useLive.getState().setStatus("open");
  };
  ws.onmessage = (ev: MessageEvent) => {
    if (typeof ev.data !== "string") return;
    try {
      useLive.getState().receive(JSON.parse(ev.data));
    } catch {
      /* not JSON: ignore */
    }
  };
  ws.onclose = () => {
    if (socket === ws) socket = null;
    useLive.getState().setStatus("closed");
    if (!wanted) return;
    const delay = Math.min(1000 * 2 ** attempts, 15_000);
    attempts += 1;
    retry = setTimeout(connectLive, delay);
  };
}

export function disconnectLive(): void {
  wanted = false;
  if (retry) clearTimeout(retry);
  retry = null;
  attempts = 0;
  const ws = socket;
  socket = null;
  ws?.close();
  useLive.getState().setStatus("idle");
}

/** Keeps the shared socket open while the component that calls it is mounted (the layout), and
 * reopens it when the key changes. */
export function useLiveSocket(enabled: boolean): void {
  const key = useAuth((s) => s.apiKey);
  useEffect(() => {
    if (!enabled) return;
    connectLive();
    return () => disconnectLive();
  }, [enabled, key]);
}
