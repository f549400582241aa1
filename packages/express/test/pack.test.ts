/**
 * The npm packages the way a user gets them. `npm pack` both packages (its `prepack` builds
 * `dist/`), install the tarballs and Express (from the registry) into a folder outside the
 * repository, and run there, under plain `node` (no tsx, no vitest, nothing from the
 * checkout), an Express app priced with the installed `@opentab/express` and a script that pays
 * it with the installed `@opentab/client`, against a real `opentab dev`: unpaid is 402, paid
 * is 200 with a receipt. Also: the tarballs hold `dist/` and no tests, the `.d.ts` files type a
 * consumer's code, and an app whose secret is not set stops at start-up.
 * (Before: `main` was `./src/index.ts`, and `node` refused it with ERR_UNKNOWN_FILE_EXTENSION.)
 */

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PAYMENT_REQUIRED, decodeHeader, type PaymentRequired, type PaymentResponse } from "@opentab/client";
import { startDev, type Dev } from "../../client/test/dev.ts";

const packagesDir = fileURLToPath(new URL("../..", import.meta.url));
const repoDir = fileURLToPath(new URL("../../..", import.meta.url));
const tsc = join(packagesDir, "node_modules", "typescript", "bin", "tsc");

/** The environment of a user's shell: no loader from the test run, nothing pointing into the checkout. */
function userEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (key === "NODE_OPTIONS" || key === "NODE_PATH" || key.startsWith("npm_") || key.startsWith("VITEST")) continue;
    env[key] = value;
  }
  return { ...env, ...extra };
}

/** Runs a command to completion; rejects with its output if it fails. */
function run(command: string, args: string[], cwd: string, env = userEnv()): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, env, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${command} ${args.join(" ")} failed in ${cwd}: ${err.message}\n${stdout}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

// The user's files: an Express app and a paying script, plain ES modules.
const APP = `import express from "express";
import { paymentMiddleware } from "@opentab/express";

const priced = paymentMiddleware(
  { "POST /v1/chat": "$0.002" },
  { url: process.env.OPENTAB_URL, secret: process.env.OPENTAB_GATEWAY_SECRET },
);
const app = express();
app.use(priced);
app.use(express.json());
app.post("/v1/chat", (req, res) => res.json({ answer: 42, prompt: req.body?.prompt ?? null }));
app.get("/health", (_req, res) => res.send("ok"));
const server = app.listen(0, "127.0.0.1", () => {
  console.log(\`listening \${server.address().port} \${import.meta.resolve("@opentab/express")}\`);
});
process.on("SIGTERM", () => server.close(() => priced.drain().then(() => process.exit(0))));
`;

const PAY = `import { readFileSync } from "node:fs";
import { receiptOf, wrapFetchWithPayment } from "@opentab/client";

const [origin, demoPath] = process.argv.slice(2);
const demo = JSON.parse(readFileSync(demoPath, "utf8"));
const pay = wrapFetchWithPayment(fetch, {
  privateKey: demo.sessionKey.privateKey,
  cap: "1",
  statePath: "./totals.json",
  trust: { [origin]: { payTo: demo.payee, networks: \`eip155:\${demo.chainId}\`, validators: demo.validator, maxPrice: "0.01" } },
});
const res = await pay(\`\${origin}/v1/chat\`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ prompt: "hi" }),
});
console.log(JSON.stringify({
  status: res.status,
  body: await res.json(),
  receipt: receiptOf(res) ?? null,
  resolved: import.meta.resolve("@opentab/client"),
}));
`;

// A TypeScript user's file: compiles only if the installed .d.ts files type both packages.
const CONSUMER = `import express from "express";
import { paymentMiddleware, type GatewayOptions, type PaymentHandler } from "@opentab/express";
import { receiptOf, wrapFetchWithPayment, type PayingFetchOptions } from "@opentab/client";

const options: GatewayOptions = { url: "http://127.0.0.1:8402", secret: "s" };
// @ts-expect-error the secret is a string
export const wrong: GatewayOptions = { url: "http://127.0.0.1:8402", secret: 1 };
const handler: PaymentHandler = paymentMiddleware({ "POST /v1/chat": "$0.002" }, options);
express().use(handler);
const pay: typeof fetch = wrapFetchWithPayment(fetch, { privateKey: "0x01", cap: "1" } satisfies PayingFetchOptions);
// @ts-expect-error the cap is required
wrapFetchWithPayment(fetch, { privateKey: "0x01" });
export const served: Promise<string | undefined> = pay("http://x").then((res) => receiptOf(res)?.receipt.served);
`;

interface Packed {
  name: string;
  filename: string;
  files: { path: string }[];
}

let dev: Dev | undefined;
let root: string;
let appDir: string;
let packed: Packed[];
let app: ChildProcess | undefined;
let origin: string;
let installedExpress: string;
const timings: Record<string, number> = {};

async function timed<T>(name: string, work: () => Promise<T>): Promise<T> {
  const start = performance.now();
  try {
    return await work();
  } finally {
    timings[name] = Math.round(performance.now() - start);
  }
}

