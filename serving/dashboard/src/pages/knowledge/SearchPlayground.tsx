/** Search playground: one query, dense / sparse / hybrid results side by side (POST
 * /v1/rag/search), to see what each retriever finds. */
import { useState } from "react";
import { useQueries } from "@tanstack/react-query";
import { api } from "../../api/client";
import type { SearchResult } from "../../api/types";
import { ErrorPanel } from "../../components/ErrorPanel";
import { useCollections } from "../../api/hooks";
import { Button, Card, SelectField, Spinner, TextField } from "../../components/ui";

export const MODES = ["dense", "sparse", "hybrid"] as const;

export function SearchPlayground({ collection }: { collection: string }) {
  const [draft, setDraft] = useState("");
  const [picked, setPicked] = useState<string | null>(null);
  const names = useCollections().data?.data.map((c) => c.name) ?? [];
  const current = picked ?? collection;
  const [topK, setTopK] = useState(5);
  const [submitted, setSubmitted] = useState<{ query: string; collection: string; topK: number } | null>(null);
  const results = useQueries({
    queries: MODES.map((mode) => ({
      queryKey: ["/v1/rag/search", submitted, mode],
      enabled: !!submitted,
      queryFn: () =>
        api<SearchResult>("/v1/rag/search", {
          method: "POST",
          body: { query: submitted!.query, collection: submitted!.collection, top_k: submitted!.topK, mode },
        }),
    })),
  });
  return (
    <Card title="Search playground">
      <form
        className="flex flex-col gap-2 sm:flex-row sm:items-end"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          if (draft.trim()) setSubmitted({ query: draft.trim(), collection: current, topK });
        }}
      >
        <SelectField
          className="sm:w-48"
          label="Collection"
          value={current}
          onChange={(e) => setPicked(e.target.value)}
          options={(names.includes(current) || !current ? names : [current, ...names]).map((n) => ({ value: n }))}
        />
        <TextField className="flex-1" label="Query" value={draft} onChange={(e) => setDraft(e.target.value)} placeholder="how are documents chunked?" />
        <TextField className="w-24" label="Top k" type="number" min={1} max={50} value={topK} onChange={(e) => setTopK(Math.max(1, Number(e.target.value) || 1))} />
        <Button type="submit" variant="primary" disabled={!draft.trim() || !current}>
          Search
        </Button>
      </form>
      {submitted && (
        <div className="mt-3 grid gap-3 md:grid-cols-3">
          {MODES.map((mode, i) => {
            const r = results[i]!;
            return (
              <section key={mode} aria-label={`${mode} results`} className="min-w-0">
                <h3 className="mb-1 text-sm font-semibold capitalize">{mode}</h3>
                {r.isLoading && <Spinner />}
                {r.error && <ErrorPanel error={r.error} />}
                {r.data && r.data.data.length === 0 && <p className="text-sm text-zinc-600 dark:text-zinc-400">No results.</p>}
                <ol className="space-y-2">
                  {r.data?.data.map((hit, rank) => (
                    <li key={hit.chunk_id} className="rounded border border-zinc-200 p-2 text-xs dark:border-zinc-800" data-testid={`hit-${mode}`}>
                      <p className="font-medium break-all">
                        {rank + 1}. {hit.source}
                        <span className="ml-1 font-mono text-zinc-600 dark:text-zinc-400">{hit.score.toFixed(3)}</span>
                      </p>
                      {hit.title && <p className="text-zinc-600 dark:text-zinc-400">{hit.title}</p>}
                      <p className="mt-1 line-clamp-4">{hit.text}</p>
                    </li>
                  ))}
                </ol>
              </section>
            );
          })}
        </div>
      )}
    </Card>
  );
}
