import { screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { info, json, mockFetch, renderWithProviders, sse } from "../../test/utils";
import ChatPage from "./index";
import { asJson } from "./Message";
import { flowRunLink } from "./LineagePanel";
import { DEFAULT_SETTINGS, useChat } from "./store";

const models = {
  object: "list",
  data: [
    { id: "smollm2-135m-instruct", object: "model", kind: "llm", status: "ready", loaded: true },
    { id: "bge-small", object: "model", kind: "embedding", status: "ready" },
  ],
};
const collections = { object: "list", data: [{ name: "default", points: 10, documents: 2, versions: [], size_bytes: null }] };
const lineage = {
  chunk_id: "c1",
  collection: "default",
  text: "Documents are split into chunks of 512 tokens.",
  source: "samples/ingestion-pipeline.html",
  document: { content_hash: "abcdef0123456789abcdef", version: 3, path: "samples/ingestion-pipeline.html" },
  pipeline_version: "p-7",
  flow_run_id: "run-42",
  flow_run_url: null,
  indexed_at: "2026-12-01T10:00:00Z",
};

function routes(extra: Record<string, unknown> = {}) {
  return mockFetch({ "/api/info": info(), "/v1/models": models, "/api/rag/collections": collections, ...extra });
}

describe("Chat page", () => {
  beforeEach(() => useChat.setState({ turns: [], settings: DEFAULT_SETTINGS }));
  afterEach(() => vi.unstubAllGlobals());

  it("streams an answer with the chosen settings", async () => {
    let sent: Record<string, unknown> = {};
    routes({
      "POST /v1/chat/completions": async (req: Request) => {
        sent = await req.json();
        return sse([{ choices: [{ delta: { content: "Red, " } }] }, { choices: [{ delta: { content: "green" }, finish_reason: "length" }] }, "[DONE]"]);
      },
    });
    renderWithProviders(<ChatPage />);
    expect(await screen.findByText("Ask something to start")).toBeInTheDocument();
    await waitFor(() => expect(screen.getByLabelText("Model")).toHaveValue("smollm2-135m-instruct"));
    expect(within(screen.getByLabelText("Model")).queryByText("bge-small")).toBeNull();
    const max = screen.getByLabelText("Max tokens");
    await userEvent.clear(max);
    await userEvent.type(max, "16");
    await userEvent.type(screen.getByLabelText("Message"), "Name colours{Enter}");
    expect(await screen.findByText("Red, green")).toBeInTheDocument();
    expect(screen.getByText(/Cut at max tokens/)).toBeInTheDocument();
    expect(sent).toMatchObject({ model: "smollm2-135m-instruct", max_tokens: 16, stream: true, temperature: 0.7, top_p: 0.9 });
    expect(sent).not.toHaveProperty("rag_mode");
    await userEvent.click(screen.getByRole("button", { name: "New chat" }));
    expect(screen.getByText("Ask something to start")).toBeInTheDocument();
  });

  it("answers from a collection and opens a citation's lineage", async () => {
    let sent: Record<string, unknown> = {};
    routes({
      "POST /v1/chat/completions": async (req: Request) => {
        sent = await req.json();
        return sse([
          { choices: [{ delta: { content: "" } }], citations: [{ index: 1, chunk_id: "c1", source: "samples/ingestion-pipeline.html", title: "Ingestion" }] },
          { choices: [{ delta: { content: "Chunks of 512 tokens [1]." }, finish_reason: "stop" }] },
          "[DONE]",
        ]);
      },
      "/api/lineage/chunks/c1": lineage,
    });
    renderWithProviders(<ChatPage />);
    await waitFor(() => expect(screen.getByLabelText("Model")).toHaveValue("smollm2-135m-instruct"));
    await userEvent.click(screen.getByLabelText("Answer from a collection (RAG)"));
    await waitFor(() => expect(screen.getByLabelText("Collection")).toHaveValue("default"));
    await userEvent.type(screen.getByLabelText("Message"), "How are documents chunked?");
    await userEvent.click(screen.getByRole("button", { name: "Send" }));
    await userEvent.click(await screen.findByRole("button", { name: /\[1\] Ingestion/ }));
    expect(sent).toMatchObject({ rag_mode: true, rag_collection: "default" });
    const panel = await screen.findByRole("dialog", { name: "Lineage of source 1" });
    expect(await within(panel).findByText(lineage.text)).toBeInTheDocument();
    expect(within(panel).getByText("p-7")).toBeInTheDocument();
    expect(within(panel).getByRole("link", { name: /run-42/ })).toHaveAttribute("href", "http://127.0.0.1:4200/runs/flow-run/run-42");
    await userEvent.keyboard("{Escape}");
    expect(screen.queryByRole("dialog")).toBeNull();
    // the inline [1] marker opens it too
    await userEvent.click(screen.getByRole("button", { name: "Source 1: Ingestion" }));
    expect(await screen.findByRole("dialog")).toBeInTheDocument();
    await userEvent.click(screen.getByRole("button", { name: "Close lineage" }));
    expect(screen.queryByRole("dialog")).toBeNull();
  });

  it("stops a stream and shows errors with what to do", async () => {
    routes({
      "POST /v1/chat/completions": (req: Request) =>
        new Promise((_, reject) => req.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")))),
    });
    renderWithProviders(<ChatPage />);
    await waitFor(() => expect(screen.getByLabelText("Model")).toHaveValue("smollm2-135m-instruct"));
    await userEvent.type(screen.getByLabelText("Message"), "long{Enter}");
    await userEvent.click(await screen.findByRole("button", { name: "Stop" }));
    expect(await screen.findByRole("button", { name: "Send" })).toBeInTheDocument();

    routes({ "POST /v1/chat/completions": json({ error: { message: "queue is full", code: "queue_full" } }, 503) });
    await userEvent.type(screen.getByLabelText("Message"), "again{Enter}");
    expect(await screen.findByText(/queue is full — Retry in a few seconds/)).toBeInTheDocument();
  });

  it("renders tool calls and JSON answers as such", async () => {
    routes({
      "POST /v1/chat/completions": sse([
        { choices: [{ delta: { content: '{"city": "Oslo"}' } }] },
        { choices: [{ delta: { tool_calls: [{ index: 0, id: "t", function: { name: "weather", arguments: '{"city":"Oslo"}' } }] }, finish_reason: "tool_calls" }] },
        "[DONE]",
      ]),
    });
    renderWithProviders(<ChatPage />);
    await waitFor(() => expect(screen.getByLabelText("Model")).toHaveValue("smollm2-135m-instruct"));
    await userEvent.type(screen.getByLabelText("Message"), "weather{Enter}");
    expect(await screen.findByLabelText("Tool call")).toHaveTextContent("Tool call: weather");
    expect(screen.getByText("JSON")).toBeInTheDocument();
    expect(screen.getAllByText(/"city": "Oslo"/).length).toBe(2);
  });

  it("tells a readonly key it cannot chat", async () => {
    mockFetch({ "/api/info": info({ auth_enabled: true, role: "readonly" }), "/v1/models": models, "/api/rag/collections": json({ error: { message: "no" } }, 403) });
    renderWithProviders(<ChatPage />);
    expect(await screen.findByText(/Your key is read-only/)).toBeInTheDocument();
    expect(screen.queryByLabelText("Message")).toBeNull();
  });

  it("helpers: JSON detection and the Prefect link", () => {
    expect(asJson("[1, 2]")).toEqual([1, 2]);
    expect(asJson("{bad}")).toBeUndefined();
    expect(asJson("plain")).toBeUndefined();
    expect(flowRunLink({ ...lineage, flow_run_url: "http://x/run" }, null)).toBe("http://x/run");
    expect(flowRunLink(lineage, null)).toBeNull();
  });
});
