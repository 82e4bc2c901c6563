/** "Sign in with an API key": shown instead of the pages when /api/info says auth is on and no
 * (valid) key is held. The key stays in sessionStorage (store/auth.ts). */
import { useState } from "react";
import { useQueryClient } from "@tanstack/react-query";
import { useAuth } from "../store/auth";
import { Button, Code, TextField } from "./ui";

export function SignIn() {
  const [key, setKey] = useState("");
  const { signIn, rejected } = useAuth();
  const queryClient = useQueryClient();
  return (
    <main className="flex min-h-full items-center justify-center p-4">
      <form
        className="w-full max-w-sm space-y-4 rounded-lg border border-zinc-200 bg-white p-6 dark:border-zinc-800 dark:bg-zinc-900"
        onSubmit={(e) => {
          e.preventDefault();
          if (!key.trim()) return;
          signIn(key.trim());
          void queryClient.resetQueries();
        }}
      >
        <h1 className="text-lg font-semibold">Sign in with an API key</h1>
        <p className="text-sm text-zinc-600 dark:text-zinc-400">
          This server requires a key. Create one on the server with <Code>impetus keys create --name me --role user</Code>{" "}
          and paste it here; it is kept only for this tab.
        </p>
        {rejected && (
          <p role="alert" className="text-sm text-red-700 dark:text-red-300">
            The server refused that key (unknown, expired or revoked). Try another.
          </p>
        )}
        <TextField
          label="API key"
          type="password"
          autoComplete="off"
          placeholder="imp_…"
          value={key}
          onChange={(e) => setKey(e.target.value)}
          required
        />
        <Button type="submit" variant="primary" className="w-full">
          Sign in
        </Button>
      </form>
    </main>
  );
}
