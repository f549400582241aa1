/**
 * Starts a real `opentab dev` (anvil, SQLite, the gateway and its demo API) for a test file and
 * reads its demo.json. The binary is `$OPENTAB_BIN`, else the workspace's debug build (the
 * test command builds it first).
 */

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import type { Address, Hex } from "viem";

export interface Demo {
  url: string;
  routes: { method: string; path: string; price: string; exampleBody: unknown }[];
  sessionKey: { address: Address; privateKey: Hex };
  owner: Address;
  payee: Address;
  validator: Address;
  usdc: Address;
  chainId: number;
  rpcUrl: string;
  gateway: { url: string; secret: string };
}

export interface Dev {
  demo: Demo;
  dataDir: string;
  binary: string;
  stop(): Promise<void>;
}

export const binary = process.env.OPENTAB_BIN ?? fileURLToPath(new URL("../../../target/debug/opentab", import.meta.url));

export async function startDev(): Promise<Dev> {
  const dataDir = mkdtempSync(join(tmpdir(), "opentab-ts-"));
  const child: ChildProcessWithoutNullStreams = spawn(
    binary,
    ["dev", "--port", "0", "--anvil-port", "0", "--data-dir", dataDir],
    { env: { ...process.env, RUST_LOG: "warn" } },
  );
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      if (line.startsWith("ready")) resolve();
    });
    child.on("exit", (code) => reject(new Error(`opentab dev exited with ${code} before it was ready:\n${stderr}`)));
    child.on("error", (err) => reject(new Error(`cannot start ${binary} (build it with cargo build -p opentab): ${err}`)));
  });
  const demo = JSON.parse(readFileSync(join(dataDir, "demo.json"), "utf8")) as Demo;
  return {
    demo,
    dataDir,
    binary,
    async stop() {
      const exited = new Promise((resolve) => child.on("exit", resolve));
      child.kill("SIGINT");
      await exited;
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