/** `npm pack` both packages, then install the tarballs and Express in `appDir`. */
async function packAndInstall(): Promise<void> {
  const tarballs = join(root, "tarballs");
  mkdirSync(tarballs);
  const { stdout } = await timed("npm pack (builds dist/)", () =>
    run("npm", ["pack", "-w", "client", "-w", "express", "--pack-destination", tarballs, "--json"], packagesDir),
  );
  packed = JSON.parse(stdout) as Packed[];
  writeFileSync(join(appDir, "package.json"), JSON.stringify({ name: "opentab-pack-test", private: true, type: "module" }));
  await timed("npm install (tarballs, express, @types/express)", () =>
    run(
      "npm",
      [
        "install",
        "--no-audit",
        "--no-fund",
        "--prefer-offline",
        "--loglevel=error",
        ...packed.map((p) => join(tarballs, p.filename)),
        "express@^5",
        "@types/express@^5",
      ],
      appDir,
    ),
  );
  writeFileSync(join(appDir, "app.mjs"), APP);
  writeFileSync(join(appDir, "pay.mjs"), PAY);
}

/** Starts the user's app with plain `node`; resolves with its origin and where it found @opentab/express. */
function startApp(env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; origin: string; resolved: string }> {
  const child = spawn(process.execPath, ["app.mjs"], { cwd: appDir, env, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).on("line", (line) => {
      const match = /^listening (\d+) (\S+)$/.exec(line);
      if (match) resolve({ child, origin: `http://127.0.0.1:${match[1]}`, resolved: match[2]! });
    });
    child.on("exit", (code) => reject(new Error(`the app exited with ${code}:\n${stderr}`)));
  });
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "opentab-pack-"));
  appDir = join(root, "app");
  mkdirSync(appDir);
  // Build, pack and install while opentab dev starts.
  await timed("setup (pack + install, dev started alongside)", () =>
    Promise.all([startDev().then((started) => (dev = started)), packAndInstall()]),
  );
  const started = await timed("app start (plain node)", () =>
    startApp(userEnv({ OPENTAB_URL: dev!.demo.gateway.url, OPENTAB_GATEWAY_SECRET: dev!.demo.gateway.secret })),
  );
  app = started.child;
  origin = started.origin;
  installedExpress = started.resolved;
}, 300_000);

afterAll(async () => {
  if (app && app.exitCode === null) {
    const exited = new Promise((resolve) => app!.on("exit", resolve));
    app.kill("SIGTERM");
    await exited;
  }
  await dev?.stop();
  if (root) rmSync(root, { recursive: true, force: true });
  console.log(`pack test timings (ms): ${JSON.stringify(timings)}`);
});

describe("the packed packages, installed outside the repository", () => {
  it("installs in a folder outside the checkout", () => {
    expect(relative(repoDir, root).startsWith("..")).toBe(true);
  });

  it("packs dist/ (ESM JavaScript and .d.ts), the sources for the source maps, and no tests", () => {
    expect(packed.map((p) => p.name).sort()).toEqual(["@opentab/client", "@opentab/express"]);
    for (const p of packed) {
      expect(p.files.map((f) => f.path).sort(), p.name).toEqual([
        "dist/index.d.ts",
        "dist/index.d.ts.map",
        "dist/index.js",
        "dist/index.js.map",
        "package.json",
        "src/index.ts",
      ]);
    }
  });

  it("serves an Express app priced with the installed @opentab/express under plain node: unpaid is 402", async () => {
    expect(installedExpress).toBe(pathToFileURL(join(appDir, "node_modules/@opentab/express/dist/index.js")).href);
    expect(await (await fetch(`${origin}/health`)).text()).toBe("ok");
    const unpaid = await fetch(`${origin}/v1/chat`, { method: "POST", body: "{}", headers: { "content-type": "application/json" } });
    expect(unpaid.status).toBe(402);
    const required = decodeHeader<PaymentRequired>(unpaid.headers.get(PAYMENT_REQUIRED)!);
    expect(required.accepts[0]!.amount).toBe("2000");
    expect(required.accepts[0]!.payTo.toLowerCase()).toBe(dev!.demo.payee.toLowerCase());
  });

  it("pays for a call with the installed @opentab/client under plain node: 200 with a receipt, twice", async () => {
    const demoPath = join(dev!.dataDir, "demo.json");
    for (const served of ["2000", "4000"]) {
      const { stdout } = await timed(`paying script, total ${served} (plain node)`, () =>
        run(process.execPath, ["pay.mjs", origin, demoPath], appDir),
      );
      const result = JSON.parse(stdout) as { status: number; body: unknown; receipt: PaymentResponse | null; resolved: string };
      expect(result.resolved).toBe(pathToFileURL(join(appDir, "node_modules/@opentab/client/dist/index.js")).href);
      expect(result.status).toBe(200);
      expect(result.body).toEqual({ answer: 42, prompt: "hi" });
      // The second run starts from the total the first one saved in totals.json.
      expect(result.receipt?.receipt).toMatchObject({ charged: "2000", served });
    }
  });

  it("types a TypeScript consumer with the installed .d.ts files", async () => {
    writeFileSync(join(appDir, "consumer.ts"), CONSUMER);
    writeFileSync(
      join(appDir, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          target: "ES2022",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          strict: true,
          noEmit: true,
          skipLibCheck: true,
          lib: ["ES2022", "DOM"],
          types: [],
        },
        files: ["consumer.ts"],
      }),
    );
    await timed("tsc on a consumer", () => run(process.execPath, [tsc, "-p", "."], appDir));
  });

  it("stops an app whose gateway secret is not set at start-up, naming the option", async () => {
    const started = startApp(userEnv({ OPENTAB_URL: dev!.demo.gateway.url, OPENTAB_GATEWAY_SECRET: undefined }));
    await expect(started).rejects.toThrow(/exited with 1[\s\S]*@opentab\/express: options\.secret is missing or empty/);
  });
});
