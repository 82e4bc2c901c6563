/** Keys (admins): create one (its secret shown once), list them, revoke. Other roles see no
 * admin action, only a note. */
import { useState } from "react";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { api } from "../../api/client";
import { qk, useKeys, usePermissions } from "../../api/hooks";
import type { ApiKey, Role } from "../../api/types";
import { ErrorPanel } from "../../components/ErrorPanel";
import { Badge, Button, Card, Code, EmptyState, PageHeader, SelectField, Spinner, Table, TextField, formatTime, statusTone } from "../../components/ui";

function CreateKey({ onCreated }: { onCreated: (secret: string, key: ApiKey) => void }) {
  const [name, setName] = useState("");
  const [role, setRole] = useState<Role>("user");
  const [expires, setExpires] = useState("");
  const qc = useQueryClient();
  const create = useMutation({
    mutationFn: () =>
      api<{ key: ApiKey; secret: string }>("/api/keys", {
        method: "POST",
        body: { name: name.trim(), role, ...(expires.trim() ? { expires_in: expires.trim() } : {}) },
      }),
    onSuccess: (res) => {
      onCreated(res.secret, res.key);
      setName("");
      setExpires("");
      void qc.invalidateQueries({ queryKey: qk.keys });
    },
  });
  return (
    <Card title="Create a key">
      <form
        className="grid gap-3 sm:grid-cols-[1fr_10rem_8rem_auto] sm:items-end"
        onSubmit={(e) => {
          e.preventDefault();
          if (name.trim()) create.mutate();
        }}
      >
        <TextField label="Name" value={name} onChange={(e) => setName(e.target.value)} required placeholder="laptop" />
        <SelectField
          label="Role"
          value={role}
          onChange={(e) => setRole(e.target.value as Role)}
          options={[
            { value: "admin", label: "admin (everything)" },
            { value: "user", label: "user (chat, search)" },
            { value: "readonly", label: "readonly (view)" },
          ]}
        />
        <TextField label="Expires in" value={expires} onChange={(e) => setExpires(e.target.value)} placeholder="30d (optional)" />
        <Button type="submit" variant="primary" disabled={!name.trim() || create.isPending}>
          Create key
        </Button>
      </form>
      {create.error && (
        <div className="mt-2">
          <ErrorPanel error={create.error} />
        </div>
      )}
    </Card>
  );
}

function Secret({ secret, name, onDone }: { secret: string; name: string; onDone: () => void }) {
  const [copied, setCopied] = useState(false);
  return (
    <div role="status" className="rounded-lg border border-amber-400 bg-amber-50 p-3 text-sm dark:border-amber-700 dark:bg-amber-950">
      <p className="font-semibold">Key “{name}” created. Copy it now: this is the only time it is shown.</p>
      <div className="mt-2 flex flex-wrap items-center gap-2">
        <code className="rounded bg-white px-2 py-1 font-mono text-xs break-all dark:bg-zinc-900" data-testid="new-secret">
          {secret}
        </code>
        <Button
          onClick={() => {
            void navigator.clipboard?.writeText(secret).then(() => setCopied(true));
          }}
        >
          {copied ? "Copied" : "Copy"}
        </Button>
        <Button variant="ghost" onClick={onDone}>
          Done
        </Button>
      </div>
    </div>
  );
}

function KeyRow({ k }: { k: ApiKey }) {
  const [confirming, setConfirming] = useState(false);
  const qc = useQueryClient();
  const revoke = useMutation({
    mutationFn: () => api<ApiKey>(`/api/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" }),
    onSuccess: () => void qc.invalidateQueries({ queryKey: qk.keys }),
  });
  const active = !k.revoked_at && k.status !== "revoked";
  return (
    <tr data-testid="key-row">
      <td className="px-2 py-1.5 font-medium">{k.name}</td>
      <td className="px-2 py-1.5">{k.role}</td>
      <td className="px-2 py-1.5 font-mono text-xs">{k.prefix}…</td>
      <td className="px-2 py-1.5">
        <Badge tone={statusTone(k.status)}>{k.status}</Badge>
      </td>
      <td className="px-2 py-1.5 text-xs">{formatTime(k.created_at)}</td>
      <td className="px-2 py-1.5 text-xs">{formatTime(k.expires_at)}</td>
      <td className="px-2 py-1.5 text-xs">{formatTime(k.last_used_at)}</td>
      <td className="px-2 py-1.5 text-right whitespace-nowrap">
        {active &&
          (confirming ? (
            <>
              <Button variant="danger" onClick={() => revoke.mutate()} disabled={revoke.isPending} aria-label={`Confirm revoking ${k.name}`}>
                Confirm revoke
              </Button>{" "}
              <Button variant="ghost" onClick={() => setConfirming(false)}>
                Keep
              </Button>
            </>
          ) : (
            <Button onClick={() => setConfirming(true)} aria-label={`Revoke ${k.name}`}>
              Revoke
            </Button>
          ))}
        {revoke.error && <ErrorPanel error={revoke.error} />}
      </td>
    </tr>
  );
}

export default function KeysPage() {
  const { isAdmin, loading } = usePermissions();
  const keys = useKeys(isAdmin);
  const [created, setCreated] = useState<{ secret: string; name: string } | null>(null);
  if (loading) return <Spinner />;
  if (!isAdmin) {
    return (
      <>
        <PageHeader title="Keys" />
        <EmptyState title="Keys are managed by admins">
          Ask an admin, or on the server run <Code>impetus keys list</Code>.
        </EmptyState>
      </>
    );
  }
  return (
    <div className="space-y-4">
      <PageHeader title="Keys" description="API keys for the HTTP API and this dashboard. Secrets are stored hashed and shown once." />
      <CreateKey onCreated={(secret, key) => setCreated({ secret, name: key.name })} />
      {created && <Secret secret={created.secret} name={created.name} onDone={() => setCreated(null)} />}
      <Card title="Keys">
        {keys.isLoading && <Spinner />}
        {keys.error && <ErrorPanel error={keys.error} onRetry={() => void keys.refetch()} />}
        {keys.data && keys.data.data.length === 0 && (
          <EmptyState title="No keys yet">
            Without keys, the server is open on this machine only. Create one above (or <Code>impetus keys create</Code>) to require keys.
          </EmptyState>
        )}
        {keys.data && keys.data.data.length > 0 && (
          <Table caption="API keys" head={["Name", "Role", "Prefix", "Status", "Created", "Expires", "Last used", ""]}>
            {keys.data.data.map((k) => (
              <KeyRow key={k.id} k={k} />
            ))}
          </Table>
        )}
      </Card>
    </div>
  );
}
