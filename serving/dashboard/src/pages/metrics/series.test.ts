import { describe, expect, it } from "vitest";

import type { RequestRow, Snapshot } from "../../api/types";
import { filterRows, formatMs, formatTokens, mergeRows, rowsFromEvents } from "./requests";
import { ALL_MODELS, headline, modelsIn, toSeries } from "./series";

function snap(seq: number, models: Partial<Snapshot["models"][number]>[], rss = 100 * 1024 * 1024): Snapshot {
  return {
    type: "snapshot",
    seq,
    ts: 1000 + seq,
    process: { rss_bytes: rss, cpu_percent: 12.4, threads: 4, open_fds: 9 },
    models: models.map((m) => ({
      model: "a",
      running: 0,
      waiting: 0,
      tokens_per_second: null,
      ttft_ms: null,
      itl_ms: null,
      prefix_cache_hits: 0,
      prefix_cache_misses: 0,
      memory_bytes: null,
      ...m,
    })),
    gpu: null,
  };
}

describe("series", () => {
  const snaps = [
    snap(1, [{ model: "a" }]),
    snap(2, [
      { model: "a", tokens_per_second: 10.04, running: 1, ttft_ms: { p50: 100, p95: 200 }, itl_ms: { p50: 20, p95: 30 } },
      { model: "b", tokens_per_second: 5, waiting: 2, ttft_ms: { p50: 300, p95: null }, itl_ms: null },
    ]),
  ];

  it("sums rates and queues over all models and keeps the worst percentile", () => {
    const s = toSeries(snaps, ALL_MODELS);
    expect(s).toHaveLength(2);
    expect(s[0]).toMatchObject({ t: 0, tps: 0, ttft50: null, running: 0, rssMiB: 100, cpu: 12 });
    expect(s[1]).toMatchObject({ t: 1, tps: 15, ttft50: 300, ttft95: 200, itl50: 20, itl95: 30, running: 1, waiting: 2 });
  });

  it("picks one model and limits the window", () => {
    const s = toSeries(snaps, "b", 1);
    expect(s).toHaveLength(1);
    expect(s[0]).toMatchObject({ t: 0, tps: 5, waiting: 2, running: 0, itl50: null });
    expect(toSeries([], ALL_MODELS)).toEqual([]);
  });

  it("lists models and headline figures", () => {
    expect(modelsIn(snaps)).toEqual(["a", "b"]);
    const h = headline(toSeries(snaps, ALL_MODELS));
    expect(h).toEqual({ tps: 15, peakTps: 15, running: 1, waiting: 2, ttft95: 200, rssMiB: 100 });
    expect(headline([])).toEqual({ tps: 0, peakTps: 0, running: 0, waiting: 0, ttft95: null, rssMiB: null });
  });
});

function row(id: string, over: Partial<RequestRow> = {}): RequestRow {
  return {
    id,
    ts: 1000,
    method: "POST",
    route: "/v1/chat/completions",
    model: "smollm2",
    status: 200,
    latency_ms: 1234,
    ttft_ms: 80,
    prompt_tokens: 12,
    completion_tokens: 8,
    key_name: "laptop",
    ...over,
  };
}

describe("requests", () => {
  it("merges live and fetched rows once each, newest first", () => {
    const merged = mergeRows([row("b", { ts: 3 }), row("a", { ts: 1 })], [row("a", { ts: 1 }), row("c", { ts: 2 })], 10);
    expect(merged.map((r) => r.id)).toEqual(["b", "c", "a"]);
    expect(mergeRows([row("x"), row("y")], [], 1)).toHaveLength(1);
  });

  it("filters by words and status class", () => {
    const rows = [
      row("1"),
      row("2", { status: 404, route: "/v1/models/x", method: "GET", model: null, key_name: null }),
      row("3", { status: 503, key_name: "ci" }),
    ];
    expect(filterRows(rows, { text: "", status: "all" })).toHaveLength(3);
    expect(filterRows(rows, { text: "", status: "4xx" }).map((r) => r.id)).toEqual(["2"]);
    expect(filterRows(rows, { text: "", status: "5xx" }).map((r) => r.id)).toEqual(["3"]);
    expect(filterRows(rows, { text: "", status: "2xx" }).map((r) => r.id)).toEqual(["1"]);
    expect(filterRows(rows, { text: "CHAT laptop", status: "all" }).map((r) => r.id)).toEqual(["1"]);
    expect(filterRows(rows, { text: "get 404", status: "all" }).map((r) => r.id)).toEqual(["2"]);
    const poll = row("4", { method: "GET", route: "/api/health/status" });
    expect(filterRows([poll], { text: "", status: "all" })).toEqual([]);
    expect(filterRows([poll], { text: "", status: "all", includeDashboard: true })).toEqual([poll]);
  });

  it("reads request.finished events and formats cells", () => {
    const rows = rowsFromEvents([
      { event: "request.finished", data: row("e") },
      { event: "model.loaded", data: { model: "x" } },
      { event: "request.finished", data: { nope: true } },
    ]);
    expect(rows.map((r) => r.id)).toEqual(["e"]);
    expect(formatTokens(row("t"))).toBe("12 → 8");
    expect(formatTokens(row("t", { prompt_tokens: null, completion_tokens: null }))).toBe("–");
    expect(formatTokens(row("t", { completion_tokens: null }))).toBe("12 → ?");
    expect(formatMs(1234)).toBe("1.23 s");
    expect(formatMs(80.4)).toBe("80 ms");
    expect(formatMs(null)).toBe("–");
  });
});
