/** Test helpers (unit/component tests only; e2e tests use the real server):
 * - mockFetch(routes): replaces global fetch; `routes` maps "METHOD /path" (or "/path" for any
 *   method; query strings are ignored unless the key has one) to a JSON body, a Response, or a
 *   function (req) => body | Response. Unmatched requests get a 404 in the API's error shape.
 *   Returns the vi.fn so tests can inspect calls.
 * - json(body, status): a JSON Response.  sse(events): a text/event-stream Response.
 * - MockWebSocket / installMockWebSocket(): a fake WebSocket whose instances tests drive with
 *   `ws.open()`, `ws.emit(obj)`, `ws.close()`.
 * - renderWithProviders(ui): renders inside a fresh QueryClientProvider.
 * - renderRoute(path): renders the whole app (layout, router, lazy page) at `path`. */
import type { ReactElement } from "react";
import { render } from "@testing-library/react";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { RouterProvider, createMemoryHistory } from "@tanstack/react-router";
import { vi } from "vitest";
import { makeRouter } from "../router";

export function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

export function apiError(status: number, message: string, code = "invalid_request"): Response {
  return json({ error: { message, type: "invalid_request_error", param: null, code } }, status);
}

export function sse(events: (object | string)[]): Response {
  const text = events.map((e) => `data: ${typeof e === "string" ? e : JSON.stringify(e)}\n\n`).join("");
  return new Response(text, { status: 200, headers: { "Content-Type": "text/event-stream" } });
}

export type Handler = unknown | ((req: Request) => unknown | Promise<unknown>);

export function mockFetch(routes: Record<string, Handler>) {
  const fn = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const req = new Request(new URL(String(input instanceof Request ? input.url : input), "http://localhost"), init);
    const url = new URL(req.url);
    const candidates = [`${req.method} ${url.pathname}${url.search}`, `${req.method} ${url.pathname}`, `${url.pathname}${url.search}`, url.pathname];
    const key = candidates.find((k) => k in routes);
    if (!key) return apiError(404, `no mock for ${req.method} ${url.pathname}`);
    const handler = routes[key];
    const out = typeof handler === "function" ? await (handler as (r: Request) => unknown)(req) : handler;
    return out instanceof Response ? out : json(out);
  });
  vi.stubGlobal("fetch", fn);
  return fn;
}

export class MockWebSocket {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;
  static instances: MockWebSocket[] = [];
  readonly url: string;
  readonly protocols: string[];
  readyState = 0;
  onopen: ((ev: Event) => void) | null = null;
  onmessage: ((ev: MessageEvent) => void) | null = null;
  onclose: ((ev: CloseEvent) => void) | null = null;
  onerror: ((ev: Event) => void) | null = null;

  constructor(url: string, protocols?: string | string[]) {
    this.url = url;
    this.protocols = protocols === undefined ? [] : Array.isArray(protocols) ? protocols : [protocols];
    MockWebSocket.instances.push(this);
  }
  open(): void {
    this.readyState = 1;
    this.onopen?.(new Event("open"));
  }
  emit(message: unknown): void {
    this.onmessage?.(new MessageEvent("message", { data: typeof message === "string" ? message : JSON.stringify(message) }));
  }
  send(): void {}
  close(): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.(new CloseEvent("close"));
  }
  static last(): MockWebSocket | undefined {
    return MockWebSocket.instances[MockWebSocket.instances.length - 1];
  }
}

export function installMockWebSocket(): typeof MockWebSocket {
  MockWebSocket.instances = [];
  vi.stubGlobal("WebSocket", MockWebSocket);
  return MockWebSocket;
}

export function testQueryClient(): QueryClient {
  return new QueryClient({ defaultOptions: { queries: { retry: false }, mutations: { retry: false } } });
}

export function renderWithProviders(ui: ReactElement, queryClient = testQueryClient()) {
  return { queryClient, ...render(<QueryClientProvider client={queryClient}>{ui}</QueryClientProvider>) };
}

export function renderRoute(path: string, queryClient = testQueryClient()) {
  const router = makeRouter(queryClient, createMemoryHistory({ initialEntries: [path] }));
  return {
    router,
    queryClient,
    ...render(
      <QueryClientProvider client={queryClient}>
        <RouterProvider router={router} />
      </QueryClientProvider>,
    ),
  };
}

/** /api/info for an open server (auth off) unless overridden. */
export function info(over: Record<string, unknown> = {}) {
  return {
    version: "0.test",
    auth_enabled: false,
    role: null,
    key_name: null,
    prefect_ui_url: "http://127.0.0.1:4200",
    mlflow_ui_url: null,
    default_model: "smollm2-135m-instruct",
    default_collection: "default",
    ...over,
  };
}
