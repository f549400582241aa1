/**
 * The UI's own transactions against a real chain, without opentab: anvil with the compiled
 * `TestUSDC` and `SessionKeyValidator` (a 15-minute grace), and the UI's wallet code as the page
 * runs it — the injected wallet (through the test EIP-1193 wallet the browser test uses) and the
 * dev wallet (a local key and the RPC URL `GET /api/dev/wallet` hands out). Deposit with and
 * without an approval, a wallet short of USDC, a revert decoded by name, the withdrawal's grace
 * by chain time, and what lands in the wallet.
 */

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { createPublicClient, createWalletClient, http, type Abi, type Address, type Hex } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { erc20Abi, validatorAbi } from "../src/lib/contracts.ts";
import { cancelTabWithdrawal, completeTabWithdrawal, depositToTab, requestTabWithdrawal, type TxStep } from "../src/lib/tabs.ts";
import { chainFor, chainReader, devWallet, injectedWallet, type Wallet } from "../src/lib/wallet.ts";
import { testWallet } from "./injected-wallet.ts";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const anvilBin = process.env.OPENTAB_ANVIL ?? join(root, "contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
const artifact = (name: string) =>
  JSON.parse(readFileSync(join(root, "contracts/artifacts", `${name}.json`), "utf8")) as { abi: Abi; bytecode: Hex };
// anvil's first development account deploys.
const DEPLOYER: Hex = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const GRACE = 900;
const payee: Address = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

let anvil: ChildProcessWithoutNullStreams;
let rpcUrl: string;
let chainId: number;
let usdc: Address;
let validator: Address;

const rpc = async (method: string, params: unknown[] = []) => {
  const res = await fetch(rpcUrl, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }) });
  return ((await res.json()) as { result: unknown }).result;
};
const reader = () => createPublicClient({ transport: http(rpcUrl) });
const usdcOf = (who: Address) => reader().readContract({ address: usdc, abi: erc20Abi, functionName: "balanceOf", args: [who] });
const tabOf = (owner: Address) => reader().readContract({ address: validator, abi: validatorAbi, functionName: "tabOf", args: [owner, payee] });

/** A fresh owner with gas and `minted` USDC (anyone may mint the test token). */
async function fundedOwner(minted: bigint): Promise<Hex> {
  const key = generatePrivateKey();
  const account = privateKeyToAccount(key);
  await rpc("anvil_setBalance", [account.address, "0xde0b6b3a7640000"]);
  const mint = artifact("TestUSDC").abi;
  const client = createWalletClient({ account, chain: chainFor(chainId, rpcUrl), transport: http(rpcUrl) });
  const hash = await client.writeContract({ address: usdc, abi: mint, functionName: "mint", args: [account.address, minted] });
  await reader().waitForTransactionReceipt({ hash });
  return key;
}

beforeAll(async () => {
  anvil = spawn(anvilBin, ["--port", "0"]);
  rpcUrl = await new Promise<string>((resolve, reject) => {
    createInterface({ input: anvil.stdout }).on("line", (line) => {
      const m = /Listening on ([\d.]+:\d+)/.exec(line);
      if (m) resolve(`http://${m[1]}`);
    });
    anvil.on("exit", (code) => reject(new Error(`anvil exited (${code})`)));
  });
  chainId = Number(await rpc("eth_chainId"));
  const account = privateKeyToAccount(DEPLOYER);
  const client = createWalletClient({ account, chain: chainFor(chainId, rpcUrl), transport: http(rpcUrl) });
  const deploy = async (name: string, args: unknown[]) => {
    const { abi, bytecode } = artifact(name);
    const hash = await client.deployContract({ abi, bytecode, args });
    return (await reader().waitForTransactionReceipt({ hash })).contractAddress!;
  };
  usdc = await deploy("TestUSDC", []);
  validator = await deploy("SessionKeyValidator", ["opentab", "1", usdc, BigInt(GRACE)]);
});

afterAll(() => {
  anvil?.kill();
  vi.unstubAllGlobals();
});

function recorder() {
  const seen: string[] = [];
  let last: TxStep[] = [];
  const onSteps = (steps: TxStep[]) => {
    last = steps;
    for (const s of steps) {
      const line = `${s.label}${s.hash ? " tx" : ""}`;
      if (seen.at(-1) !== line && !seen.includes(line)) seen.push(line);
    }
  };
  return { seen, onSteps, last: () => last };
}

