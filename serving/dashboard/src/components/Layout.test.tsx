import { screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { useAuth } from "../store/auth";
import { useTheme } from "../store/theme";
import { installMockWebSocket, info, mockFetch, renderRoute } from "../test/utils";

describe("Layout", () => {
  beforeEach(() => {
    installMockWebSocket();
    useAuth.setState({ apiKey: null, rejected: false });
  });
  afterEach(() => vi.unstubAllGlobals());

  it("shows the nav and the page when auth is off", async () => {
    mockFetch({ "/api/info": info() });
    renderRoute("/models");
    expect(await screen.findByRole("heading", { name: "Models" })).toBeInTheDocument();
    const nav = screen.getByRole("navigation", { name: "Main" });
    for (const label of ["Chat", "Knowledge", "Models", "Metrics", "Experiments", "Hardware", "Keys"])
      expect(nav).toHaveTextContent(label);
  });

  it("asks for a key when auth is on, then sends it as a bearer token", async () => {
    const fetch = mockFetch({
      "/api/info": (req: Request) =>
        req.headers.get("Authorization") === "Bearer imp_good"
          ? info({ auth_enabled: true, role: "readonly", key_name: "viewer" })
          : new Response(JSON.stringify({ error: { message: "API key required", code: "auth_required" } }), { status: 401 }),
    });
    renderRoute("/hardware");
    await userEvent.type(await screen.findByLabelText("API key"), "imp_good");
    await userEvent.click(screen.getByRole("button", { name: "Sign in" }));
    expect(await screen.findByRole("heading", { name: "Hardware" })).toBeInTheDocument();
    expect(screen.queryByRole("link", { name: "Keys" })).not.toBeInTheDocument();
    expect(screen.getByText("viewer (readonly)")).toBeInTheDocument();
    expect(fetch).toHaveBeenCalled();
  });
});

describe("Layout controls", () => {
  beforeEach(() => {
    installMockWebSocket();
    useAuth.setState({ apiKey: null, rejected: false });
  });
  afterEach(() => vi.unstubAllGlobals());

  it("switches the theme, opens the phone menu, signs out, and says when a page does not exist", async () => {
    useAuth.getState().signIn("imp_admin");
    mockFetch({ "/api/info": info({ auth_enabled: true, role: "admin", key_name: "root" }), "/v1/models": { object: "list", data: [] } });
    renderRoute("/nowhere");
    expect(await screen.findByText("No such page")).toBeInTheDocument();
    const theme = screen.getByRole("button", { name: /Switch to (light|dark) theme/ });
    const before = useTheme.getState().theme;
    await userEvent.click(theme);
    expect(useTheme.getState().theme).not.toBe(before);
    expect(document.documentElement.classList.contains("dark")).toBe(before === "light");
    const menu = screen.getByRole("button", { name: "Menu" });
    expect(menu).toHaveAttribute("aria-expanded", "false");
    await userEvent.click(menu);
    expect(menu).toHaveAttribute("aria-expanded", "true");
    await userEvent.click(screen.getByRole("link", { name: "Keys" }));
    expect(await screen.findByRole("heading", { name: "Keys", level: 1 })).toBeInTheDocument();
    expect(menu).toHaveAttribute("aria-expanded", "false");
    await userEvent.click(screen.getByRole("button", { name: "Sign out" }));
    expect(useAuth.getState().apiKey).toBeNull();
    expect(await screen.findByLabelText("API key")).toBeInTheDocument();
  });

  it("shows what to do when the server does not answer", async () => {
    vi.stubGlobal("fetch", vi.fn().mockRejectedValue(new TypeError("down")));
    renderRoute("/");
    expect(await screen.findByText("The server did not answer")).toBeInTheDocument();
  });
});

describe("makeQueryClient", () => {
  it("does not retry 4xx but retries a network error once", async () => {
    const { makeQueryClient } = await import("../queryClient");
    const { ApiError } = await import("../api/client");
    const retry = makeQueryClient().getDefaultOptions().queries!.retry as (n: number, e: unknown) => boolean;
    expect(retry(0, new ApiError(404, "x"))).toBe(false);
    expect(retry(0, new ApiError(0, "x"))).toBe(true);
    expect(retry(1, new ApiError(503, "x"))).toBe(false);
  });
});
