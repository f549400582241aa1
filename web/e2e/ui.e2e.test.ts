/**
 * The owner journeys in real Chromium against a real `opentab dev` (anvil, SQLite, the gateway,
 * the built UI). The demo owner, with the dev wallet: create a key generated in the browser, pay
 * for calls with the TypeScript client and watch the usage bar move live, freeze and see a paid
 * call refused with 402, unfreeze, delete; deposit from the browser. A new owner, with their own
 * browser wallet (EIP-1193) and nothing but USDC and gas: sign in, try to create a key while the
 * tab with this service is empty (the form says up front to deposit first; submitted anyway,
 * opentab refuses with `tab_unfunded`), deposit through the refusal's link, create the key, pay,
 * request a withdrawal, and complete it once the chain's clock has passed the grace window.
 * (A key whose tab runs dry after it was made is flagged `tab-empty` on its card; opentab no
 * longer creates keys for empty tabs, so test/tabs.test.tsx covers that flag.) The demo key, set
 * through its rule settings form to 3 calls a minute, is frozen by the rate rule on its fourth
 * call; its page says why (4 calls seen, 4 a minute would not have fired), and the owner unfreezes
 * it with the rate rule switched to shadow for it, after which calls over the limit are served.
 * Screenshots go to e2e/artifacts/.
 */

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import { createPublicClient, createWalletClient, defineChain, getAddress, http, parseAbi, parseEventLogs, type Address, type Hex } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, expect, it } from "vitest";
import { receiptOf, wrapFetchWithPayment } from "../../packages/client/src/index.ts";
import { installWallet, testWallet } from "./injected-wallet.ts";

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

const shot = (name: string, on: Page = page) => on.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });

