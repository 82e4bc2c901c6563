/** Models page against a real server: an admin unloads the default LLM and loads it back; a
 * readonly key sees the registry but no load/unload. */
import { expect, test } from "@playwright/test";
import { ADMIN_KEY, READONLY_KEY, shot, signIn } from "./fixtures";

const MODEL = "smollm2-135m-instruct";

test("an admin unloads the default model and loads it back", async ({ page }) => {
  await signIn(page, ADMIN_KEY, "/models");
  await expect(page.getByRole("heading", { name: "Models", level: 1 })).toBeVisible();
  const row = page.getByTestId(`model-row-${MODEL}`);
  // exact: "Load x" is a substring of "Unload x"
  const unload = page.getByRole("button", { name: `Unload ${MODEL}`, exact: true });
  const load = page.getByRole("button", { name: `Load ${MODEL}`, exact: true });
  await expect(unload.or(load)).toBeVisible();
  if (await load.isVisible()) {
    // another spec left it unloaded: load it first so the round trip below starts from "loaded"
    await load.click();
    await expect(unload).toBeVisible({ timeout: 120_000 });
  }
  await expect(page.getByRole("meter", { name: "Model memory in use" })).toBeVisible();
  const resident = page.getByRole("table", { name: "Models resident in memory" });
  await expect(resident).toContainText(MODEL);

  await unload.click();
  await expect(load).toBeVisible();
  await expect(row.getByText("available", { exact: true })).toBeVisible();
  // the row's accessible name ends with its state badge
  const residentRow = resident.getByRole("row", { name: new RegExp(`^${MODEL}.* loaded$`) });
  await expect(residentRow).toHaveCount(0);
  await shot(page, "models-unloaded");

  await load.click();
  await expect(unload).toBeVisible({ timeout: 120_000 });
  await expect(row.getByText("loaded", { exact: true })).toBeVisible();
  await expect(residentRow).toHaveCount(1);
  await shot(page, "models-loaded");
});

test("a readonly key sees the registry but no load or unload", async ({ page }) => {
  test.skip(!READONLY_KEY, "IMPETUS_READONLY_KEY is not set");
  await signIn(page, READONLY_KEY, "/models");
  await expect(page.getByTestId(`model-row-${MODEL}`)).toBeVisible();
  await expect(page.getByText(/needs an admin key/)).toBeVisible();
  await expect(page.getByRole("button", { name: /^(Load|Unload) / })).toHaveCount(0);
});
