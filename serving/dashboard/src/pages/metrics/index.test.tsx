import { act, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { cloneElement, type ReactElement } from "react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import type { RequestRow, Snapshot } from "../../api/types";
import { useLive } from "../../store/live";
import { apiError, info, mockFetch, renderWithProviders } from "../../test/utils";
import Charts, { CHARTS } from "./Charts";
import MetricsPage from "./index";
import { toSeries } from "./series";

// jsdom has no layout: give the responsive container a fixed size.
vi.mock("recharts", async (importOriginal) => {
  const mod = await importOriginal<typeof import("recharts")>();
  return {
    ...mod,
    ResponsiveContainer: ({ children }: { children: ReactElement<{ width?: number; height?: number }> }) => (
      <div>{cloneElement(children, { width: 400, height: 180 })}</div>
    ),
  };
});

function snap(seq: number, tps: number | null, running = 0): Snapshot {
  return {
    type: "snapshot",
    seq,
    ts: 1_700_000_000 + seq,
    process: { rss_bytes: 256 * 1024 * 1024, cpu_percent: 80, threads: 8, open_fds: 30 },
    models: [
      {
        model: "smollm2-135m-instruct",
        running,
        waiting: 0,
        tokens_per_second: tps,
        ttft_ms: { p50: 120, p95: 250 },
        itl_ms: { p50: 40, p95: 60 },
        prefix_cache_hits: 0,
        prefix_cache_misses: 1,
        memory_bytes: 300 * 1024 * 1024,
      },
    ],
    gpu: null,
  };
}

function row(id: string, over: Partial<RequestRow> = {}): RequestRow {
  return {
    id,
    ts: 1_700_000_000,
    method: "POST",
    route: "/v1/chat/completions",
    model: "smollm2-135m-instruct",
    status: 200,
    latency_ms: 2100,
    ttft_ms: 150,
    prompt_tokens: 20,
    completion_tokens: 8,
    key_name: "laptop",
    ...over,
  };
}

beforeEach(() => useLive.getState().reset());
afterEach(() => vi.unstubAllGlobals());

describe("MetricsPage", () => {
  it("waits for the first sample, then draws the charts and tiles as snapshots arrive", async () => {
    mockFetch({ "/api/info": info(), "/api/requests": { object: "list", data: [] } });
    renderWithProviders(<MetricsPage />);
    expect(screen.getByText("Waiting for the first sample.")).toBeInTheDocument();
    expect(screen.getByText(/Stream: not connected/)).toBeInTheDocument();
    act(() => {
      useLive.getState().setStatus("open");
      useLive.getState().receive(snap(1, 0));
      useLive.getState().receive(snap(2, 12.5, 1));
    });
    const tps = await screen.findByTestId("chart-tps");
    expect(tps).toHaveAttribute("data-last", "12.5");
    expect(tps).toHaveAttribute("data-points", "2");
    expect(screen.getAllByRole("figure")).toHaveLength(CHARTS.length);
    expect(screen.getByTestId("stat-tps")).toHaveTextContent("12.5");
    expect(screen.getByTestId("stat-running")).toHaveTextContent("1");
    expect(screen.getByTestId("stat-ttft95")).toHaveTextContent("250 ms");
    expect(screen.getByTestId("stat-rss")).toHaveTextContent("256 MiB");
    expect(screen.getByText(/Stream: live/)).toBeInTheDocument();
    act(() => useLive.getState().receive(snap(3, 3)));
    await waitFor(() => expect(screen.getByTestId("chart-tps")).toHaveAttribute("data-points", "3"));
    expect(screen.getByTestId("stat-peak-tps")).toHaveTextContent("12.5");
    // one model's view
    await userEvent.selectOptions(screen.getByLabelText("Model"), "smollm2-135m-instruct");
    expect(screen.getByTestId("stat-tps")).toHaveTextContent("3.0");
  }, 20_000);

  it("lists recent and live requests and filters them", async () => {
    mockFetch({
      "/api/info": info(),
      "/api/requests": {
        object: "list",
        data: [row("r1"), row("r2", { status: 404, route: "/v1/models/nope", method: "GET", model: null, key_name: null })],
      },
    });
    renderWithProviders(<MetricsPage />);
    expect(await screen.findAllByTestId("request-row")).toHaveLength(2);
    act(() =>
      useLive.getState().receive({ type: "event", event: "request.finished", ts: 1, data: { ...row("r3", { ts: 1_700_000_100, status: 503, key_name: "ci" }) } }),
    );
    await waitFor(() => expect(screen.getAllByTestId("request-row")).toHaveLength(3));
    expect(within(screen.getAllByTestId("request-row")[0]!).getByText("503")).toBeInTheDocument(); // newest first
    expect(screen.getByText("3 of 3 requests")).toBeInTheDocument();

    await userEvent.type(screen.getByLabelText("Filter"), "nope");
    expect(screen.getAllByTestId("request-row")).toHaveLength(1);
    expect(screen.getByText("1 of 3 requests")).toBeInTheDocument();
    await userEvent.clear(screen.getByLabelText("Filter"));
    await userEvent.selectOptions(screen.getByLabelText("Status"), "5xx");
    expect(screen.getAllByTestId("request-row")).toHaveLength(1);
    await userEvent.type(screen.getByLabelText("Filter"), "laptop");
    expect(screen.getByText("No request matches the filter.")).toBeInTheDocument();
  });

  it("hides the dashboard's own reads until asked", async () => {
    mockFetch({
      "/api/info": info(),
      "/api/requests": { object: "list", data: [row("d1", { method: "GET", route: "/api/health/status", model: null })] },
    });
    renderWithProviders(<MetricsPage />);
    expect(await screen.findByText("No requests from clients yet.")).toBeInTheDocument();
    await userEvent.click(screen.getByLabelText(/Include the dashboard's own reads/));
    expect(screen.getAllByTestId("request-row")).toHaveLength(1);
    expect(screen.getByText("1 of 1 requests")).toBeInTheDocument();
  });

  it("says how to get requests when there are none, and shows a fetch error", async () => {
    mockFetch({ "/api/info": info(), "/api/requests": apiError(403, "not allowed", "permission_denied") });
    renderWithProviders(<MetricsPage />);
    expect(await screen.findByRole("alert")).toHaveTextContent("Not allowed");
    expect(screen.getByText("No requests yet.")).toBeInTheDocument();
  });
});

describe("Charts", () => {
  it("renders every chart at a fixed size with a text summary", () => {
    const series = toSeries([snap(1, 4), snap(2, null)], "");
    renderWithProviders(<Charts series={series} size={{ width: 300, height: 150 }} />);
    expect(screen.getByRole("img", { name: /Throughput: tok\/s 0/ })).toBeInTheDocument();
    expect(screen.getByRole("img", { name: /Time to first token: p50 120, p95 250/ })).toBeInTheDocument();
    expect(screen.getByTestId("chart-seqs")).toHaveAttribute("data-last", "0");
  });

  it("says 'no sample' for an empty series", () => {
    renderWithProviders(<Charts series={[]} size={{ width: 300, height: 150 }} />);
    expect(screen.getByRole("img", { name: /Throughput: tok\/s no sample/ })).toBeInTheDocument();
  });
});
