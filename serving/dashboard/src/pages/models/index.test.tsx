import { act, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import type { Snapshot } from "../../api/types";
import { useLive } from "../../store/live";
import { apiError, info, json, mockFetch, renderWithProviders } from "../../test/utils";
import { fromCard, idleTtlOf } from "./api";
import { formatDuration, percent } from "./format";
import ModelsPage from "./index";

const GiB = 1024 ** 3;

function registry(loaded: boolean, extra: Record<string, unknown> = {}) {
  return {
    object: "list",
    data: [
      {
        id: "smollm2-135m-instruct",
        kind: "llm",
        format: "mlx",
        size_bytes: 270 * 1024 ** 2,
        status: loaded ? "loaded" : "available",
        default: true,
        memory_bytes: loaded ? 300 * 1024 ** 2 : null,
      },
      {
        id: "bge-small-en",
        kind: "embedding",
        format: "safetensors",
        size_bytes: 130 * 1024 ** 2,
        status: "available",
        default: true,
        memory_bytes: null,
      },
      { id: "ghost", kind: "llm", format: "gguf", size_bytes: 0, status: "missing", default: false, memory_bytes: null },
    ],
    ...extra,
  };
}

function status(loaded: boolean) {
  return {
    status: "ready",
    default_model: "smollm2-135m-instruct",
    uptime_s: 12,
    models: loaded
      ? [{ model: "smollm2-135m-instruct", default: true, memory_bytes: 300 * 1024 ** 2, active_requests: 1, idle_s: 90, engine: {} }]
      : [],
    loading: [
      // a stale record for the resident model (hidden) and a failed load (shown with its reason)
      { name: "smollm2-135m-instruct", state: "loading", error: null, started_at: 1 },
      { name: "ghost", state: "failed", error: "weights missing", started_at: 1 },
    ],
    embedders: ["bge-small-en"],
    queue: { depth: 0, limit: 64, running: 0 },
    memory: { in_use_bytes: loaded ? 300 * 1024 ** 2 : 0, budget_bytes: 4 * GiB },
  };
}

function snapshot(rss: number): Snapshot {
  return {
    type: "snapshot",
    seq: 1,
    ts: 1_700_000_000,
    process: { rss_bytes: rss, cpu_percent: 50, threads: 10, open_fds: 20 },
    models: [
      {
        model: "smollm2-135m-instruct",
        running: 0,
        waiting: 0,
        tokens_per_second: null,
        ttft_ms: null,
        itl_ms: null,
        prefix_cache_hits: 0,
        prefix_cache_misses: 0,
        memory_bytes: 512 * 1024 ** 2,
      },
    ],
    gpu: null,
  };
}

beforeEach(() => useLive.getState().reset());
afterEach(() => vi.unstubAllGlobals());

describe("ModelsPage", () => {
  it("shows the registry, the memory budget and what is resident", async () => {
    mockFetch({ "/api/info": info(), "/api/models": registry(true), "/api/health/status": status(true) });
    renderWithProviders(<ModelsPage />);
    const row = await screen.findByTestId("model-row-smollm2-135m-instruct");
    expect(within(row).getByText("mlx")).toBeInTheDocument();
    expect(within(row).getByText("270 MB")).toBeInTheDocument();
    expect(within(row).getByText("loaded")).toBeInTheDocument();
    expect(within(screen.getByTestId("model-row-ghost")).getByText("missing")).toBeInTheDocument();
    expect(screen.getByText(/impetus models import/)).toBeInTheDocument();
    const meter = await screen.findByRole("meter", { name: "Model memory in use" });
    expect(meter).toHaveAttribute("aria-valuenow", "7");
    expect(screen.getByText("1 min 30 s")).toBeInTheDocument(); // idle for
    expect(screen.getByText(/Embedding models loaded: bge-small-en/)).toBeInTheDocument();
    expect(screen.getByText("models.idle_ttl_s")).toBeInTheDocument(); // no TTL reported yet
    const resident = screen.getByRole("table", { name: "Models resident in memory" });
    expect(within(resident).queryByText("loading")).not.toBeInTheDocument();
    expect(within(resident).getByText("failed")).toBeInTheDocument();
    expect(within(resident).getByText(/weights missing/)).toBeInTheDocument();
  });

  it("unloads a model as admin and refreshes the registry", async () => {
    let loaded = true;
    const fetch = mockFetch({
      "/api/info": info(),
      "/api/models": () => registry(loaded),
      "/api/health/status": () => status(loaded),
      "POST /api/models/unload": async (req: Request) => {
        expect(await req.json()).toEqual({ model: "smollm2-135m-instruct" });
        loaded = false;
        return { model: "smollm2-135m-instruct", kind: "llm", status: "unloaded", memory_in_use_bytes: 0 };
      },
      "POST /api/models/load": () => {
        loaded = true;
        return json({ model: "smollm2-135m-instruct", kind: "llm", status: "loaded", seconds: 1, memory_in_use_bytes: 1, memory_budget_bytes: 2 });
      },
    });
    renderWithProviders(<ModelsPage />);
    await userEvent.click(await screen.findByRole("button", { name: "Unload smollm2-135m-instruct" }));
    const load = await screen.findByRole("button", { name: "Load smollm2-135m-instruct" });
    expect(fetch.mock.calls.some(([u, i]) => String(u).endsWith("/api/models/unload") && i?.method === "POST")).toBe(true);
    await waitFor(() =>
      expect(within(screen.getByTestId("model-row-smollm2-135m-instruct")).getByText("available")).toBeInTheDocument(),
    );
    await userEvent.click(load);
    expect(await screen.findByRole("button", { name: "Unload smollm2-135m-instruct" })).toBeInTheDocument();
  });

  it("explains a failed load with what to do next", async () => {
    mockFetch({
      "/api/info": info(),
      "/api/models": registry(false),
      "/api/health/status": status(false),
      "POST /api/models/load": apiError(507, "Model needs 9 GB, the budget is 4 GB.", "insufficient_memory"),
    });
    renderWithProviders(<ModelsPage />);
    await userEvent.click(await screen.findByRole("button", { name: "Load smollm2-135m-instruct" }));
    const alert = await screen.findByRole("alert");
    expect(alert).toHaveTextContent("Not enough memory");
    expect(alert).toHaveTextContent("Model needs 9 GB");
    expect(alert).toHaveTextContent("Unload a model");
  });

  it("hides load and unload from a readonly key", async () => {
    mockFetch({
      "/api/info": info({ auth_enabled: true, role: "readonly", key_name: "viewer" }),
      "/api/models": registry(true),
      "/api/health/status": status(true),
    });
    renderWithProviders(<ModelsPage />);
    await screen.findByTestId("model-row-smollm2-135m-instruct");
    expect(await screen.findByText(/needs an admin key/)).toBeInTheDocument();
    expect(screen.queryByRole("button", { name: /load/i })).not.toBeInTheDocument();
    expect(screen.queryByRole("columnheader", { name: "Action" })).not.toBeInTheDocument();
  });

  it("falls back to /v1/models on a server without /api/models, and shows the TTL when reported", async () => {
    mockFetch({
      "/api/info": info(),
      "/v1/models": {
        object: "list",
        data: [{ id: "smollm2-135m-instruct", object: "model", kind: "llm", status: "ready", loaded: false }],
      },
      "/api/health/status": { ...status(false), memory: { in_use_bytes: 0, budget_bytes: GiB, idle_ttl_s: 1800 } },
    });
    renderWithProviders(<ModelsPage />);
    const row = await screen.findByTestId("model-row-smollm2-135m-instruct");
    expect(within(row).getByText("available")).toBeInTheDocument();
    expect(await screen.findByText("unloaded after 30 min idle")).toBeInTheDocument();
  });

  it("shows live memory from the snapshots and refetches on model events", async () => {
    const fetch = mockFetch({ "/api/info": info(), "/api/models": registry(true), "/api/health/status": status(true) });
    renderWithProviders(<ModelsPage />);
    await screen.findByTestId("model-row-smollm2-135m-instruct");
    expect(screen.getByTestId("live-rss")).toHaveTextContent("not connected");
    act(() => useLive.getState().receive(snapshot(800 * 1024 ** 2)));
    await waitFor(() => expect(screen.getByTestId("live-rss")).toHaveTextContent("800 MB"));
    expect(screen.getByText("512 MB")).toBeInTheDocument(); // the model's live memory
    const before = fetch.mock.calls.filter(([u]) => String(u).endsWith("/api/models")).length;
    act(() => useLive.getState().receive({ type: "event", event: "model.unloaded", ts: 1, data: { model: "x" } }));
    await waitFor(() =>
      expect(fetch.mock.calls.filter(([u]) => String(u).endsWith("/api/models")).length).toBeGreaterThan(before),
    );
  });

  it("shows a registry error with a retry", async () => {
    mockFetch({ "/api/info": info(), "/api/models": apiError(500, "boom", "internal"), "/api/health/status": apiError(500, "down") });
    renderWithProviders(<ModelsPage />);
    const alerts = await screen.findAllByRole("alert");
    expect(alerts.length).toBe(2);
    expect(alerts[0]).toHaveTextContent("Server error");
  });
});

describe("models helpers", () => {
  it("formats durations and percentages", () => {
    expect(formatDuration(90)).toBe("1 min 30 s");
    expect(formatDuration(1800)).toBe("30 min");
    expect(formatDuration(3660)).toBe("1 h 1 min");
    expect(formatDuration(0, "never")).toBe("never");
    expect(formatDuration(null)).toBe("–");
    expect(percent(1, 4)).toBe(25);
    expect(percent(5, 0)).toBe(0);
    expect(percent(9, 4)).toBe(100);
  });

  it("maps /v1/models cards and finds the idle TTL", () => {
    expect(fromCard({ id: "a", object: "model", kind: "embedding", loaded: true }).status).toBe("loaded");
    expect(fromCard({ id: "b", object: "model", status: "missing" }).status).toBe("missing");
    expect(idleTtlOf({ data: [], idle_ttl_s: 60 })).toBe(60);
    expect(idleTtlOf({ data: [] })).toBeNull();
  });
});
