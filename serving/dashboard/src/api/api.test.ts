import { afterEach, describe, expect, it, vi } from "vitest";
import { useAuth } from "../store/auth";
import { apiError, json, mockFetch, sse } from "../test/utils";
import { streamChat } from "./chat";
import { ApiError, api, authHeaders } from "./client";
import { sseData } from "./sse";

function stream(parts: string[]): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  return new ReadableStream({
    start(c) {
      for (const p of parts) c.enqueue(enc.encode(p));
      c.close();
    },
  });
}

async function collect(s: ReadableStream<Uint8Array>): Promise<string[]> {
  const out: string[] = [];
  for await (const d of sseData(s)) out.push(d);
  return out;
}

describe("sseData", () => {
  it("joins events split across reads, skips comments, handles CRLF and a tail without a blank line", async () => {
    expect(await collect(stream(["data: {\"a\"", ":1}\n\n: keep-alive\n\n", "data: x\r\ndata: y\r\n\r\n", "data: [DONE]"]))).toEqual([
      '{"a":1}',
      "x\ny",
      "[DONE]",
    ]);
  });
});

describe("api client", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    useAuth.setState({ apiKey: null, rejected: false });
  });

  it("sends the key as a bearer token and JSON bodies", async () => {
    useAuth.getState().signIn("imp_k");
    const fetch = mockFetch({ "POST /x": async (req: Request) => ({ auth: req.headers.get("Authorization"), body: await req.json() }) });
    expect(await api("/x", { method: "POST", body: { a: 1 } })).toEqual({ auth: "Bearer imp_k", body: { a: 1 } });
    expect(fetch).toHaveBeenCalledOnce();
    expect(authHeaders({ Authorization: "Bearer other" }).get("Authorization")).toBe("Bearer other");
  });

  it("turns the error shape into ApiError and a 401 into a sign-in request", async () => {
    mockFetch({ "/nope": apiError(404, "No collection named 'x'.", "not_found"), "/auth": apiError(401, "key required", "auth_required") });
    await expect(api("/nope")).rejects.toMatchObject({ status: 404, code: "not_found", message: "No collection named 'x'." });
    await expect(api("/auth")).rejects.toBeInstanceOf(ApiError);
    expect(useAuth.getState().rejected).toBe(true);
  });

  it("reports a non-JSON error and a network failure", async () => {
    mockFetch({ "/bad": new Response("oops", { status: 502, statusText: "Bad Gateway" }) });
    await expect(api("/bad")).rejects.toMatchObject({ status: 502, message: "502 Bad Gateway" });
    vi.stubGlobal("fetch", vi.fn().mockRejectedValue(new TypeError("failed")));
    await expect(api("/x")).rejects.toMatchObject({ status: 0, code: "network_error" });
  });

  it("returns undefined for 204", async () => {
    mockFetch({ "/empty": new Response(null, { status: 204 }) });
    expect(await api("/empty")).toBeUndefined();
  });
});

describe("streamChat", () => {
  afterEach(() => vi.unstubAllGlobals());

  it("streams text, citations, tool calls, the finish reason and usage", async () => {
    mockFetch({
      "POST /v1/chat/completions": async (req: Request) => {
        const body = await req.json();
        expect(body).toMatchObject({ stream: true, model: "m", rag_mode: true });
        return sse([
          { choices: [{ delta: { role: "assistant", content: "" } }], citations: [{ index: 1, chunk_id: "c1", source: "samples/a.md" }] },
          { choices: [{ delta: { content: "Hel" } }] },
          "not json",
          { choices: [{ delta: { content: "lo" } }] },
          { choices: [{ delta: { tool_calls: [{ index: 0, id: "t1", function: { name: "get", arguments: "{\"a\"" } }] } }] },
          { choices: [{ delta: { tool_calls: [{ index: 0, function: { arguments: ":1}" } }] }, finish_reason: "tool_calls" }] },
          { choices: [], usage: { completion_tokens: 2 } },
          "[DONE]",
        ]);
      },
    });
    const text: string[] = [];
    const onCitations = vi.fn();
    const onToolCalls = vi.fn();
    const onFinish = vi.fn();
    await streamChat({ model: "m", messages: [{ role: "user", content: "hi" }], rag_mode: true }, { onText: (t) => text.push(t), onCitations, onToolCalls, onFinish });
    expect(text.join("")).toBe("Hello");
    expect(onCitations).toHaveBeenCalledWith([{ index: 1, chunk_id: "c1", source: "samples/a.md" }]);
    expect(onToolCalls).toHaveBeenLastCalledWith([{ id: "t1", type: "function", function: { name: "get", arguments: '{"a":1}' } }]);
    expect(onFinish).toHaveBeenCalledWith("tool_calls", { completion_tokens: 2 });
  });

  it("raises an error event as ApiError", async () => {
    mockFetch({ "POST /v1/chat/completions": sse([{ choices: [{ delta: { content: "a" } }] }, { error: { message: "engine failed", code: "server_error" } }]) });
    await expect(streamChat({ model: "m", messages: [] }, {})).rejects.toMatchObject({ message: "engine failed" });
  });

  it("raises an HTTP error before the stream", async () => {
    mockFetch({ "POST /v1/chat/completions": json({ error: { message: "queue full", code: "queue_full" } }, 503) });
    await expect(streamChat({ model: "m", messages: [] }, {})).rejects.toMatchObject({ status: 503 });
  });
});
