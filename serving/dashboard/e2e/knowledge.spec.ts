import { expect, test } from "@playwright/test";
import { ADMIN_KEY, shot, signIn } from "./fixtures";

test("upload a file, watch its index run finish, find it by search", async ({ page }) => {
  await signIn(page, ADMIN_KEY, "/knowledge");
  await expect(page.getByRole("table", { name: "Collections" })).toContainText("default");
  const collection = `e2e-${Date.now().toString(36)}`;
  await page.getByRole("textbox", { name: "Collection" }).fill(collection);
  await page.getByLabel("Files").setInputFiles({
    name: "lighthouse.md",
    mimeType: "text/markdown",
    buffer: Buffer.from("# The lighthouse\n\nThe keeper lights the lamp of the Varnholm lighthouse at dusk every evening.\n"),
  });
  await page.getByRole("button", { name: "Upload and index" }).click();
  const run = page.getByTestId("index-run").filter({ hasText: collection });
  await expect(run).toBeVisible({ timeout: 60_000 });
  await expect(run.getByText("completed")).toBeVisible({ timeout: 60_000 });
  await shot(page, "knowledge");

  await page.getByRole("search").getByLabel("Collection").selectOption(collection);
  await page.getByLabel("Query").fill("When is the Varnholm lamp lit?");
  await page.getByRole("button", { name: "Search" }).click();
  for (const mode of ["dense", "sparse", "hybrid"])
    await expect(page.getByTestId(`hit-${mode}`).first()).toContainText("lighthouse.md");
  await shot(page, "knowledge-search");
});
