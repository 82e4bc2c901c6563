import { act, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { useLive } from "../../store/live";
import { info, json, mockFetch, renderWithProviders } from "../../test/utils";
import KnowledgePage from "./index";
import { progressFraction, useTrackedRuns } from "./runs";

const collections = {
  object: "list",
  data: [
    {
      name: "default",
      physical: "default__abc",
      points: 42,
      documents: 3,
      size_bytes: 2048,
      versions: [
        { name: "v2", created_at: "2026-12-01T00:00:00Z", active: true },
        { name: "v1", created_at: "2026-11-01T00:00:00Z", active: false },
      ],
    },
    { name: "notes", points: 0, documents: 0, size_bytes: null, versions: [] },
  ],
};
const documents = {
  object: "list",
  data: [
    { source: "samples/a.md", content_hash: "h1", status: "indexed", reason: null, chunks: 5, updated_at: "2026-12-01T00:00:00Z" },
    { source: "samples/b.pdf", content_hash: "h2", status: "quarantined", reason: "looks like a prompt injection", chunks: 0, updated_at: null },
  ],
};
const run = (status: string, extra: Record<string, unknown> = {}) => ({
  id: "run-1234567890",
  collection: "default",
  status,
  progress: { done: 1, total: 4 },
  summary: null,
  created_at: "2026-12-03T21:00:00Z",
  ...extra,
});

function routes(extra: Record<string, unknown> = {}) {
  return mockFetch({
    "/api/info": info(),
    "/api/rag/collections": collections,
    "/api/rag/collections/default/documents": documents,
    "/api/rag/collections/notes/documents": { object: "list", data: [] },
    "/api/rag/roots": { roots: [{ path: "samples", folders: ["samples", "samples/guides"] }] },
    "/api/rag/runs": { object: "list", data: [] },
    ...extra,
  });
}

describe("Knowledge page", () => {
  beforeEach(() => {
    useTrackedRuns.setState({ runs: {} });
    useLive.getState().reset();
  });
  afterEach(() => vi.unstubAllGlobals());

  it("lists collections with versions and sizes, and a collection's documents with status", async () => {
    routes({ "/api/rag/runs": { object: "list", data: [run("completed", { id: "run-old", collection: "default__abc", created_at: 1 })] } });
    renderWithProviders(<KnowledgePage />);
    const table = await screen.findByRole("table", { name: "Collections" });
    expect(within(table).getByText("42")).toBeInTheDocument();
    expect(within(table).getByText("2.0 KB")).toBeInTheDocument();
    expect(within(table).getByText("active")).toBeInTheDocument();
    const docs = await screen.findByRole("table", { name: "Documents in default" });
    expect(within(docs).getByText("quarantined")).toBeInTheDocument();
    expect(within(docs).getByText("looks like a prompt injection")).toBeInTheDocument();
    await userEvent.click(within(table).getByRole("button", { name: "notes" }));
    expect(await screen.findByText("No documents in this collection")).toBeInTheDocument();
    const old = await screen.findByTestId("index-run");
    expect(within(old).getByText("default")).toBeInTheDocument();
  });

  it("says how to start when there are no collections", async () => {
    routes({ "/api/rag/collections": { object: "list", data: [] }, "/api/rag/roots": { roots: [] } });
    renderWithProviders(<KnowledgePage />);
    expect(await screen.findByText("No collections yet")).toBeInTheDocument();
    expect(screen.getAllByText("impetus ingest data/samples").length).toBeGreaterThan(0);
    expect(await screen.findByText("No server folders allowed")).toBeInTheDocument();
  });

  it("uploads files, indexes them, follows the run to its end and cancels", async () => {
    let uploaded: File | null = null;
    let indexBody: unknown = null;
    let polls = 0;
    routes({
      "POST /v1/files": async (req: Request) => {
        uploaded = (await req.formData()).get("file") as File;
        return { id: "file-abc", object: "file", bytes: 5, filename: "n.md", purpose: "assistants", created_at: 0 };
      },
      "POST /v1/rag/index": async (req: Request) => {
        indexBody = await req.json();
        return json(run("pending"), 202);
      },
      "GET /v1/rag/runs/run-1234567890": () => (++polls > 1 ? run("completed", { summary: { documents: { new: 1 }, chunks_embedded: 3 } }) : run("running")),
      "POST /v1/rag/runs/run-1234567890/cancel": run("cancelled"),
    });
    renderWithProviders(<KnowledgePage />);
    await screen.findByRole("table", { name: "Collections" });
    await userEvent.upload(screen.getByLabelText("Files"), new File(["# hi"], "n.md", { type: "text/markdown" }));
    await userEvent.click(screen.getByRole("button", { name: "Upload and index" }));
    const row = await screen.findByTestId("index-run");
    expect(uploaded).not.toBeNull(); // jsdom drops the file name in the Request round trip
    expect(indexBody).toEqual({ file_ids: ["file-abc"], collection: "default" });
    expect(within(row).getByText("pending")).toBeInTheDocument();
    expect(within(row).getByRole("progressbar")).toHaveAttribute("aria-valuenow", "25");
    await userEvent.click(within(row).getByRole("button", { name: /Cancel run/ }));
    expect(await within(row).findByText("cancelled")).toBeInTheDocument();
  });

  it("follows a run from WebSocket events and indexes a server folder", async () => {
    let body: unknown = null;
    routes({
      "POST /v1/rag/index": async (req: Request) => {
        body = await req.json();
        return json(run("pending", { id: "run-folder" }), 202);
      },
      "GET /v1/rag/runs/run-folder": run("running", { id: "run-folder" }),
    });
    renderWithProviders(<KnowledgePage />);
    await userEvent.click(await screen.findByRole("button", { name: "Index samples/guides" }));
    await screen.findByTestId("index-run");
    expect(body).toEqual({ paths: ["samples/guides"], collection: "default" });
    act(() => useLive.getState().receive({ type: "event", event: "index.finished", ts: 1, data: run("completed", { id: "run-folder", summary: { documents: { new: 2, changed: 0 }, chunks_embedded: 9 } }) }));
    expect(await screen.findByText("2 new; 9 chunks")).toBeInTheDocument();
  });

  it("searches dense, sparse and hybrid side by side", async () => {
    const modes: string[] = [];
    routes({
      "POST /v1/rag/search": async (req: Request) => {
        const b = (await req.json()) as { mode: string; collection: string; query: string };
        modes.push(b.mode);
        return { object: "list", collection: b.collection, mode: b.mode, data: b.mode === "sparse" ? [] : [{ chunk_id: `c-${b.mode}`, source: "samples/a.md", title: "A", score: 0.5, text: `text for ${b.mode}` }] };
      },
    });
    renderWithProviders(<KnowledgePage />);
    await screen.findByRole("table", { name: "Collections" });
    await userEvent.type(screen.getByLabelText("Query"), "chunking");
    await userEvent.click(screen.getByRole("button", { name: "Search" }));
    expect(await screen.findByText("text for dense")).toBeInTheDocument();
    expect(await screen.findByText("text for hybrid")).toBeInTheDocument();
    expect(within(screen.getByRole("region", { name: "sparse results" })).getByText("No results.")).toBeInTheDocument();
    expect(modes.sort()).toEqual(["dense", "hybrid", "sparse"]);
  });

  it("shows a readonly key no admin action and no search", async () => {
    mockFetch({ "/api/info": info({ auth_enabled: true, role: "readonly" }) });
    renderWithProviders(<KnowledgePage />);
    expect(await screen.findByText("Your key is read-only")).toBeInTheDocument();
    expect(screen.queryByText("Add documents")).toBeNull();
    expect(screen.queryByText("Index runs")).toBeNull();
  });

  it("reads progress in its several shapes", () => {
    expect(progressFraction(0.5)).toBe(0.5);
    expect(progressFraction(50)).toBe(0.5);
    expect(progressFraction({ fraction: 0.2 })).toBe(0.2);
    expect(progressFraction({ processed: 3, documents: 6 })).toBe(0.5);
    expect(progressFraction(null)).toBeNull();
    expect(progressFraction({ parse: { done: 4, total: 4 }, embed: { done: 1, total: 2 } })).toBe(0.5);
  });
});
