/** Metrics page against a real server: the live charts move while a chat request runs, and the
 * request shows up in the inspector, where the filter finds it. */
import { expect, test } from "@playwright/test";
import { ADMIN_KEY, shot, signIn } from "./fixtures";

const MODEL = "smollm2-135m-instruct";

test("the charts move while a chat request runs, and the inspector lists it", async ({ page, request }) => {
  await signIn(page, ADMIN_KEY, "/metrics");
  await expect(page.getByRole("heading", { name: "Metrics", level: 1 })).toBeVisible();
  await expect(page.getByText("Stream: live")).toBeVisible();
  const tps = page.getByTestId("chart-tps");
  await expect(tps).toBeVisible(); // the first snapshot arrived and the chart chunk loaded
  const line = tps.locator("path.recharts-line-curve").first();
  await expect(line).toHaveAttribute("d", /.+/);
  const before = await line.getAttribute("d");
  const pointsBefore = Number(await tps.getAttribute("data-points"));

  // A short completion (CPU decode is slow); the page watches it through the live stream.
  const chat = request.post("/v1/chat/completions", {
    headers: { Authorization: `Bearer ${ADMIN_KEY}` },
    data: { model: MODEL, messages: [{ role: "user", content: "Count from one to thirty." }], max_tokens: 40 },
    timeout: 120_000,
  });
  await expect
    .poll(async () => Number(await page.getByTestId("stat-peak-tps").textContent()), { timeout: 90_000 })
    .toBeGreaterThan(0);
  await shot(page, "metrics-live");
  const res = await chat;
  expect(res.ok()).toBeTruthy();

  await expect.poll(async () => Number(await tps.getAttribute("data-points"))).toBeGreaterThan(pointsBefore);
  expect(await line.getAttribute("d")).not.toBe(before);

  const rows = page.getByTestId("request-row").filter({ hasText: "/v1/chat/completions" });
  await expect(rows.first()).toBeVisible();
  await expect(rows.first()).toContainText(MODEL);
  await page.getByLabel("Filter").fill("chat/completions");
  await expect(page.getByTestId("request-row").first()).toContainText("/v1/chat/completions");
  await page.getByLabel("Filter").fill("no-such-route-xyz");
  await expect(page.getByText("No request matches the filter.")).toBeVisible();
});
