/**
 * The whole owner journey in real Chromium against a real `opentab dev` (anvil, SQLite, the
 * gateway, the built UI): sign in with the dev wallet, create a key generated in the browser,
 * pay for calls with the TypeScript client and watch the usage bar move live, freeze and see a
 * paid call refused with 402, unfreeze, delete. Screenshots go to e2e/artifacts/.
 */

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { receiptOf, wrapFetchWithPayment } from "../../packages/client/src/index.ts";

const root = fileURLToPath(new URL("../..", import.meta.url));
const binary = process.env.OPENTAB_BIN ?? join(root, "target/debug/opentab");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const artifacts = fileURLToPath(new URL("./artifacts", import.meta.url));

let dev: ChildProcessWithoutNullStreams;
let dataDir: string;
let url: string;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  mkdirSync(artifacts, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), "opentab-ui-"));
  dev = spawn(binary, ["dev", "--port", "0", "--anvil-port", "0", "--data-dir", dataDir, "--web-dir", join(root, "web/dist")], {
    env: { ...process.env, RUST_LOG: "warn" },
  });
  let stderr = "";
  dev.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: dev.stdout }).on("line", (line) => line.startsWith("ready") && resolve());
    dev.on("exit", (code) => reject(new Error(`opentab dev exited (${code}):\n${stderr}`)));
  });
  url = (JSON.parse(readFileSync(join(dataDir, "demo.json"), "utf8")) as { url: string }).url;
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
});

afterAll(async () => {
  await browser?.close();
  if (dev) {
    const exited = new Promise((r) => dev.on("exit", r));
    dev.kill("SIGINT");
    await exited;
  }
  rmSync(dataDir, { recursive: true, force: true });
});

const shot = (name: string) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });

it("an owner creates, watches, freezes, unfreezes and deletes a key", async () => {
  await page.goto(url);
  await page.getByRole("button", { name: /Use the dev wallet/ }).waitFor();
  await shot("1-sign-in");
  await page.getByRole("button", { name: /Use the dev wallet/ }).click();
  await page.getByRole("heading", { name: "Session keys" }).waitFor();
  await page.getByTestId("escrow-balance").waitFor();
  // The demo owner chose opentab's rule guardian: bursts are frozen on-chain too.
  expect(await page.getByTestId("escrow-guardian").textContent()).toContain("frozen on-chain too");
  await shot("2-keys");

  // Create a key generated in the browser; the form checks its fields first.
  await page.getByRole("button", { name: "New key" }).click();
  await page.getByRole("button", { name: "Create key" }).click();
  await expect.poll(() => page.getByRole("alert").first().textContent()).toContain("Enter an amount");
  // 0.0105 USDC: the fifth 0.002 call leaves under 10% of it, which the rule engine flags.
  await page.getByLabel("Spend limit (USDC)").fill("0.0105");
  await shot("3-create");
  await page.getByRole("button", { name: "Create key" }).click();
  const privateKey = (await page.getByTestId("private-key").textContent({ timeout: 30_000 }))?.trim() as `0x${string}`;
  const address = (await page.getByTestId("created-address").textContent())?.trim() ?? "";
  expect(privateKey).toMatch(/^0x[0-9a-f]{64}$/);
  await shot("4-created");
  await page.getByRole("button", { name: /show the key/ }).click();
  const status = page.getByTestId("status").first();
  await expect.poll(() => status.textContent(), { timeout: 15_000 }).toBe("active");

  // Pay for three calls as an agent would: the bar moves within a moment (live events).
  const pay = wrapFetchWithPayment(fetch, { privateKey, cap: "1" });
  const call = () =>
    pay(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
  for (let i = 0; i < 3; i++) expect((await call()).status).toBe(200);
  const paidAt = Date.now();
  await expect.poll(() => page.getByTestId("served").textContent(), { timeout: 3_000, interval: 20 }).toContain("0.006 / 0.0105 USDC");
  console.log(`the usage bar showed the paid calls ${Date.now() - paidAt} ms after the last one was answered`);
  await shot("5-detail-live");

  // Freeze: the badge turns at once (optimistically); once opentab has answered, the very next
  // paid call is refused, before any block is awaited by the gateway.
  await page.getByRole("button", { name: "Freeze" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Freeze" }).click();
  await expect.poll(() => status.textContent()).toBe("frozen");
  await page.getByText(/Key frozen \(transaction/).waitFor({ timeout: 15_000 });
  const refused = await call();
  expect(refused.status).toBe(402);
  expect(((await refused.json()) as { error: string }).error).toBe("key_frozen");
  await shot("6-frozen");

  // Unfreeze: paid calls work again once the chain confirms it.
  await page.getByRole("button", { name: "Unfreeze" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Unfreeze" }).click();
  await page.getByText(/Key unfrozen \(transaction/).waitFor({ timeout: 15_000 });
  await expect.poll(() => status.textContent(), { timeout: 15_000 }).toBe("active");
  // The gateway serves again when the chain listener has seen the unfreeze (a moment later).
  await expect.poll(async () => (await call()).status, { timeout: 10_000 }).toBe(200);
  const paid = await call();
  expect(paid.status, paid.status === 200 ? "" : await paid.text()).toBe(200);
  expect(receiptOf(paid)?.receipt.sessionKey.toLowerCase()).toBe(address.toLowerCase());
  expect(receiptOf(paid)?.receipt.remaining).toBe("500");

  // That call left 0.0005 of 0.0105 USDC: the rule engine's low-balance alert shows with its reason.
  const alert = page.getByTestId("alert").first();
  await expect.poll(() => alert.textContent(), { timeout: 10_000 }).toContain("Limit almost used up");
  expect(await alert.textContent()).toContain("0.0005 USDC of the 0.0105 USDC limit left, under 10%");
  await shot("7-alert");

  // Delete: confirmed, revoked on-chain, gone from the list.
  await page.getByRole("button", { name: "Delete" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Delete" }).click();
  await page.getByRole("heading", { name: "Session keys" }).waitFor();
  await expect.poll(() => page.locator(`[data-address="${address}"]`).count(), { timeout: 15_000 }).toBe(0);
  await expect.poll(async () => (await call()).status, { timeout: 10_000 }).toBe(402);

  // Phone width: the list still reads.
  await page.setViewportSize({ width: 390, height: 844 });
  await shot("8-phone");
});