/** Pays for calls to the demo API as an agent would, with a session key. */
const payer = (privateKey: Hex) => {
  const pay = wrapFetchWithPayment(fetch, { privateKey, cap: "1" });
  return () => pay(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
};

it("an owner creates, watches, freezes, unfreezes and deletes a key", async () => {
  await page.goto(url);
  await page.getByRole("button", { name: /Use the dev wallet/ }).waitFor();
  await shot("1-sign-in");
  await page.getByRole("button", { name: /Use the dev wallet/ }).click();
  await page.getByRole("heading", { name: "Session keys" }).waitFor();
  await page.getByTestId("tab-balance").first().waitFor();
  // The demo owner chose opentab's rule guardian: bursts are frozen on-chain too.
  expect(await page.getByTestId("tabs-guardian").textContent()).toContain("frozen on-chain too");
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
  const call = payer(privateKey);
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

/** The dev chain, for test setup and for checking what the UI did on it. */
async function devChain() {
  const { rpcUrl, privateKey } = (await (await fetch(`${url}/api/dev/wallet`)).json()) as { rpcUrl: string; privateKey: Hex };
  const demoOwner = privateKeyToAccount(privateKey).address;
  const file = JSON.parse(readFileSync(join(dataDir, "chain.json"), "utf8")) as { usdc: Address; validator: Address; chainId: number };
  const chain = defineChain({
    id: file.chainId,
    name: "dev",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
  const rpc = async (method: string, params: unknown[] = []) =>
    ((await (await fetch(rpcUrl, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }) })).json()) as { result: unknown }).result;
  const reads = createPublicClient({ chain, transport: http(rpcUrl) });
  const tabOf = async (owner: Address, payee: Address) =>
    reads.readContract({ address: file.validator, abi: validatorReads, functionName: "tabOf", args: [owner, payee] });
  return { ...file, rpcUrl, demoOwner, chain, rpc, reads, tabOf };
}

const validatorReads = parseAbi([
  "function tabOf(address owner, address payee) view returns (uint128 balance, uint80 withdrawing, uint48 graceEndsAt)",
  "event Deposited(address indexed owner, address indexed payee, uint256 amount)",
]);

it("the dev wallet deposits from the browser to the demo owner's tab", async () => {
  const dev = await devChain();
  await page.setViewportSize({ width: 1200, height: 900 });
  await page.goto(`${url}/#/`);
  const tab = page.getByTestId("tab").first();
  await tab.getByTestId("tab-balance").waitFor();
  const payee = (await tab.getAttribute("data-payee")) as Address;
  await tab.getByRole("button", { name: "Deposit" }).click();
  await tab.getByLabel("Amount to deposit (USDC)").fill("1.25");
  await tab.getByRole("form").getByRole("button", { name: "Deposit" }).click();
  await expect.poll(() => tab.getByTestId("tx-steps").textContent(), { timeout: 30_000 }).toMatch(/Deposited tx 0x[0-9a-f]{64}/);
  // The page's transaction, on-chain: 1.25 USDC from the demo owner into the tab with the payee.
  const hash = (await tab.getByTestId("tx-hash").last().textContent()) as Hex;
  const receipt = await dev.reads.getTransactionReceipt({ hash });
  const [deposited] = parseEventLogs({ abi: validatorReads, eventName: "Deposited", logs: receipt.logs });
  expect(deposited?.args).toEqual({ owner: getAddress(dev.demoOwner), payee: getAddress(payee), amount: 1_250_000n });
  // The tab shows the chain's balance (settlements of the first journey's calls may land meanwhile).
  await expect
    .poll(async () => usdcUnits(await tab.getByTestId("tab-balance").textContent()) === (await dev.tabOf(dev.demoOwner, payee))[0], { timeout: 15_000 })
    .toBe(true);
});

it("a rule freezes a key; its owner sees why and unfreezes it with that rule in shadow", async () => {
  // The demo key (demo.json): the demo owner's, paid with by no other test here. Its rules start
  // from the defaults (100 calls a minute, enforced).
  const demo = JSON.parse(readFileSync(join(dataDir, "demo.json"), "utf8")) as { sessionKey: { address: string; privateKey: Hex } };
  const { address, privateKey } = demo.sessionKey;
  await page.setViewportSize({ width: 1200, height: 900 });
  await page.goto(`${url}/#/keys/${address}`);
  const status = page.getByTestId("status");
  await expect.poll(() => status.textContent(), { timeout: 15_000 }).toBe("active");
  const message = page.getByTestId("message");

  // The key's own setting, through the form: 3 calls a minute, enforced; the rest inherits.
  const rules = page.getByRole("form", { name: "Rule settings for this key" });
  await expect.poll(() => page.getByTestId("effective-callsPerMinute").textContent(), { timeout: 15_000 }).toContain("from seed");
  await rules.getByRole("checkbox", { name: "Inherit calls per minute" }).uncheck();
  await rules.getByLabel("Calls per minute", { exact: true }).fill("3");
  await rules.getByRole("checkbox", { name: "Inherit rate mode" }).uncheck();
  await rules.getByLabel("Rate mode", { exact: true }).selectOption("enforce");
  await rules.getByRole("button", { name: "Save rule settings" }).click();
  await expect.poll(() => message.textContent(), { timeout: 10_000 }).toContain("Rule settings saved: this key overrides calls per minute, rate mode.");
  await expect.poll(() => page.getByTestId("effective-callsPerMinute").textContent()).toMatch(/In force: 3\s*from key/);
  await expect.poll(() => page.getByTestId("effective-rateMode").textContent()).toMatch(/In force: enforce\s*from key/);
  await shot("13-rule-settings");

  // Four calls in a minute, all served: the rule fires once the fourth is recorded (4 > 3) and
  // freezes the key. Once the page shows why, the fifth call is refused.
  const call = payer(privateKey);
  for (let i = 0; i < 4; i++) {
    const paid = await call();
    expect(paid.status, paid.status === 200 ? "" : await paid.text()).toBe(200);
  }
  const decision = page.getByRole("region", { name: "Why this key was frozen" });
  await decision.waitFor({ timeout: 15_000 });
  await expect.poll(() => status.textContent(), { timeout: 10_000 }).toBe("frozen");
  const refused = await call();
  expect(refused.status).toBe(402);
  expect(await decision.getByTestId("decision-rule").textContent()).toBe("Too many calls in a minute");
  expect(await decision.getByTestId("seen-callsLastMinute").textContent()).toBe("4");
  expect(await decision.getByTestId("decision-threshold").textContent()).toBe("In force: a limit of 3 calls a minute.");
  expect(await decision.getByTestId("decision-would-not-fire").textContent()).toBe("A limit of 4 calls a minute would not have fired.");
  // The alerts list says the same beside the alert.
  const alert = page.getByTestId("alert").first();
  expect(await alert.textContent()).toContain("Too many calls in a minute");
  expect(await alert.getByTestId("alert-numbers").textContent()).toContain("In force: a limit of 3 calls a minute.");
  const changesBefore = await page.getByTestId("rule-change").count();
  expect(changesBefore).toBeGreaterThan(0);
  await shot("14-rule-froze");

  // One signed request: unfreeze, and the rate rule only alerts for this key from now on.
  await decision.getByRole("button", { name: /^Unfreeze and switch .+ to shadow$/ }).click();
  const dialog = page.getByRole("dialog");
  expect(await dialog.textContent()).toContain("only alerts for this key");
  await shot("15-unfreeze-to-shadow");
  await dialog.getByRole("button", { name: "Unfreeze and switch to shadow" }).click();
  await expect.poll(() => message.textContent(), { timeout: 15_000 }).toContain("Key unfrozen (");
  expect(await message.textContent()).toContain("The rate rule now only alerts for this key.");
  await expect.poll(() => status.textContent(), { timeout: 15_000 }).toBe("active");
  await expect.poll(() => decision.count(), { timeout: 10_000 }).toBe(0);
  await expect.poll(() => page.getByTestId("effective-rateMode").textContent(), { timeout: 10_000 }).toMatch(/In force: shadow\s*from key/);
  expect(await rules.getByLabel("Rate mode", { exact: true }).inputValue()).toBe("shadow");
  expect(await page.getByTestId("effective-callsPerMinute").textContent()).toMatch(/In force: 3\s*from key/);
  // The switch is recorded in the key's rule history.
  await expect.poll(() => page.getByTestId("rule-change").count(), { timeout: 10_000 }).toBeGreaterThan(changesBefore);

  // Five more calls, well over 3 a minute, all served. The gateway serves again once the chain
  // listener has seen the unfreeze (a moment later): the poll's first served call is the first of five.
  await expect.poll(async () => (await call()).status, { timeout: 10_000 }).toBe(200);
  for (let i = 0; i < 4; i++) {
    const paid = await call();
    expect(paid.status, paid.status === 200 ? "" : await paid.text()).toBe(200);
  }
  expect(await status.textContent()).toBe("active");
  await shot("16-shadow-served");
});

/** `12.5 USDC` → 12500000n. */
function usdcUnits(text: string | null): bigint {
  const m = /^(\d+)(?:\.(\d{1,6}))? USDC$/.exec((text ?? "").trim());
  if (!m) throw new Error(`not an amount: ${text}`);
  return BigInt(m[1]!) * 1_000_000n + BigInt((m[2] ?? "").padEnd(6, "0"));
}


it("a new owner does it all from the UI with their own wallet: deposit, key, pay, withdraw", async () => {
  // Test setup, not UI: a fresh account with gas and 50 test USDC (anyone may mint on the dev chain).
  const dev = await devChain();
  const { rpcUrl, chain, rpc } = dev;
  const usdcAbi = parseAbi(["function mint(address to, uint256 amount)", "function balanceOf(address) view returns (uint256)"]);
  const ownerKey = generatePrivateKey();
  const owner = privateKeyToAccount(ownerKey).address;
  await rpc("anvil_setBalance", [owner, "0xde0b6b3a7640000"]);
  const minter = createWalletClient({ account: privateKeyToAccount(ownerKey), chain, transport: http(rpcUrl) });
  await dev.reads.waitForTransactionReceipt({
    hash: await minter.writeContract({ address: dev.usdc, abi: usdcAbi, functionName: "mint", args: [owner, 50_000_000n] }),
  });
  const heldUsdc = () => dev.reads.readContract({ address: dev.usdc, abi: usdcAbi, functionName: "balanceOf", args: [owner] });
  expect(await heldUsdc()).toBe(50_000_000n);

  // The owner's browser, with their wallet extension (an EIP-1193 provider; the key stays in the test).
  const wallet = testWallet(ownerKey, rpcUrl, dev.chainId);
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  await installWallet(context, wallet);
  const p = await context.newPage();
  try {
    await p.goto(url);
    await p.getByRole("button", { name: "Sign in with your wallet" }).click();
    await p.getByRole("heading", { name: "Session keys" }).waitFor();
    expect((await p.getByTestId("owner").getAttribute("title"))?.toLowerCase()).toBe(owner.toLowerCase());
    // This service's tab is listed first, labelled, and empty.
    const tab = p.getByTestId("tab").first();
    expect(await tab.textContent()).toContain("this service");
    expect(await tab.getByTestId("tab-balance").textContent()).toBe("0 USDC");
    const servicePayee = (await tab.getAttribute("data-payee")) as Address;

    // A key asked for before any deposit: the form says up front to deposit first. Submitted
    // anyway, opentab refuses to relay it (the owner signed; nothing was sent on-chain), in its
    // own words, with the way to the deposit form.
    await p.getByRole("button", { name: "New key" }).click();
    const hint = p.getByTestId("create-tab-empty");
    await expect.poll(() => hint.textContent(), { timeout: 15_000 }).toContain("Your tab with this service holds 0 USDC");
    expect(await hint.getByRole("link", { name: "Deposit to this tab" }).getAttribute("href")).toBe(`#/deposit/${servicePayee}`);
    await shot("9a-create-deposit-first", p);
    await p.getByLabel("Spend limit (USDC)").fill("2");
    await p.getByRole("button", { name: "Create key" }).click();
    const refusal = p.getByTestId("create-failure");
    await expect.poll(() => refusal.textContent(), { timeout: 30_000 }).toContain("The key was not created");
    expect(await refusal.textContent()).toMatch(
      new RegExp(`at least 1 USDC free; yours holds 0 USDC: deposit to your tab with ${servicePayee} first`, "i"),
    );
    expect(await hint.count()).toBe(0);
    expect(wallet.sent).toHaveLength(0);
    await shot("9b-create-refused", p);

    // The refusal's link opens the deposit form for that tab: approve, then deposit, from the wallet.
    await refusal.getByRole("link", { name: "Deposit to this tab" }).click();
    const form = p.getByRole("form", { name: `Deposit to the tab with ${servicePayee}` });
    await form.getByLabel("Amount to deposit (USDC)").fill("5");
    await form.getByRole("button", { name: "Deposit" }).click();
    const steps = form.getByTestId("tx-steps");
    await expect.poll(() => steps.textContent(), { timeout: 30_000 }).toMatch(/Approved tx 0x[0-9a-f]{64}.*Deposited tx 0x[0-9a-f]{64}/);
    expect(wallet.sent).toHaveLength(2);
    expect(await steps.textContent()).toContain(wallet.sent[1]);
    await expect.poll(() => tab.getByTestId("tab-balance").textContent(), { timeout: 15_000 }).toBe("5 USDC");
    expect(await heldUsdc()).toBe(45_000_000n);
    await shot("10-deposited", p);

    // Now the form has nothing to say up front, and opentab creates the key.
    await p.getByRole("button", { name: "New key" }).click();
    await p.getByLabel("Spend limit (USDC)").fill("2");
    expect(await p.getByTestId("create-tab-empty").count()).toBe(0);
    await p.getByRole("button", { name: "Create key" }).click();
    const privateKey = (await p.getByTestId("private-key").textContent({ timeout: 30_000 }))?.trim() as Hex;
    const keyAddress = (await p.getByTestId("created-address").textContent())?.trim() ?? "";
    await p.getByRole("button", { name: /show the key/ }).click();
    await expect.poll(() => p.getByTestId("status").first().textContent(), { timeout: 15_000 }).toBe("active");
    // Its tab covers it: no flag; and the key pays.
    expect(await p.getByTestId("tab-empty").count()).toBe(0);
    const call = payer(privateKey);
    await expect.poll(async () => (await call()).status, { timeout: 10_000 }).toBe(200);
    for (let i = 0; i < 2; i++) expect((await call()).status).toBe(200);
    await p.getByRole("button", { name: "All keys" }).click();
    // The tab lists the key drawing on it.
    const onTab = await tab.getByTestId("tab-keys").locator("a").evaluateAll((links) => links.map((a) => a.getAttribute("href")?.toLowerCase()));
    expect(onTab).toContain(`#/keys/${keyAddress.toLowerCase()}`);

    // Ask for 4 USDC back: it waits out the grace window, Complete stays off and says why.
    await tab.getByRole("button", { name: "Withdraw" }).click();
    const withdrawForm = p.getByRole("form", { name: `Withdraw from the tab with ${servicePayee}` });
    await withdrawForm.getByLabel("Amount to withdraw (USDC)").fill("4");
    await withdrawForm.getByRole("button", { name: "Request withdrawal" }).click();
    // Mined: the form closes, the request's transaction shows with the tab.
    const withdrawal = tab.getByTestId("tx-steps").filter({ hasText: "Withdraw" });
    await expect.poll(() => withdrawal.textContent(), { timeout: 30_000 }).toMatch(/Withdrawal requested tx 0x[0-9a-f]{64}/);
    expect(await withdrawForm.count()).toBe(0);
    await expect.poll(() => tab.getByTestId("tab-pending").textContent(), { timeout: 15_000 }).toBe("4 USDC");
    const complete = tab.getByRole("button", { name: "Complete withdrawal" });
    expect(await complete.isDisabled()).toBe(true);
    expect(await tab.getByTestId("withdrawal-countdown").textContent()).toMatch(/Can be completed in .+ \(chain time\)/);
    await shot("11-withdrawal-pending", p);

    // A day later on the chain (the test moves anvil's clock): Complete turns on by chain time.
    const [, withdrawing, graceEndsAt] = await dev.tabOf(owner, servicePayee);
    expect(withdrawing).toBe(4_000_000n);
    const latest = await dev.reads.getBlock({ blockTag: "latest" });
    await rpc("evm_increaseTime", [graceEndsAt - Number(latest.timestamp) + 1]);
    await rpc("evm_mine");
    await expect.poll(() => complete.isEnabled(), { timeout: 15_000 }).toBe(true);
    expect(await tab.getByTestId("withdrawal-countdown").textContent()).toContain("Ready");
    await complete.click();
    await expect.poll(() => withdrawal.textContent(), { timeout: 30_000 }).toMatch(/Withdrawn tx 0x[0-9a-f]{64}/);
    expect(wallet.sent).toHaveLength(4);

    // The wallet has its 4 USDC back; the tab keeps what the three calls cost, which the payee settled.
    expect(await heldUsdc()).toBe(49_000_000n);
    await expect.poll(() => tab.getByTestId("tab-pending").textContent(), { timeout: 15_000 }).toBe("none");
    await expect.poll(() => tab.getByTestId("tab-balance").textContent(), { timeout: 15_000 }).toBe("0.994 USDC");
    expect(await tab.getByTestId("tab-available").textContent()).toBe("0.994 USDC");
    await shot("12-withdrawn", p);
  } finally {
    await context.close();
  }
});
