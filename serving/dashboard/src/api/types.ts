/** Shapes of the server's JSON (docs/api.md, "Dashboard"). */

export interface ApiErrorBody {
  error: { message: string; type?: string; param?: string | null; code?: string | null };
}

export type Role = "admin" | "user" | "readonly";

export interface Info {
  version: string;
  auth_enabled: boolean;
  role: Role | null;
  key_name: string | null;
  prefect_ui_url: string | null;
  mlflow_ui_url: string | null;
  default_model: string | null;
  default_collection: string | null;
}

export interface ListOf<T> {
  object: "list";
  data: T[];
}

export interface ModelCard {
  id: string;
  object: "model";
  kind?: string;
  status?: string;
  loaded?: boolean;
  context_window?: number | null;
  sampling_defaults?: { temperature?: number; top_p?: number; repetition_penalty?: number };
  [extra: string]: unknown;
}

export interface Citation {
  index: number;
  chunk_id: string;
  source: string;
  title?: string | null;
  score?: number;
  snippet?: string;
}

export interface ToolCall {
  id?: string;
  type?: string;
  function: { name: string; arguments: string };
}

export interface Lineage {
  chunk_id: string;
  collection: string;
  text: string | null;
  source: string;
  document: { content_hash?: string; version?: string | number | null; path?: string; [k: string]: unknown };
  pipeline_version: string | null;
  flow_run_id: string | null;
  flow_run_url: string | null;
  indexed_at: string | null;
}

export interface CollectionVersion {
  name: string;
  created_at: string | null;
  active: boolean;
}

export interface Collection {
  name: string;
  /** The versioned collection the alias points at (runs read from lineage name this). */
  physical?: string;
  points: number;
  documents: number | null;
  versions: CollectionVersion[];
  size_bytes: number | null;
}

export interface DocumentRow {
  source: string;
  content_hash: string;
  status: "indexed" | "quarantined" | "failed" | "deleted";
  reason: string | null;
  chunks: number | null;
  updated_at: string | null;
}

export interface IndexRun {
  id: string;
  object?: string;
  flow_run_id?: string | null;
  collection: string;
  paths?: string[];
  status: "pending" | "running" | "completed" | "failed" | "cancelled" | string;
  progress?: unknown;
  summary?: { documents?: Record<string, number>; chunks_embedded?: number; [k: string]: unknown } | null;
  error?: string | null;
  created_at?: string | number | null;
  started_at?: string | number | null;
  finished_at?: string | number | null;
}

export interface Roots {
  roots: { path: string; folders: string[] }[];
}

export interface SearchHit {
  chunk_id: string;
  source: string;
  title?: string | null;
  section?: string | null;
  score: number;
  text: string;
  doc_id?: string;
}

export interface SearchResult {
  object: "list";
  collection: string;
  mode: string;
  data: SearchHit[];
}

export interface UploadedFile {
  id: string;
  object: "file";
  bytes: number;
  filename: string;
  purpose: string;
  created_at: number;
}

export interface ApiKey {
  id: string;
  name: string;
  role: Role;
  prefix: string;
  created_at: string | number | null;
  expires_at: string | number | null;
  revoked_at: string | number | null;
  last_used_at: string | number | null;
  status: string;
}

export interface RequestRow {
  id: string;
  ts: number;
  method: string;
  route: string;
  model: string | null;
  status: number;
  latency_ms: number;
  ttft_ms: number | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  key_name: string | null;
}

export interface ModelSnapshot {
  model: string;
  running: number;
  waiting: number;
  tokens_per_second: number | null;
  ttft_ms: { p50: number | null; p95: number | null } | null;
  itl_ms: { p50: number | null; p95: number | null } | null;
  prefix_cache_hits: number;
  prefix_cache_misses: number;
  memory_bytes: number | null;
}

export interface Snapshot {
  type: "snapshot";
  seq: number;
  ts: number;
  process: { rss_bytes: number; cpu_percent: number | null; threads: number; open_fds: number | null };
  models: ModelSnapshot[];
  gpu: Record<string, unknown> | null;
}

export interface LiveEvent {
  type: "event";
  event: string;
  ts: number;
  data: Record<string, unknown>;
}

export interface Hello {
  type: "hello";
  role: Role | null;
  interval_s: number;
}
