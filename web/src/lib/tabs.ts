/**
 * The owner's own transactions on their tabs, sent from their wallet: deposit (approve first if
 * the allowance is short), request, cancel and complete a withdrawal. Each flow reports its
 * steps with their transaction hashes as it goes, and fails with a sentence for the user: a
 * rejection in the wallet, a wallet short of USDC, or the contract's error by name.
 * Amounts are bigint base units throughout.
 */

import { BaseError, ContractFunctionRevertedError, type Address, type Hex } from "viem";
import { erc20Abi, validatorAbi } from "./contracts";
import { parseUsdc, short, usdc, utc } from "./format";
import { isUserRejection, type TxClients, type Wallet } from "./wallet";

/** Where the tabs live (from `GET /api/tabs`). */
export interface TabsChain {
  validator: Address;
  usdc: Address;
  chainId: number;
}

/** One transaction of a flow, as the user sees it. */
export interface TxStep {
  /** `Approving…` while under way, `Approved` once mined. */
  label: string;
  state: "active" | "done" | "failed";
  hash?: Hex;
}

export type OnSteps = (steps: TxStep[]) => void;

/** A flow's failure, already in words for the user. */
export class TxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TxError";
  }
}

const MAX_UINT128 = (1n << 128n) - 1n;
const MAX_UINT80 = (1n << 80n) - 1n;

type Checked = { ok: true; value: bigint } | { ok: false; error: string };

/** A deposit amount as typed (`25`, `0.5`, `$1.25`), exactly in base units, or what is wrong. */
export function validateDeposit(text: string): Checked {
  const parsed = parseUsdc(text);
  if (!parsed.ok) return parsed;
  if (parsed.value > MAX_UINT128) return { ok: false, error: "That is more than a tab can hold." };
  return parsed;
}

/** A withdrawal amount: at most what the tab holds (a new request replaces a pending one). */
export function validateWithdrawal(text: string, balance: bigint): Checked {
  const parsed = parseUsdc(text);
  if (!parsed.ok) return parsed;
  if (parsed.value > balance || parsed.value > MAX_UINT80) {
    return { ok: false, error: `The tab holds ${usdc(balance)} USDC; you can withdraw at most that.` };
  }
  return parsed;
}

/** The contract's custom errors, in words (with the amounts they carry). */
function explain(name: string, args: readonly unknown[]): string | null {
  const n = (i: number) => args[i] as bigint;
  switch (name) {
    case "InsufficientTab":
      return `the tab holds ${usdc(n(3))} USDC, ${usdc(n(2))} USDC asked`;
    case "NoPendingWithdrawal":
      return "this tab has no pending withdrawal";
    case "WithdrawalNotReady":
      return `it can be completed only after ${utc(Number(n(0)))}, chain time`;
    case "ZeroAmount":
      return "the amount must be more than zero";
    case "InvalidPayee":
      return `${short(args[0] as string)} cannot be paid through a tab`;
    case "ERC20InsufficientBalance":
      return `the wallet holds ${usdc(n(1))} USDC, ${usdc(n(2))} USDC needed`;
    case "ERC20InsufficientAllowance":
      return `the validator may take ${usdc(n(1))} USDC of your wallet's, ${usdc(n(2))} USDC needed`;
    case "SafeCastOverflowedUintDowncast":
      return "the amount is too large";
    default:
      return args.length > 0 ? args.map(String).join(", ") : null;
  }
}

/** What went wrong with the `what` (approval, deposit, …), for the user. */
export function txErrorMessage(err: unknown, what: string): string {
  if (err instanceof TxError) return err.message;
  if (isUserRejection(err)) return `You rejected the ${what} in your wallet; it was not sent.`;
  const revert = err instanceof BaseError ? err.walk((e) => e instanceof ContractFunctionRevertedError) : null;
  if (revert instanceof ContractFunctionRevertedError) {
    const { data } = revert;
    if (data && data.errorName !== "Error" && data.errorName !== "Panic") {
      const why = explain(data.errorName, data.args ?? []);
      return `The contract refused the ${what}: ${data.errorName}${why ? ` (${why})` : ""}.`;
    }
    const reason = revert.reason ?? (revert.signature ? `unknown error ${revert.signature}` : "no reason given");
    return `The contract refused the ${what}: ${reason}.`;
  }
  if (err instanceof BaseError) return `The ${what} failed: ${err.shortMessage}`;
  return `The ${what} failed: ${(err as Error).message}`;
}

/** Runs a flow's transactions one after another, reporting each. */
class Flow {
  private readonly steps: TxStep[] = [];
  constructor(private readonly onSteps: OnSteps) {}

  private emit() {
    this.onSteps(this.steps.map((s) => ({ ...s })));
  }

