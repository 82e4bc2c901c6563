/** Shared e2e helpers: sign in with a key, and screenshots of a page at 1280x800 into
 * $IMPETUS_E2E_OUTPUT/screenshots/<name>.png. */
import { expect, type Page } from "@playwright/test";

export const ADMIN_KEY = process.env.IMPETUS_ADMIN_KEY ?? "";
export const READONLY_KEY = process.env.IMPETUS_READONLY_KEY ?? "";
const OUT = process.env.IMPETUS_E2E_OUTPUT ?? "test-results";

/** Open `path` and sign in with `key` when the server asks for one. */
export async function signIn(page: Page, key: string, path = "/"): Promise<void> {
  await page.goto(path);
  const field = page.getByLabel("API key");
  const nav = page.getByRole("navigation", { name: "Main" });
  await expect(field.or(nav)).toBeVisible();
  if (await field.isVisible()) {
    await field.fill(key);
    await page.getByRole("button", { name: "Sign in" }).click();
  }
  await expect(nav).toBeVisible();
}

export async function shot(page: Page, name: string): Promise<void> {
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.screenshot({ path: `${OUT}/screenshots/${name}.png` });
}
