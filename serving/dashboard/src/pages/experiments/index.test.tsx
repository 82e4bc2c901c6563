import { screen, within } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";

import { apiError, info, mockFetch, renderWithProviders } from "../../test/utils";
import ExperimentsPage, { type ExperimentRun, formatMetric, groupByExperiment, keysOf } from "./index";

function run(id: string, experiment: string, over: Partial<ExperimentRun> = {}): ExperimentRun {
  return {
    run_id: id,
    experiment,
    name: `run-${id}`,
    status: "FINISHED",
    start_time: 1_700_000_000,
    params: { model: "smollm2-135m-instruct", concurrency: "4" },
    metrics: { tokens_per_second: 41.237, ttft_p95_ms: 812.5 },
    url: `http://127.0.0.1:5000/#/experiments/1/runs/${id}`,
    ...over,
  };
}

afterEach(() => vi.unstubAllGlobals());

describe("ExperimentsPage", () => {
  it("shows one table per experiment with params, metrics and MLflow links", async () => {
    mockFetch({
      "/api/info": info(),
      "/api/experiments": {
        mlflow_ui_url: "http://127.0.0.1:5000",
        data: [
          run("a1", "bench-serving"),
          run("b1", "eval-retrieval", { params: { mode: "hybrid" }, metrics: { "recall@10": 0.9, mrr: 0.71234 }, url: null, name: null, status: "FAILED" }),
          run("a2", "bench-serving", { metrics: { tokens_per_second: 40 } }),
        ],
      },
    });
    renderWithProviders(<ExperimentsPage />);
    const serving = await screen.findByRole("table", { name: "Runs of bench-serving" });
    expect(within(serving).getAllByRole("row")).toHaveLength(3); // header + 2 runs
    expect(within(serving).getByRole("columnheader", { name: "concurrency" })).toBeInTheDocument();
    expect(within(serving).getByRole("columnheader", { name: "tokens_per_second ▸" })).toBeInTheDocument();
    expect(within(serving).getByText("41.237")).toBeInTheDocument();
    expect(within(serving).getByRole("link", { name: /run-a1 in the MLflow UI/ })).toHaveAttribute(
      "href",
      "http://127.0.0.1:5000/#/experiments/1/runs/a1",
    );
    const evals = screen.getByRole("table", { name: "Runs of eval-retrieval" });
    expect(within(evals).getByText("b1")).toBeInTheDocument(); // no name: the id's start, no link
    expect(within(evals).queryByRole("link")).not.toBeInTheDocument();
    expect(within(evals).getByText("failed")).toBeInTheDocument();
    expect(screen.getByRole("link", { name: "Open the MLflow UI" })).toHaveAttribute("href", "http://127.0.0.1:5000");
  });

  it("says how to create runs when there are none", async () => {
    mockFetch({ "/api/info": info(), "/api/experiments": { mlflow_ui_url: null, data: [] } });
    renderWithProviders(<ExperimentsPage />);
    expect(await screen.findByText("No runs yet.")).toBeInTheDocument();
    expect(screen.getByText("impetus bench serving")).toBeInTheDocument();
    expect(screen.queryByRole("link", { name: "Open the MLflow UI" })).not.toBeInTheDocument();
  });

  it("without an MLflow UI address, says how to open one", async () => {
    mockFetch({ "/api/info": info(), "/api/experiments": { mlflow_ui_url: null, data: [run("a", "x", { url: null })] } });
    renderWithProviders(<ExperimentsPage />);
    expect(await screen.findByText("impetus ui mlflow")).toBeInTheDocument();
  });

  it("shows an error with what to do next", async () => {
    mockFetch({ "/api/info": info(), "/api/experiments": apiError(401, "key needed", "auth_required") });
    renderWithProviders(<ExperimentsPage />);
    expect(await screen.findByRole("alert")).toHaveTextContent("Sign-in needed");
  });
});

describe("experiment helpers", () => {
  it("groups, collects keys and formats metrics", () => {
    const runs = [run("1", "a"), run("2", "b", { params: { z: "1" } }), run("3", "a")];
    expect(groupByExperiment(runs).map(([n, rs]) => [n, rs.length])).toEqual([
      ["a", 2],
      ["b", 1],
    ]);
    expect(keysOf(runs, "params")).toEqual(["concurrency", "model", "z"]);
    expect(formatMetric(3)).toBe("3");
    expect(formatMetric(1234.56)).toBe("1234.6");
    expect(formatMetric(12.3456)).toBe("12.346");
    expect(formatMetric(0.0123456)).toBe("0.0123");
    expect(formatMetric(undefined)).toBe("–");
  });
});