  /** Simulates first (a revert is decoded before anything is signed), sends, waits for the receipt. */
  async tx(
    labels: { active: string; done: string; what: string },
    c: TxClients,
    simulate: () => Promise<{ request: unknown }>,
  ): Promise<Hex> {
    const step: TxStep = { label: labels.active, state: "active" };
    this.steps.push(step);
    this.emit();
    try {
      const { request } = await simulate();
      // The simulated request carries the function, arguments, account and chain.
      const hash = await c.wallet.writeContract(request as Parameters<TxClients["wallet"]["writeContract"]>[0]);
      step.hash = hash;
      this.emit();
      const receipt = await c.public.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success") throw new TxError(`The ${labels.what} was mined but reverted (tx ${hash}).`);
      step.state = "done";
      step.label = labels.done;
      this.emit();
      return hash;
    } catch (err) {
      step.state = "failed";
      this.emit();
      throw new TxError(txErrorMessage(err, labels.what));
    }
  }
}

const ownerOf = (c: TxClients): Address => (typeof c.account === "string" ? c.account : c.account.address);

async function clientsFor(wallet: Wallet, chainId: number): Promise<TxClients> {
  try {
    return await wallet.clients(chainId);
  } catch (err) {
    throw new TxError(isUserRejection(err) ? "You declined in your wallet; nothing was sent." : (err as Error).message);
  }
}

/**
 * Deposits `amount` into the owner's tab with `payee`: checks the wallet holds the USDC (and
 * some ETH for gas), approves the validator for exactly `amount` if its allowance is short,
 * then deposits.
 */
export async function depositToTab(wallet: Wallet, on: TabsChain, payee: Address, amount: bigint, onSteps: OnSteps): Promise<void> {
  const c = await clientsFor(wallet, on.chainId);
  const owner = ownerOf(c);
  let held: bigint, allowance: bigint, gas: bigint;
  try {
    [held, allowance, gas] = await Promise.all([
      c.public.readContract({ address: on.usdc, abi: erc20Abi, functionName: "balanceOf", args: [owner] }),
      c.public.readContract({ address: on.usdc, abi: erc20Abi, functionName: "allowance", args: [owner, on.validator] }),
      c.public.getBalance({ address: owner }),
    ]);
  } catch (err) {
    throw new TxError(`Could not read your wallet's balances: ${err instanceof BaseError ? err.shortMessage : (err as Error).message}`);
  }
  if (held < amount) {
    throw new TxError(
      `Your wallet ${short(owner)} holds ${usdc(held)} USDC; depositing ${usdc(amount)} USDC needs ${usdc(amount - held)} USDC more.`,
    );
  }
  if (gas === 0n) throw new TxError(`Your wallet ${short(owner)} has no ETH to pay for gas.`);
  const flow = new Flow(onSteps);
  if (allowance < amount) {
    await flow.tx({ active: "Approving…", done: "Approved", what: "approval" }, c, () =>
      c.public.simulateContract({
        address: on.usdc,
        abi: erc20Abi,
        functionName: "approve",
        args: [on.validator, amount],
        account: c.account,
        chain: c.chain,
      }),
    );
  }
  await flow.tx({ active: "Depositing…", done: "Deposited", what: "deposit" }, c, () =>
    c.public.simulateContract({
      address: on.validator,
      abi: validatorAbi,
      functionName: "deposit",
      args: [payee, amount],
      account: c.account,
      chain: c.chain,
    }),
  );
}

/** Asks to take `amount` out of the tab with `payee` (replacing any pending request). */
export async function requestTabWithdrawal(wallet: Wallet, on: TabsChain, payee: Address, amount: bigint, onSteps: OnSteps): Promise<void> {
  const c = await clientsFor(wallet, on.chainId);
  await new Flow(onSteps).tx({ active: "Requesting withdrawal…", done: "Withdrawal requested", what: "withdrawal request" }, c, () =>
    c.public.simulateContract({
      address: on.validator,
      abi: validatorAbi,
      functionName: "requestWithdrawal",
      args: [payee, amount],
      account: c.account,
      chain: c.chain,
    }),
  );
}

/** Drops the pending withdrawal from the tab with `payee`. */
export async function cancelTabWithdrawal(wallet: Wallet, on: TabsChain, payee: Address, onSteps: OnSteps): Promise<void> {
  const c = await clientsFor(wallet, on.chainId);
  await new Flow(onSteps).tx({ active: "Cancelling the withdrawal…", done: "Withdrawal cancelled", what: "cancellation" }, c, () =>
    c.public.simulateContract({
      address: on.validator,
      abi: validatorAbi,
      functionName: "cancelWithdrawal",
      args: [payee],
      account: c.account,
      chain: c.chain,
    }),
  );
}

/** Completes the pending withdrawal from the tab with `payee` (only after its grace window). */
export async function completeTabWithdrawal(wallet: Wallet, on: TabsChain, payee: Address, onSteps: OnSteps): Promise<void> {
  const c = await clientsFor(wallet, on.chainId);
  await new Flow(onSteps).tx({ active: "Withdrawing…", done: "Withdrawn", what: "withdrawal" }, c, () =>
    c.public.simulateContract({
      address: on.validator,
      abi: validatorAbi,
      functionName: "withdraw",
      args: [payee],
      account: c.account,
      chain: c.chain,
    }),
  );
}
