/** One chat turn: text with [n] markers as buttons to the sources, JSON answers pretty-printed,
 * tool calls as name + arguments, and the numbered sources. */
import type { ReactNode } from "react";
import type { Citation, ToolCall } from "../../api/types";
import { Badge, cx } from "../../components/ui";
import type { Turn } from "./store";

/** The value when the whole text is a JSON object or array, else undefined. */
export function asJson(text: string): unknown {
  const t = text.trim();
  if (!(t.startsWith("{") && t.endsWith("}")) && !(t.startsWith("[") && t.endsWith("]"))) return undefined;
  try {
    return JSON.parse(t) as unknown;
  } catch {
    return undefined;
  }
}

function prettyArgs(args: string): string {
  try {
    return JSON.stringify(JSON.parse(args), null, 2);
  } catch {
    return args;
  }
}

/** Split text on [n] markers that match a citation, so each becomes a button. */
export function linkCitations(text: string, citations: Citation[] | undefined, open: (c: Citation) => void): ReactNode[] {
  if (!citations?.length) return [text];
  const byIndex = new Map(citations.map((c) => [c.index, c]));
  return text.split(/(\[\d+\])/g).map((part, i) => {
    const m = /^\[(\d+)\]$/.exec(part);
    const c = m ? byIndex.get(Number(m[1])) : undefined;
    if (!c) return part;
    return (
      <button
        key={i}
        type="button"
        onClick={() => open(c)}
        className="mx-0.5 rounded bg-indigo-100 px-1 text-xs font-semibold text-indigo-900 hover:bg-indigo-200 dark:bg-indigo-900 dark:text-indigo-100"
        aria-label={`Source ${c.index}: ${c.title || c.source}`}
      >
        {part}
      </button>
    );
  });
}

function ToolCalls({ calls }: { calls: ToolCall[] }) {
  return (
    <div className="mt-2 space-y-2">
      {calls.map((call, i) => (
        <div key={call.id ?? i} className="rounded border border-zinc-300 p-2 dark:border-zinc-700" aria-label="Tool call">
          <p className="text-xs font-semibold">
            Tool call: <span className="font-mono">{call.function.name}</span>
          </p>
          <pre className="mt-1 overflow-x-auto font-mono text-xs">{prettyArgs(call.function.arguments)}</pre>
        </div>
      ))}
    </div>
  );
}

export function Message({ turn, onOpenCitation }: { turn: Turn; onOpenCitation: (c: Citation) => void }) {
  const mine = turn.role === "user";
  const json = !mine && !turn.streaming ? asJson(turn.content) : undefined;
  return (
    <article
      aria-label={mine ? "Your message" : "Answer"}
      className={cx(
        "max-w-3xl rounded-lg px-3 py-2 text-sm",
        mine ? "ml-auto bg-indigo-600 text-white" : "bg-white dark:bg-zinc-900 border border-zinc-200 dark:border-zinc-800",
      )}
    >
      {json !== undefined ? (
        <div>
          <Badge tone="info">JSON</Badge>
          <pre className="mt-1 overflow-x-auto font-mono text-xs">{JSON.stringify(json, null, 2)}</pre>
        </div>
      ) : (
        <p className="whitespace-pre-wrap break-words" data-testid={mine ? undefined : "answer-text"}>
          {linkCitations(turn.content, turn.citations, onOpenCitation)}
          {turn.streaming && <span className="ml-0.5 inline-block h-3 w-1.5 animate-pulse bg-current align-middle" aria-hidden />}
        </p>
      )}
      {turn.toolCalls?.length ? <ToolCalls calls={turn.toolCalls} /> : null}
      {turn.error && (
        <p role="alert" className="mt-1 text-red-700 dark:text-red-300">
          {turn.error}
        </p>
      )}
      {turn.finishReason === "length" && (
        <p className="mt-1 text-xs text-zinc-600 dark:text-zinc-400">Cut at max tokens: raise “Max tokens” for longer answers.</p>
      )}
      {turn.citations?.length ? (
        <div className="mt-2 border-t border-zinc-200 pt-2 dark:border-zinc-800">
          <p className="text-xs font-semibold">Sources</p>
          <ol className="mt-1 space-y-1">
            {turn.citations.map((c) => (
              <li key={c.chunk_id}>
                <button
                  type="button"
                  className="text-left text-xs text-indigo-700 underline hover:text-indigo-500 dark:text-indigo-300"
                  onClick={() => onOpenCitation(c)}
                >
                  [{c.index}] {c.title || c.source}
                  {c.title ? <span className="text-zinc-600 dark:text-zinc-400"> — {c.source}</span> : null}
                </button>
              </li>
            ))}
          </ol>
        </div>
      ) : null}
    </article>
  );
}
