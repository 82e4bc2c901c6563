import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";
import { ApiError } from "../api/client";
import { ErrorPanel, nextStep } from "./ErrorPanel";
import { formatBytes, formatTime, statusTone } from "./ui";

describe("formatting", () => {
  it("formats bytes, times and status tones", () => {
    expect(formatBytes(null)).toBe("—");
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(1536)).toBe("1.5 KB");
    expect(formatBytes(50 * 1024 * 1024)).toBe("50 MB");
    expect(formatTime(null)).toBe("—");
    expect(formatTime("garbage")).toBe("garbage");
    expect(formatTime(1_700_000_000)).toBe(new Date(1_700_000_000_000).toLocaleString());
    expect(formatTime("2026-01-01T00:00:00Z")).toBe(new Date("2026-01-01T00:00:00Z").toLocaleString());
    expect(["completed", "running", "quarantined", "failed", "x"].map(statusTone)).toEqual(["good", "info", "warn", "bad", "neutral"]);
  });
});

describe("ErrorPanel", () => {
  it("says what to do next for each kind of failure", () => {
    const statuses = [0, 401, 403, 404, 413, 429, 503, 507, 500, 400];
    const titles = statuses.map((s) => nextStep(new ApiError(s, "m")).title);
    expect(new Set(titles).size).toBe(statuses.length);
    expect(nextStep(new Error("x")).title).toBe("Something went wrong");
  });

  it("renders the message, the hint with code and a retry", async () => {
    const retry = vi.fn();
    render(<ErrorPanel error={new ApiError(0, "The server did not answer.")} onRetry={retry} />);
    expect(screen.getByRole("alert")).toHaveTextContent("The server did not answer.");
    expect(screen.getByText("impetus serve").tagName).toBe("CODE");
    await userEvent.click(screen.getByRole("button", { name: "Retry" }));
    expect(retry).toHaveBeenCalled();
  });
});
