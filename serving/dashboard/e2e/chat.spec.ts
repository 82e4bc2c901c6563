import { expect, test } from "@playwright/test";
import { ADMIN_KEY, shot, signIn } from "./fixtures";

test.describe("chat", () => {
  test.beforeEach(async ({ page }) => {
    await signIn(page, ADMIN_KEY);
    await expect(page.getByLabel("Model")).not.toHaveValue("");
    await page.getByLabel("Max tokens").fill("12");
  });

  test("a chat answer streams in", async ({ page }) => {
    // Count the text updates the answer goes through: a stream shows several before the end.
    await page.getByLabel("Message").fill("Name three primary colours.");
    await page.getByRole("button", { name: "Send" }).click();
    await expect(page.getByRole("button", { name: "Stop" })).toBeVisible();
    const answer = page.getByTestId("answer-text").last();
    const seen = new Set<string>();
    while (await page.getByRole("button", { name: "Stop" }).isVisible()) {
      seen.add((await answer.textContent()) ?? "");
      await page.waitForTimeout(30);
    }
    seen.add((await answer.textContent()) ?? "");
    expect([...seen].filter((t) => t.trim()).length).toBeGreaterThan(1);
    await expect(answer).not.toBeEmpty();
    await shot(page, "chat");
  });

  test("RAG answers cite sources whose lineage opens", async ({ page }) => {
    await page.getByLabel("Answer from a collection (RAG)").check();
    await expect(page.getByLabel("Collection", { exact: true })).toHaveValue("default");
    await page.getByLabel("Message").fill("What does the ingestion pipeline do?");
    await page.getByRole("button", { name: "Send" }).click();
    const source = page.getByRole("button", { name: /^\[1\]/ });
    await expect(source).toBeVisible();
    await expect(page.getByRole("button", { name: "Send" })).toBeVisible({ timeout: 60_000 });
    await shot(page, "chat-answer");
    await source.click();
    const panel = page.getByRole("dialog", { name: "Lineage of source 1" });
    await expect(panel.getByTestId("lineage-text")).not.toBeEmpty();
    await expect(panel.getByText("Pipeline", { exact: true })).toBeVisible();
    await expect(panel.getByText(/^samples\//).first()).toBeVisible();
    await shot(page, "chat-lineage");
  });
});
