/** An error with what to do next, from the API's error shape (api/client.ts ApiError). */
import { ApiError } from "../api/client";
import { Code } from "./ui";

export function nextStep(err: unknown): { title: string; hint: string } {
  if (err instanceof ApiError) {
    switch (err.status) {
      case 0:
        return { title: "The server did not answer", hint: "Check that `impetus serve` (or `impetus up`) is running, then retry." };
      case 401:
        return { title: "Sign-in needed", hint: "Sign in with an API key (`impetus keys create --name me --role user` prints one)." };
      case 403:
        return { title: "Not allowed", hint: "Your key's role does not reach this. Ask an admin for a key with a higher role." };
      case 404:
        return { title: "Not found", hint: "It may have been removed; reload the page." };
      case 413:
        return { title: "Too large", hint: "The server limits uploads (rag.upload_max_bytes); split the file." };
      case 429:
        return { title: "Rate limited", hint: "Wait a minute and retry, or ask for a key with a higher rate limit." };
      case 503:
        return { title: "The server is busy or still starting", hint: "Retry in a few seconds." };
      case 507:
        return { title: "Not enough memory", hint: "Unload a model on the Models page, then retry." };
      default:
        if (err.status >= 500) return { title: "Server error", hint: "Retry; if it persists, see the server's log (`impetus serve` output)." };
        return { title: "Request refused", hint: "Check the values you entered." };
    }
  }
  return { title: "Something went wrong", hint: "Reload the page; if it persists, see the browser console." };
}

export function ErrorPanel({ error, onRetry }: { error: unknown; onRetry?: () => void }) {
  const { title, hint } = nextStep(error);
  const message = error instanceof Error ? error.message : String(error);
  return (
    <div role="alert" className="rounded-lg border border-red-300 bg-red-50 p-3 text-sm text-red-900 dark:border-red-800 dark:bg-red-950 dark:text-red-100">
      <p className="font-semibold">{title}</p>
      <p className="mt-1">{message}</p>
      <p className="mt-1">
        Next: {hint.split("`").map((part, i) => (i % 2 ? <Code key={i}>{part}</Code> : part))}
      </p>
      {onRetry && (
        <button type="button" onClick={onRetry} className="mt-2 underline">
          Retry
        </button>
      )}
    </div>
  );
}
