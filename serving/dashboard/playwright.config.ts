/** Playwright against a running `impetus serve` (tests/dashboard/test_e2e.py starts one and sets
 * IMPETUS_BASE_URL and the keys). Debian's Chromium: Playwright cannot download browsers here. */
import { defineConfig, devices } from "@playwright/test";

const out = process.env.IMPETUS_E2E_OUTPUT ?? "test-results";

export default defineConfig({
  testDir: "e2e",
  // One server with one CPU-bound model: run the specs one after the other.
  workers: 1,
  fullyParallel: false,
  retries: 0,
  timeout: 90_000,
  expect: { timeout: 30_000 },
  outputDir: `${out}/artifacts`,
  reporter: [["list"], ["junit", { outputFile: `${out}/junit.xml` }]],
  use: {
    baseURL: process.env.IMPETUS_BASE_URL ?? "http://127.0.0.1:8000",
    viewport: { width: 1280, height: 800 },
    trace: "retain-on-failure",
    screenshot: "only-on-failure",
    launchOptions: { executablePath: process.env.IMPETUS_CHROMIUM ?? "/usr/bin/chromium" },
  },
  projects: [{ name: "chromium", use: { ...devices["Desktop Chrome"], viewport: { width: 1280, height: 800 } } }],
});
