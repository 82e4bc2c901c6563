/** fetch with the signed-in key, JSON in and out, and the server's error shape turned into an
 * ApiError that the UI can explain (components/ErrorPanel). */
import { useAuth } from "../store/auth";
import type { ApiErrorBody } from "./types";

export class ApiError extends Error {
  readonly status: number;
  readonly code: string | null;
  readonly param: string | null;

  constructor(status: number, message: string, code: string | null = null, param: string | null = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

/** Headers for a request: the key as a bearer token when one is signed in. */
export function authHeaders(extra?: HeadersInit): Headers {
  const headers = new Headers(extra);
  const key = useAuth.getState().apiKey;
  if (key && !headers.has("Authorization")) headers.set("Authorization", `Bearer ${key}`);
  return headers;
}

/** Turn a non-2xx response into an ApiError (the body's message when it has the error shape). */
export async function errorFrom(res: Response): Promise<ApiError> {
  let message = `${res.status} ${res.statusText}`.trim();
  let code: string | null = null;
  let param: string | null = null;
  try {
    const body = (await res.json()) as Partial<ApiErrorBody>;
    if (body.error?.message) {
      message = body.error.message;
      code = body.error.code ?? null;
      param = body.error.param ?? null;
    }
  } catch {
    /* not JSON */
  }
  if (res.status === 401) useAuth.getState().markRejected();
  return new ApiError(res.status, message, code, param);
}

/** fetch that raises ApiError; a network failure becomes status 0. */
export async function rawFetch(path: string, init: RequestInit = {}): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(path, { ...init, headers: authHeaders(init.headers) });
  } catch (err) {
    if (err instanceof DOMException && err.name === "AbortError") throw err;
    throw new ApiError(0, "The server did not answer.", "network_error");
  }
  if (!res.ok) throw await errorFrom(res);
  return res;
}

/** JSON request: `body` is serialised when it is not FormData. */
export async function api<T>(path: string, init: Omit<RequestInit, "body"> & { body?: unknown } = {}): Promise<T> {
  const { body, ...rest } = init;
  const headers = new Headers(rest.headers);
  let payload: BodyInit | undefined;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers.set("Content-Type", "application/json");
    payload = JSON.stringify(body);
  }
  const res = await rawFetch(path, { ...rest, headers, body: payload });
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}
