import { defineConfig } from "vitest/config";

// Each test file starts its own `opentab dev` (anvil included): give them time, and run at most
// two at once on a 2-core machine.
export default defineConfig({
  test: {
    include: ["*/test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    maxWorkers: 2,
    minWorkers: 1,
  },
});
