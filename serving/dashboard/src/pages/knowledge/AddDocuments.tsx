/** Admins add documents: upload files (POST /v1/files, then POST /v1/rag/index {file_ids}), or
 * index an allowed server folder (GET /api/rag/roots, POST /v1/rag/index {paths}). */
import { useState } from "react";
import { useMutation } from "@tanstack/react-query";
import { api } from "../../api/client";
import { useRoots } from "../../api/hooks";
import type { IndexRun, UploadedFile } from "../../api/types";
import { ErrorPanel } from "../../components/ErrorPanel";
import { Button, Card, Code, EmptyState, Spinner, TextField } from "../../components/ui";
import { useTrackedRuns } from "./runs";

export async function uploadAndIndex(files: File[], collection: string): Promise<IndexRun> {
  const ids: string[] = [];
  for (const file of files) {
    const form = new FormData();
    form.append("file", file);
    form.append("purpose", "assistants");
    ids.push((await api<UploadedFile>("/v1/files", { method: "POST", body: form })).id);
  }
  return api<IndexRun>("/v1/rag/index", { method: "POST", body: { file_ids: ids, collection } });
}

export function AddDocuments({ collection, onCollection }: { collection: string; onCollection: (c: string) => void }) {
  const [files, setFiles] = useState<File[]>([]);
  const [inputKey, setInputKey] = useState(0);
  const upsert = useTrackedRuns((s) => s.upsert);
  const roots = useRoots();
  const upload = useMutation({
    mutationFn: () => uploadAndIndex(files, collection),
    onSuccess: (run) => {
      upsert(run);
      setFiles([]);
      setInputKey((k) => k + 1);
    },
  });
  const indexFolder = useMutation({
    mutationFn: (folder: string) => api<IndexRun>("/v1/rag/index", { method: "POST", body: { paths: [folder], collection } }),
    onSuccess: upsert,
  });
  const folders = (roots.data?.roots ?? []).flatMap((r) => r.folders);
  return (
    <Card title="Add documents">
      <div className="grid gap-4 md:grid-cols-2">
        <form
          className="space-y-3"
          onSubmit={(e) => {
            e.preventDefault();
            if (files.length) upload.mutate();
          }}
        >
          <TextField label="Collection" value={collection} onChange={(e) => onCollection(e.target.value)} required />
          <TextField
            key={inputKey}
            label="Files"
            type="file"
            multiple
            accept=".md,.markdown,.txt,.text,.html,.htm,.pdf,.docx"
            hint="Markdown, text, HTML, PDF or Word; up to 16 MiB each."
            onChange={(e) => setFiles(Array.from(e.target.files ?? []))}
          />
          <Button type="submit" variant="primary" disabled={!files.length || !collection || upload.isPending}>
            {upload.isPending ? "Uploading…" : "Upload and index"}
          </Button>
          {upload.error && <ErrorPanel error={upload.error} />}
        </form>
        <div>
          <h3 className="mb-1 text-xs font-medium text-zinc-700 dark:text-zinc-300">Server folders</h3>
          {roots.isLoading && <Spinner />}
          {roots.error && <ErrorPanel error={roots.error} />}
          {roots.data && folders.length === 0 && (
            <EmptyState title="No server folders allowed">
              Add folders to <Code>rag.index_roots</Code> in configs/impetus.yaml and restart.
            </EmptyState>
          )}
          <ul className="max-h-56 space-y-1 overflow-y-auto">
            {folders.map((f) => (
              <li key={f} className="flex items-center justify-between gap-2 text-sm">
                <span className="font-mono text-xs break-all">{f}</span>
                <Button onClick={() => indexFolder.mutate(f)} disabled={indexFolder.isPending || !collection} aria-label={`Index ${f}`}>
                  Index
                </Button>
              </li>
            ))}
          </ul>
          {indexFolder.error && <ErrorPanel error={indexFolder.error} />}
        </div>
      </div>
    </Card>
  );
}
