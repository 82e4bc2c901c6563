/** Chat: pick a model, stream an answer (stop button), sampling controls, and grounded answers
 * from a collection (RAG) with numbered sources that open their lineage. */
import { useCallback, useEffect, useRef, useState } from "react";
import { streamChat, type ChatMessage } from "../../api/chat";
import { ApiError } from "../../api/client";
import { useCollections, useInfo, useModels, usePermissions } from "../../api/hooks";
import type { Citation } from "../../api/types";
import { nextStep } from "../../components/ErrorPanel";
import { Button, Card, Code, EmptyState, PageHeader, SelectField, TextField } from "../../components/ui";
import { LineagePanel } from "./LineagePanel";
import { Message } from "./Message";
import { useChat } from "./store";

function Controls() {
  const { settings, setSettings } = useChat();
  const models = useModels();
  const collections = useCollections();
  const { data: info } = useInfo();
  const llms = (models.data?.data ?? []).filter((m) => (m.kind ?? "llm") === "llm" && m.status !== "missing");
  const names = (collections.data?.data ?? []).map((c) => c.name);
  // The field's text, so that it can be emptied while typing; the setting takes valid numbers.
  const [maxDraft, setMaxDraft] = useState(String(settings.maxTokens));

  // Default picks once the lists arrive: the server's default model and collection.
  useEffect(() => {
    if (!settings.model && llms.length) {
      const preferred = llms.find((m) => m.id === info?.default_model) ?? llms[0];
      if (preferred) setSettings({ model: preferred.id });
    }
  }, [llms, settings.model, info?.default_model, setSettings]);
  useEffect(() => {
    if (!settings.collection && (names.length || info?.default_collection)) {
      setSettings({ collection: info?.default_collection && (names.includes(info.default_collection) || !names.length) ? info.default_collection : names[0] ?? "" });
    }
  }, [names, settings.collection, info?.default_collection, setSettings]);

  const collectionOptions = names.length ? names : settings.collection ? [settings.collection] : [];
  return (
    <Card title="Settings" className="space-y-3">
      <div className="space-y-3">
        <SelectField
          label="Model"
          value={settings.model}
          onChange={(e) => setSettings({ model: e.target.value })}
          options={llms.length ? llms.map((m) => ({ value: m.id, label: m.loaded ? `${m.id} (loaded)` : m.id })) : [{ value: "", label: models.isLoading ? "Loading…" : "No models" }]}
        />
        <TextField
          label={`Temperature: ${settings.temperature.toFixed(2)}`}
          type="range"
          min={0}
          max={2}
          step={0.05}
          value={settings.temperature}
          onChange={(e) => setSettings({ temperature: Number(e.target.value) })}
        />
        <TextField
          label={`Top p: ${settings.topP.toFixed(2)}`}
          type="range"
          min={0.05}
          max={1}
          step={0.05}
          value={settings.topP}
          onChange={(e) => setSettings({ topP: Number(e.target.value) })}
        />
        <TextField
          label="Max tokens"
          type="number"
          min={1}
          max={8192}
          value={maxDraft}
          onChange={(e) => {
            setMaxDraft(e.target.value);
            const n = Math.floor(Number(e.target.value));
            if (n >= 1) setSettings({ maxTokens: n });
          }}
        />
        <label className="flex items-center gap-2 text-sm">
          <input type="checkbox" checked={settings.rag} onChange={(e) => setSettings({ rag: e.target.checked })} />
          Answer from a collection (RAG)
        </label>
        {settings.rag && (
          collectionOptions.length ? (
            <SelectField
              label="Collection"
              value={settings.collection}
              onChange={(e) => setSettings({ collection: e.target.value })}
              options={collectionOptions.map((n) => ({ value: n }))}
            />
          ) : (
            <p className="text-xs text-zinc-600 dark:text-zinc-400">
              No collections yet: run <Code>impetus ingest data/samples</Code> or upload files on the Knowledge page.
            </p>
          )
        )}
      </div>
    </Card>
  );
}

