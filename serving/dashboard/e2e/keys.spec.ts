import { expect, test } from "@playwright/test";
import { ADMIN_KEY, READONLY_KEY, shot, signIn } from "./fixtures";

test("an admin creates a key, sees its secret once, and revokes it", async ({ page }) => {
  await signIn(page, ADMIN_KEY, "/keys");
  const name = `e2e-${Date.now().toString(36)}`;
  await page.getByLabel("Name").fill(name);
  await page.getByLabel("Role").selectOption("user");
  await page.getByRole("button", { name: "Create key" }).click();
  await expect(page.getByTestId("new-secret")).toHaveText(/^imp_/);
  const row = page.getByTestId("key-row").filter({ hasText: name });
  await expect(row.getByText("active")).toBeVisible();
  await shot(page, "keys");
  await page.getByRole("button", { name: "Done" }).click();
  await row.getByRole("button", { name: `Revoke ${name}` }).click();
  await row.getByRole("button", { name: `Confirm revoking ${name}` }).click();
  await expect(row.getByText("revoked")).toBeVisible();
});

test("a readonly key sees no admin action anywhere", async ({ page }) => {
  await signIn(page, READONLY_KEY);
  const nav = page.getByRole("navigation", { name: "Main" });
  await expect(nav.getByText("(readonly)")).toBeVisible();
  await expect(nav.getByRole("link", { name: "Keys" })).toHaveCount(0);
  await expect(page.getByLabel("Message")).toHaveCount(0);
  await page.goto("/keys");
  await expect(page.getByText("Keys are managed by admins")).toBeVisible();
  await expect(page.getByRole("button", { name: "Create key" })).toHaveCount(0);
  await page.goto("/knowledge");
  await expect(page.getByText("Your key is read-only")).toBeVisible();
  await expect(page.getByRole("button", { name: "Upload and index" })).toHaveCount(0);
  await page.goto("/models");
  await expect(page.getByRole("heading", { name: "Models", level: 1 })).toBeVisible();
  await expect(page.getByRole("button", { name: /^(Load|Unload)/ })).toHaveCount(0);
});
