import { defineConfig } from "vitest/config";

// The browser end-to-end test: real Chromium (Debian's, via playwright-core) against a real
// `opentab dev` serving the built UI (`npm run build` first).
export default defineConfig({
  test: {
    environment: "node",
    include: ["e2e/**/*.e2e.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
