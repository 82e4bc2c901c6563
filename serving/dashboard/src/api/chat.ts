/** Streaming chat completions: POST /v1/chat/completions with stream: true, parsed from SSE into
 * text deltas, tool-call deltas and the top-level `citations` list (first chunk, when grounded). */
import { ApiError, rawFetch } from "./client";
import { sseData } from "./sse";
import type { Citation, ToolCall } from "./types";

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string;
}

export interface ChatRequest {
  model: string;
  messages: ChatMessage[];
  temperature?: number;
  top_p?: number;
  max_tokens?: number;
  rag_mode?: boolean | "auto";
  rag_collection?: string;
}

export interface ChatStreamHandlers {
  onText?: (delta: string) => void;
  onCitations?: (citations: Citation[]) => void;
  onToolCalls?: (calls: ToolCall[]) => void;
  onFinish?: (reason: string | null, usage: Record<string, number> | null) => void;
}

interface ChunkDelta {
  content?: string | null;
  tool_calls?: { index: number; id?: string; type?: string; function?: { name?: string; arguments?: string } }[];
}

interface Chunk {
  choices?: { delta?: ChunkDelta; finish_reason?: string | null }[];
  citations?: Citation[];
  usage?: Record<string, number> | null;
  error?: { message: string; code?: string | null };
}

/** Runs one streamed completion; resolves when [DONE] arrives, rejects with ApiError on an error
 * event, and with an AbortError when `signal` aborts (the stop button). */
export async function streamChat(req: ChatRequest, handlers: ChatStreamHandlers, signal?: AbortSignal): Promise<void> {
  const res = await rawFetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ ...req, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!res.body) throw new ApiError(0, "The server sent no stream.");
  const calls: ToolCall[] = [];
  let finish: string | null = null;
  let usage: Record<string, number> | null = null;
  for await (const data of sseData(res.body)) {
    if (data === "[DONE]") break;
    let chunk: Chunk;
    try {
      chunk = JSON.parse(data) as Chunk;
    } catch {
      continue;
    }
    if (chunk.error) throw new ApiError(500, chunk.error.message, chunk.error.code ?? null);
    if (chunk.citations?.length) handlers.onCitations?.(chunk.citations);
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices ?? []) {
      const delta = choice.delta;
      if (delta?.content) handlers.onText?.(delta.content);
      for (const tc of delta?.tool_calls ?? []) {
        const call = (calls[tc.index] ??= { id: tc.id, type: tc.type ?? "function", function: { name: "", arguments: "" } });
        if (tc.id) call.id = tc.id;
        if (tc.function?.name) call.function.name += tc.function.name;
        if (tc.function?.arguments) call.function.arguments += tc.function.arguments;
      }
      if (delta?.tool_calls?.length) handlers.onToolCalls?.(calls.filter(Boolean).map((c) => ({ ...c, function: { ...c.function } })));
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  handlers.onFinish?.(finish, usage);
}
