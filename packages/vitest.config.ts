import { defaultServerConditions } from "vite";
import { defineConfig } from "vitest/config";

// Each test file starts its own `opentab dev` (anvil included): give them time, and run at most
// two at once on a 2-core machine. `@opentab/*` resolves to the TypeScript sources here (the
// `opentab-source` export condition; tsconfig's `customConditions` says the same to tsc), so the
// suites need no build; installed packages use `dist/` (see express/test/pack.test.ts).
export default defineConfig({
  ssr: { resolve: { conditions: ["opentab-source", ...defaultServerConditions] } },
  test: {
    include: ["*/test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    maxWorkers: 2,
    minWorkers: 1,
  },
});
