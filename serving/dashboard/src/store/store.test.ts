import { describe, expect, it } from "vitest";
import { useAuth } from "./auth";
import { applyTheme, useTheme } from "./theme";

describe("auth store", () => {
  it("keeps the key in sessionStorage and forgets it on sign-out", () => {
    useAuth.getState().markRejected();
    useAuth.getState().signIn("imp_x");
    expect(sessionStorage.getItem("impetus.apiKey")).toBe("imp_x");
    expect(useAuth.getState()).toMatchObject({ apiKey: "imp_x", rejected: false });
    useAuth.getState().signOut();
    expect(sessionStorage.getItem("impetus.apiKey")).toBeNull();
    expect(useAuth.getState().apiKey).toBeNull();
  });
});

describe("theme store", () => {
  it("toggles the dark class and remembers the choice", () => {
    useTheme.setState({ theme: "dark" });
    applyTheme("dark");
    expect(document.documentElement.classList.contains("dark")).toBe(true);
    useTheme.getState().toggle();
    expect(useTheme.getState().theme).toBe("light");
    expect(localStorage.getItem("impetus.theme")).toBe("light");
    expect(document.documentElement.classList.contains("dark")).toBe(false);
  });
});