describe("the injected wallet (EIP-1193)", () => {
  let wallet: Wallet;
  let owner: Address;
  let calls: string[];

  beforeAll(async () => {
    const key = await fundedOwner(50_000_000n);
    const provider = testWallet(key, rpcUrl, chainId);
    calls = provider.calls;
    vi.stubGlobal("window", { ethereum: { request: provider.request, on() {}, removeListener() {} } });
    wallet = await injectedWallet();
    owner = wallet.address;
  });

  it("deposits: approve, then deposit, each with its hash, and the tab holds it", async () => {
    const on = { validator, usdc, chainId };
    const r = recorder();
    await depositToTab(wallet, on, payee, 20_000_000n, r.onSteps);
    expect(r.seen).toEqual(["Approving…", "Approving… tx", "Approved tx", "Depositing…", "Depositing… tx", "Deposited tx"]);
    expect(r.last().every((s) => /^0x[0-9a-f]{64}$/.test(s.hash ?? ""))).toBe(true);
    expect(await usdcOf(owner)).toBe(30_000_000n);
    expect((await tabOf(owner))[0]).toBe(20_000_000n);
    expect(calls.filter((c) => c === "eth_sendTransaction")).toHaveLength(2);
  });

  it("refuses, before sending, a deposit the wallet cannot pay, saying what it holds", async () => {
    const sentBefore = calls.filter((c) => c === "eth_sendTransaction").length;
    await expect(depositToTab(wallet, { validator, usdc, chainId }, payee, 30_000_001n, () => undefined)).rejects.toThrow(
      /holds 30 USDC; depositing 30\.000001 USDC needs 0\.000001 USDC more/,
    );
    expect(calls.filter((c) => c === "eth_sendTransaction")).toHaveLength(sentBefore);
  });

  it("names the contract's error when it would revert (a zero deposit)", async () => {
    await expect(depositToTab(wallet, { validator, usdc, chainId }, payee, 0n, () => undefined)).rejects.toThrow(
      "The contract refused the deposit: ZeroAmount (the amount must be more than zero).",
    );
  });

  it("withdraws only strictly after the grace, by chain time, and pays the wallet", async () => {
    const on = { validator, usdc, chainId };
    await requestTabWithdrawal(wallet, on, payee, 5_000_000n, () => undefined);
    const [, withdrawing, graceEndsAt] = await tabOf(owner);
    expect(withdrawing).toBe(5_000_000n);
    await expect(completeTabWithdrawal(wallet, on, payee, () => undefined)).rejects.toThrow(/WithdrawalNotReady \(it can be completed only after/);
    // The chain's clock, as the page reads it (the dev RPC, or the injected wallet).
    const clock = await chainReader(chainId);
    expect(clock).not.toBeNull();
    const before = Number((await clock!.getBlock({ blockTag: "latest" })).timestamp);
    expect(before).toBeLessThanOrEqual(Number(graceEndsAt));
    await rpc("evm_increaseTime", [GRACE + 1]);
    await rpc("evm_mine");
    expect(Number((await clock!.getBlock({ blockTag: "latest" })).timestamp)).toBeGreaterThan(Number(graceEndsAt));
    const r = recorder();
    await completeTabWithdrawal(wallet, on, payee, r.onSteps);
    expect(r.seen).toEqual(["Withdrawing…", "Withdrawing… tx", "Withdrawn tx"]);
    expect(await usdcOf(owner)).toBe(35_000_000n);
    expect(await tabOf(owner)).toEqual([15_000_000n, 0n, 0]);
  });

  it("cancels a pending withdrawal, and names NoPendingWithdrawal when there is none", async () => {
    const on = { validator, usdc, chainId };
    await requestTabWithdrawal(wallet, on, payee, 1_000_000n, () => undefined);
    await cancelTabWithdrawal(wallet, on, payee, () => undefined);
    expect((await tabOf(owner))[1]).toBe(0n);
    await expect(cancelTabWithdrawal(wallet, on, payee, () => undefined)).rejects.toThrow(/NoPendingWithdrawal/);
  });

  it("asks to switch chains, and says so when the wallet cannot", async () => {
    await expect(wallet.clients(1)).rejects.toThrow(/could not switch to chain 1/);
  });
});

describe("the dev wallet (local key, dev chain RPC)", () => {
  it("deposits without an approval when the allowance covers it", async () => {
    const key = await fundedOwner(10_000_000n);
    const real = globalThis.fetch;
    vi.stubGlobal("window", {});
    vi.stubGlobal("fetch", (input: RequestInfo | URL, init?: RequestInit) =>
      String(input) === "/api/dev/wallet"
        ? Promise.resolve(new Response(JSON.stringify({ privateKey: key, rpcUrl }), { headers: { "content-type": "application/json" } }))
        : real(input, init),
    );
    const wallet = (await devWallet())!;
    const c = await wallet.clients(chainId);
    const hash = await c.wallet.writeContract({ address: usdc, abi: erc20Abi, functionName: "approve", args: [validator, 10_000_000n], account: c.account });
    await c.public.waitForTransactionReceipt({ hash });
    const r = recorder();
    await depositToTab(wallet, { validator, usdc, chainId }, payee, 4_000_000n, r.onSteps);
    expect(r.seen).toEqual(["Depositing…", "Depositing… tx", "Deposited tx"]);
    expect((await tabOf(wallet.address))[0]).toBe(4_000_000n);
    expect(await usdcOf(wallet.address)).toBe(6_000_000n);
    vi.stubGlobal("fetch", real);
  });
});
