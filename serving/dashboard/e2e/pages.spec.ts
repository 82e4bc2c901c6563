import { expect, test } from "@playwright/test";
import { ADMIN_KEY, shot, signIn } from "./fixtures";

// Every page renders behind its lazy route, and a screenshot of each at 1280x800.
const PAGES = [
  ["models", "Models"],
  ["metrics", "Metrics"],
  ["experiments", "Experiments"],
  ["hardware", "Hardware"],
] as const;

test("every page opens from the navigation", async ({ page }) => {
  await signIn(page, ADMIN_KEY);
  const nav = page.getByRole("navigation", { name: "Main" });
  for (const [path, title] of PAGES) {
    await nav.getByRole("link", { name: title }).click();
    await expect(page).toHaveURL(new RegExp(`/${path}$`));
    await expect(page.getByRole("heading", { name: title, level: 1 })).toBeVisible();
    await page.waitForTimeout(1500); // a second of live data on the charts
    await shot(page, path);
  }
});

test("phone width: the menu button opens the navigation", async ({ page }) => {
  await signIn(page, ADMIN_KEY);
  await page.setViewportSize({ width: 390, height: 800 });
  const nav = page.getByRole("navigation", { name: "Main" });
  await expect(nav).toBeHidden();
  await page.getByRole("button", { name: "Menu" }).click();
  await nav.getByRole("link", { name: "Knowledge" }).click();
  await expect(page.getByRole("heading", { name: "Knowledge", level: 1 })).toBeVisible();
  await expect(nav).toBeHidden();
});
