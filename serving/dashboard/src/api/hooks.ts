/** TanStack Query hooks for the routes more than one page reads. Keys are the paths, so
 * `queryClient.invalidateQueries({ queryKey: ["/v1/models"] })` refreshes every reader. */
import { useQuery } from "@tanstack/react-query";
import { api } from "./client";
import type { ApiKey, Collection, DocumentRow, IndexRun, Info, ListOf, ModelCard, RequestRow, Roots } from "./types";

export const qk = {
  info: ["/api/info"] as const,
  models: ["/v1/models"] as const,
  collections: ["/api/rag/collections"] as const,
  documents: (name: string) => ["/api/rag/collections", name, "documents"] as const,
  roots: ["/api/rag/roots"] as const,
  runs: ["/api/rag/runs"] as const,
  keys: ["/api/keys"] as const,
  requests: ["/api/requests"] as const,
  healthStatus: ["/api/health/status"] as const,
  hardware: ["/api/hardware/info"] as const,
};

export function useInfo() {
  return useQuery({ queryKey: qk.info, queryFn: () => api<Info>("/api/info"), staleTime: 60_000 });
}

/** What the signed-in key may do. With auth off (role null) everything is allowed. */
export function usePermissions(): { role: Info["role"]; isAdmin: boolean; canUse: boolean; loading: boolean } {
  const { data, isLoading } = useInfo();
  const role = data?.role ?? null;
  const open = !!data && !data.auth_enabled && role === null;
  return {
    role,
    isAdmin: open || role === "admin",
    canUse: open || role === "admin" || role === "user",
    loading: isLoading,
  };
}

export function useModels() {
  return useQuery({ queryKey: qk.models, queryFn: () => api<ListOf<ModelCard>>("/v1/models") });
}

export function useCollections() {
  return useQuery({ queryKey: qk.collections, queryFn: () => api<ListOf<Collection>>("/api/rag/collections") });
}

export function useDocuments(name: string | null) {
  return useQuery({
    queryKey: qk.documents(name ?? ""),
    queryFn: () => api<ListOf<DocumentRow>>(`/api/rag/collections/${encodeURIComponent(name ?? "")}/documents`),
    enabled: !!name,
  });
}

export function useRoots(enabled = true) {
  return useQuery({ queryKey: qk.roots, queryFn: () => api<Roots>("/api/rag/roots"), enabled });
}

export function useRuns(enabled = true, refetchInterval: number | false = false) {
  return useQuery({
    queryKey: qk.runs,
    queryFn: () => api<ListOf<IndexRun>>("/api/rag/runs?limit=20"),
    enabled,
    refetchInterval,
  });
}

export function useKeys(enabled = true) {
  return useQuery({ queryKey: qk.keys, queryFn: () => api<ListOf<ApiKey>>("/api/keys"), enabled });
}

export function useRequests(limit = 200) {
  return useQuery({ queryKey: qk.requests, queryFn: () => api<ListOf<RequestRow>>(`/api/requests?limit=${limit}`) });
}

export function useHealthStatus(refetchInterval: number | false = 5_000) {
  return useQuery({
    queryKey: qk.healthStatus,
    queryFn: () => api<Record<string, unknown>>("/api/health/status"),
    refetchInterval,
  });
}

export function useHardwareInfo() {
  return useQuery({ queryKey: qk.hardware, queryFn: () => api<Record<string, unknown>>("/api/hardware/info") });
}