export default function ChatPage() {
  const { turns, settings, add, update, clear } = useChat();
  const { canUse } = usePermissions();
  const [draft, setDraft] = useState("");
  const [busy, setBusy] = useState(false);
  const [open, setOpen] = useState<Citation | null>(null);
  const abortRef = useRef<AbortController | null>(null);
  const endRef = useRef<HTMLDivElement>(null);
  const closeLineage = useCallback(() => setOpen(null), []);

  // A block body: newer Chromium's scrollIntoView returns a Promise, which React would take
  // for the effect's cleanup.
  useEffect(() => {
    void endRef.current?.scrollIntoView?.({ block: "end" });
  }, [turns]);
  useEffect(() => () => abortRef.current?.abort(), []);

  async function send() {
    const text = draft.trim();
    if (!text || busy || !settings.model) return;
    const history: ChatMessage[] = turns
      .filter((t) => !t.error && t.content)
      .map((t) => ({ role: t.role, content: t.content }));
    add({ role: "user", content: text });
    const id = add({ role: "assistant", content: "", streaming: true });
    setDraft("");
    setBusy(true);
    const controller = new AbortController();
    abortRef.current = controller;
    try {
      await streamChat(
        {
          model: settings.model,
          messages: [...history, { role: "user", content: text }],
          temperature: settings.temperature,
          top_p: settings.topP,
          max_tokens: settings.maxTokens,
          ...(settings.rag ? { rag_mode: true, rag_collection: settings.collection || undefined } : {}),
        },
        {
          onText: (delta) => update(id, (t) => ({ content: t.content + delta })),
          onCitations: (citations) => update(id, { citations }),
          onToolCalls: (toolCalls) => update(id, { toolCalls }),
          onFinish: (finishReason) => update(id, { finishReason }),
        },
        controller.signal,
      );
    } catch (err) {
      if (err instanceof DOMException && err.name === "AbortError") update(id, { finishReason: "stopped" });
      else {
        const { hint } = nextStep(err);
        update(id, { error: `${err instanceof ApiError ? err.message : String(err)} — ${hint.replace(/`/g, "")}` });
      }
    } finally {
      update(id, { streaming: false });
      abortRef.current = null;
      setBusy(false);
    }
  }

  return (
    <div className="flex h-full flex-col">
      <PageHeader
        title="Chat"
        description="Talk to a local model; turn on RAG to answer from your documents with sources."
        actions={
          turns.length ? (
            <Button variant="ghost" onClick={clear} disabled={busy}>
              New chat
            </Button>
          ) : null
        }
      />
      <div className="grid min-h-0 flex-1 gap-4 lg:grid-cols-[1fr_16rem]">
        <div className="flex min-h-[24rem] flex-col gap-3">
          <div className="flex-1 space-y-3 overflow-y-auto" aria-live="polite" aria-label="Conversation">
            {turns.length === 0 ? (
              <EmptyState title="Ask something to start">
                Answers stream as the model writes them. With RAG on, they cite your documents: add some with{" "}
                <Code>impetus ingest PATH</Code> or an upload on the Knowledge page.
              </EmptyState>
            ) : (
              turns.map((t) => <Message key={t.id} turn={t} onOpenCitation={setOpen} />)
            )}
            <div ref={endRef} />
          </div>
          {canUse ? (
            <form
              className="flex flex-col gap-2 sm:flex-row sm:items-end"
              onSubmit={(e) => {
                e.preventDefault();
                void send();
              }}
            >
              <div className="flex-1">
                <label htmlFor="chat-input" className="sr-only">
                  Message
                </label>
                <textarea
                  id="chat-input"
                  rows={2}
                  value={draft}
                  onChange={(e) => setDraft(e.target.value)}
                  onKeyDown={(e) => {
                    if (e.key === "Enter" && !e.shiftKey) {
                      e.preventDefault();
                      void send();
                    }
                  }}
                  placeholder="Message (Enter sends, Shift+Enter for a new line)"
                  className="w-full resize-y rounded-md border border-zinc-300 bg-white px-3 py-2 text-sm dark:border-zinc-700 dark:bg-zinc-900"
                />
              </div>
              {busy ? (
                <Button variant="danger" onClick={() => abortRef.current?.abort()}>
                  Stop
                </Button>
              ) : (
                <Button type="submit" variant="primary" disabled={!draft.trim() || !settings.model}>
                  Send
                </Button>
              )}
            </form>
          ) : (
            <p className="text-sm text-zinc-600 dark:text-zinc-400">Your key is read-only: chatting needs a key with the user or admin role.</p>
          )}
        </div>
        <Controls />
      </div>
      {open && <LineagePanel citation={open} onClose={closeLineage} />}
    </div>
  );
}
