/**
 * The Models page's server state: the registry (GET /api/models, or /v1/models on a server
 * without it), the memory status (GET /api/health/status) and the load/unload mutations.
 *
 * Both queries refetch when the live stream reports a model loaded, unloaded or evicted, so the
 * page follows changes made elsewhere (the CLI, another tab, the idle TTL) without polling hard.
 */
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect } from "react";

import { ApiError, api } from "../../api/client";
import { qk } from "../../api/hooks";
import type { ListOf, ModelCard } from "../../api/types";
import { useLive } from "../../store/live";

export type ModelStatus = "loaded" | "available" | "importable" | "missing" | string;

export interface RegistryModel {
  id: string;
  kind: string;
  format: string | null;
  size_bytes: number | null;
  status: ModelStatus;
  default: boolean;
  memory_bytes: number | null;
}

export interface Registry {
  data: RegistryModel[];
  /** seconds a model may stay idle before it is unloaded; 0 never; undefined: not reported */
  idle_ttl_s?: number | null;
}

export interface ResidentModel {
  model: string;
  default: boolean;
  memory_bytes: number;
  active_requests: number;
  idle_s: number;
}

export interface LoadingModel {
  name: string;
  state: string;
  error: string | null;
  started_at: number;
}

export interface ServerStatus {
  status: "ready" | "starting";
  default_model: string | null;
  uptime_s: number;
  models: ResidentModel[];
  loading: LoadingModel[];
  embedders: string[];
  queue: { depth: number; limit: number; running: number };
  memory: { in_use_bytes: number; budget_bytes: number; idle_ttl_s?: number | null };
  idle_ttl_s?: number | null;
}

export const registryKey = ["/api/models"] as const;

/** A /v1/models card in the registry's shape (no format or size: that route lacks them). */
export function fromCard(card: ModelCard): RegistryModel {
  return {
    id: card.id,
    kind: card.kind ?? "llm",
    format: null,
    size_bytes: null,
    status: card.loaded ? "loaded" : card.status === "ready" || !card.status ? "available" : card.status,
    default: false,
    memory_bytes: null,
  };
}

async function fetchRegistry(): Promise<Registry> {
  try {
    return await api<Registry>("/api/models");
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
    const cards = await api<ListOf<ModelCard>>("/v1/models");
    return { data: cards.data.map(fromCard) };
  }
}

export function useRegistry() {
  return useQuery({ queryKey: registryKey, queryFn: fetchRegistry });
}

export function useServerStatus() {
  return useQuery({
    queryKey: qk.healthStatus,
    queryFn: () => api<ServerStatus>("/api/health/status"),
    refetchInterval: 5_000,
  });
}

/** Refetch the registry and the status when a model.* event arrives on the live stream. */
export function useRefreshOnModelEvents(): void {
  const qc = useQueryClient();
  const last = useLive((s) => s.events[s.events.length - 1]);
  useEffect(() => {
    if (last && last.event.startsWith("model.")) {
      void qc.invalidateQueries({ queryKey: registryKey });
      void qc.invalidateQueries({ queryKey: qk.healthStatus });
      void qc.invalidateQueries({ queryKey: qk.models });
    }
  }, [last, qc]);
}

export type Action = "load" | "unload";

/** POST /api/models/load|unload, then refresh everything that shows models. */
export function useModelAction() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: ({ action, model }: { action: Action; model: string }) =>
      api<Record<string, unknown>>(`/api/models/${action}`, { method: "POST", body: { model } }),
    onSettled: () =>
      Promise.all([
        qc.invalidateQueries({ queryKey: registryKey }),
        qc.invalidateQueries({ queryKey: qk.healthStatus }),
        qc.invalidateQueries({ queryKey: qk.models }),
      ]),
  });
}

/** The idle TTL from whichever route reports it (/api/health/status reports it under "memory"). */
export function idleTtlOf(registry?: Registry, status?: ServerStatus): number | null {
  const v = registry?.idle_ttl_s ?? status?.idle_ttl_s ?? status?.memory.idle_ttl_s;
  return typeof v === "number" ? v : null;
}
