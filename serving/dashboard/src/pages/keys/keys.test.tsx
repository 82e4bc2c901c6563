import { screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { ApiKey } from "../../api/types";
import { apiError, info, json, mockFetch, renderWithProviders } from "../../test/utils";
import KeysPage from "./index";

const key = (name: string, over: Partial<ApiKey> = {}): ApiKey => ({
  id: `id-${name}`,
  name,
  role: "user",
  prefix: "imp_ab",
  created_at: "2026-12-01T00:00:00Z",
  expires_at: null,
  revoked_at: null,
  last_used_at: null,
  status: "active",
  ...over,
});

describe("Keys page", () => {
  afterEach(() => vi.unstubAllGlobals());

  it("creates a key and shows its secret once, then revokes one after confirming", async () => {
    let keys = [key("laptop")];
    let created: unknown = null;
    mockFetch({
      "/api/info": info({ auth_enabled: true, role: "admin", key_name: "root" }),
      "GET /api/keys": () => ({ object: "list", data: keys }),
      "POST /api/keys": async (req: Request) => {
        created = await req.json();
        keys = [...keys, key("ci", { role: "readonly" })];
        return json({ key: keys[1], secret: "imp_secret_once" }, 201);
      },
      "DELETE /api/keys/id-laptop": () => {
        keys = keys.map((k) => (k.name === "laptop" ? { ...k, status: "revoked", revoked_at: "2026-12-03T00:00:00Z" } : k));
        return keys[0];
      },
    });
    renderWithProviders(<KeysPage />);
    await userEvent.type(await screen.findByLabelText("Name"), "ci");
    await userEvent.selectOptions(screen.getByLabelText("Role"), "readonly");
    await userEvent.type(screen.getByLabelText("Expires in"), "30d");
    await userEvent.click(screen.getByRole("button", { name: "Create key" }));
    expect(await screen.findByTestId("new-secret")).toHaveTextContent("imp_secret_once");
    expect(created).toEqual({ name: "ci", role: "readonly", expires_in: "30d" });
    await waitFor(() => expect(screen.getAllByTestId("key-row")).toHaveLength(2));
    await userEvent.click(screen.getByRole("button", { name: "Done" }));
    expect(screen.queryByTestId("new-secret")).toBeNull();

    await userEvent.click(screen.getByRole("button", { name: "Revoke laptop" }));
    await userEvent.click(screen.getByRole("button", { name: "Keep" }));
    await userEvent.click(screen.getByRole("button", { name: "Revoke laptop" }));
    await userEvent.click(screen.getByRole("button", { name: "Confirm revoking laptop" }));
    const row = (await screen.findByText("revoked")).closest("tr")!;
    expect(within(row).queryByRole("button")).toBeNull();
  });

  it("explains a refused creation", async () => {
    mockFetch({
      "/api/info": info(),
      "GET /api/keys": { object: "list", data: [] },
      "POST /api/keys": apiError(400, "A key named 'ci' exists."),
    });
    renderWithProviders(<KeysPage />);
    expect(await screen.findByText("No keys yet")).toBeInTheDocument();
    await userEvent.type(screen.getByLabelText("Name"), "ci");
    await userEvent.click(screen.getByRole("button", { name: "Create key" }));
    expect(await screen.findByRole("alert")).toHaveTextContent("A key named 'ci' exists.");
  });

  it("shows no admin action to a readonly key", async () => {
    const fetch = mockFetch({ "/api/info": info({ auth_enabled: true, role: "readonly" }) });
    renderWithProviders(<KeysPage />);
    expect(await screen.findByText("Keys are managed by admins")).toBeInTheDocument();
    expect(screen.queryByRole("button", { name: "Create key" })).toBeNull();
    expect(fetch.mock.calls.map((c) => String(c[0]))).not.toContain("/api/keys");
  });
});
