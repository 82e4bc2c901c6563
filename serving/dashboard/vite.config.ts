/// <reference types="vitest/config" />
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";
import tailwindcss from "@tailwindcss/vite";

// The dev server proxies the API to a running `impetus serve` (IMPETUS_URL, default :8000), so
// `npm run dev` works without CORS settings.
const target = process.env.IMPETUS_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react(), tailwindcss()],
  // The 3D view (three) is one lazy chunk of about 1 MB minified: warn only above that. What the
  // first page loads is checked by scripts/report-size.mjs.
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, manifest: true, chunkSizeWarningLimit: 1500 },
  server: {
    proxy: {
      "/api": { target, ws: true },
      "/v1": { target },
    },
  },
  test: {
    globals: true,
    environment: "jsdom",
    setupFiles: ["src/test/setup.ts"],
    include: ["src/**/*.test.{ts,tsx}"],
    css: false,
    coverage: {
      provider: "v8",
      include: ["src/**/*.{ts,tsx}"],
      exclude: ["src/**/*.test.{ts,tsx}", "src/test/**", "src/main.tsx", "src/**/*.d.ts"],
      reporter: ["text-summary", "text"],
      thresholds: { lines: 70 },
    },
  },
});
