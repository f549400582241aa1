import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { SWRConfig } from "swr";
import {
  ContractFunctionExecutionError,
  ContractFunctionRevertedError,
  encodeErrorResult,
  UserRejectedRequestError,
  type Address,
  type Hex,
} from "viem";
import { afterEach, describe, expect, it, vi } from "vitest";
import { KeyCard } from "@/components/KeyList";
import { tabCoverage } from "@/components/TabCoverage";
import { DepositForm, TabCard, TabsPanel } from "@/components/TabsPanel";
import type { BlockReader } from "@/hooks/useChainTime";
import type { KeyView, Tab, Tabs } from "@/lib/api";
import { validatorAbi } from "@/lib/contracts";
import { txErrorMessage, validateDeposit, validateWithdrawal } from "@/lib/tabs";
import type { TxClients, Wallet } from "@/lib/wallet";

const now = Math.floor(Date.now() / 1000);
const owner: Address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const servicePayee: Address = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
const otherPayee: Address = "0x1111111111111111111111111111111111111111";
const on = {
  validator: "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512" as Address,
  usdc: "0x5FbDB2315678afecb367f032d93F642f64180aa3" as Address,
  chainId: 31337,
  grace: 86_400,
};
const APPROVE_TX: Hex = `0x${"a".repeat(64)}`;
const DEPOSIT_TX: Hex = `0x${"d".repeat(64)}`;

const tabs: Tabs = {
  owner,
  ...on,
  payee: servicePayee,
  guardian: null,
  ruleGuardian: "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
  tabs: [
    // Another payee's tab comes first from the server: the panel puts this service's first.
    { payee: otherPayee, balance: "7000000", available: "7000000", pendingWithdrawal: null, withdrawalReadyAt: null, keys: [] },
    {
      payee: servicePayee,
      balance: "25000000",
      available: "20000000",
      pendingWithdrawal: "5000000",
      withdrawalReadyAt: now + 3 * 3_600,
      keys: ["0xbEe561cCf43dedA33C4A5cdbaBB245B2b9fA1b77"],
    },
  ],
};

const key: KeyView = {
  address: "0xbee561ccf43deda33c4a5cdbabb245b2b9fa1b77",
  owner,
  payee: servicePayee,
  status: "active",
  limit: "5000000",
  validAfter: now - 60,
  validUntil: now + 7 * 86_400,
  frozenAt: null,
  revokedAt: null,
  deletedAt: null,
  usage: { served: "2000000", settled: "1500000", pending: "500000", remaining: "3000000", percentUsed: 40 },
  createdAt: now - 3_600,
  lastActivityAt: null,
  tabFree: "3000000",
};

const fresh = (ui: React.ReactNode) => render(<SWRConfig value={{ provider: () => new Map(), dedupingInterval: 0 }}>{ui}</SWRConfig>);

function json(body: unknown, status = 200) {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

/** A wallet whose transaction clients are mocks: the UI's logic, not viem's or a chain's. */
function mockWallet(o: { usdcHeld?: bigint; allowance?: bigint; write?: (req: { functionName: string }) => Promise<Hex> } = {}) {
  const receipts: Record<string, () => void> = {};
  const pub = {
    readContract: vi.fn(async ({ functionName }: { functionName: string }) =>
      functionName === "balanceOf" ? (o.usdcHeld ?? 100_000_000n) : (o.allowance ?? 0n),
    ),
    getBalance: vi.fn(async () => 10n ** 18n),
    simulateContract: vi.fn(async (args: Record<string, unknown>) => ({ request: args })),
    // Each receipt arrives when the test says so (`mine(hash)`).
    waitForTransactionReceipt: vi.fn(
      ({ hash }: { hash: Hex }) => new Promise((resolve) => (receipts[hash] = () => resolve({ status: "success" }))),
    ),
  };
  const walletClient = {
    writeContract: vi.fn(o.write ?? (async (req: { functionName: string }) => (req.functionName === "approve" ? APPROVE_TX : DEPOSIT_TX))),
  };
  const clients = { account: owner, chain: { id: 31337 }, wallet: walletClient, public: pub } as unknown as TxClients;
  const wallet: Wallet = {
    kind: "injected",
    address: owner,
    signMessage: vi.fn(),
    signTypedData: vi.fn(),
    clients: vi.fn(async () => clients),
  };
  const mine = async (hash: Hex) => {
    await waitFor(() => expect(receipts[hash]).toBeDefined());
    receipts[hash]!();
  };
  return { wallet, pub, walletClient, mine };
}

afterEach(() => vi.unstubAllGlobals());

describe("the tabs panel", () => {
  it("lists this service's tab first, labelled, with its money, pending withdrawal and keys; then the others; and the guardian", async () => {
    vi.stubGlobal("fetch", vi.fn(async () => json(tabs)));
    fresh(<TabsPanel wallet={() => Promise.reject(new Error("unused"))} reader={async () => null} />);
    const rows = await screen.findAllByTestId("tab");
    expect(rows.map((r) => r.dataset.payee)).toEqual([servicePayee, otherPayee]);
    const first = within(rows[0]!);
    expect(first.getByText("this service")).toBeInTheDocument();
    expect(first.getByTestId("tab-balance")).toHaveTextContent("25 USDC");
    expect(first.getByTestId("tab-available")).toHaveTextContent("20 USDC");
    expect(first.getByTestId("tab-pending")).toHaveTextContent("5 USDC");
    expect(first.getByRole("link", { name: "0xbEe5…1b77" })).toHaveAttribute("href", "#/keys/0xbEe561cCf43dedA33C4A5cdbaBB245B2b9fA1b77");
    const second = within(rows[1]!);
    expect(second.queryByText("this service")).toBeNull();
    expect(second.getByTestId("tab-balance")).toHaveTextContent("7 USDC");
    expect(second.getByTestId("tab-pending")).toHaveTextContent("none");
    expect(second.getByTestId("tab-keys")).toHaveTextContent("none");
    expect(screen.getByTestId("tabs-guardian")).toHaveTextContent("rules freeze keys at the gateway only");
  });

  it("shows this service's tab at 0 even if the server left it out, and opens a key's deposit link on its payee", async () => {
    vi.stubGlobal("fetch", vi.fn(async () => json({ ...tabs, tabs: [] })));
    fresh(<TabsPanel wallet={() => Promise.reject(new Error("unused"))} reader={async () => null} depositFor={otherPayee} />);
    const rows = await screen.findAllByTestId("tab");
    expect(rows.map((r) => r.dataset.payee)).toEqual([servicePayee, otherPayee]);
    expect(within(rows[0]!).getByTestId("tab-balance")).toHaveTextContent("0 USDC");
    expect(within(rows[1]!).getByRole("form", { name: `Deposit to the tab with ${otherPayee}` })).toBeInTheDocument();
    expect(within(rows[1]!).getByLabelText("Amount to deposit (USDC)")).toHaveFocus();
  });
});

describe("a key its tab cannot cover", () => {
  it("is flagged empty, with the reason and a link to the deposit form for its payee", () => {
    fresh(<ul><KeyCard keyView={{ ...key, tabFree: "0" }} onOpen={() => undefined} servicePayee={servicePayee.toLowerCase()} /></ul>);
    const flag = screen.getByTestId("tab-empty");
    expect(flag).toHaveTextContent(
      "This key's tab with 0x3C44…93BC (this service) is empty: every call will be refused with insufficient_funds.",
    );
    expect(within(flag).getByRole("link", { name: "Deposit to this tab" })).toHaveAttribute("href", `#/deposit/${servicePayee}`);
  });

  it("gets a softer note when the tab covers only part of what is left, and nothing when it covers all", () => {
    const { rerender } = fresh(<ul><KeyCard keyView={{ ...key, tabFree: "1250000" }} onOpen={() => undefined} /></ul>);
    expect(screen.queryByTestId("tab-empty")).toBeNull();
    expect(screen.getByTestId("tab-short")).toHaveTextContent("covers 1.25 USDC more of this key's 3 USDC remaining");
    expect(within(screen.getByTestId("tab-short")).getByRole("link", { name: "Deposit more" })).toHaveAttribute("href", `#/deposit/${servicePayee}`);
    rerender(<SWRConfig value={{ provider: () => new Map() }}><ul><KeyCard keyView={key} onOpen={() => undefined} /></ul></SWRConfig>);
    expect(screen.queryByTestId("tab-short")).toBeNull();
    expect(screen.queryByTestId("tab-empty")).toBeNull();
  });

  it("is judged by status and what is left of the limit, exactly (bigint)", () => {
    expect(tabCoverage({ ...key, tabFree: "0" })).toBe("empty");
    expect(tabCoverage({ ...key, status: "pending", tabFree: "0" })).toBe("empty");
    expect(tabCoverage({ ...key, status: "frozen", tabFree: "0" })).toBeNull(); // refused as frozen anyway
    expect(tabCoverage({ ...key, status: "revoked", tabFree: "0" })).toBeNull();
    expect(tabCoverage({ ...key, tabFree: "0", usage: { ...key.usage, remaining: "0" } })).toBeNull(); // used up
    expect(tabCoverage({ ...key, tabFree: "2999999" })).toBe("short");
    expect(tabCoverage({ ...key, tabFree: "3000000" })).toBeNull();
    expect(tabCoverage({ ...key, tabFree: undefined })).toBeNull(); // a server before tabs
    const huge = "340282366920938463463374607431768211455";
    expect(tabCoverage({ ...key, limit: huge, tabFree: "340282366920938463463374607431768211454", usage: { ...key.usage, remaining: huge } })).toBe("short");
  });
});

describe("the deposit form", () => {
  it("parses amounts exactly into base units, or says what is wrong", () => {
    expect(validateDeposit("1.5")).toEqual({ ok: true, value: 1_500_000n });
    expect(validateDeposit("$0.000001")).toEqual({ ok: true, value: 1n });
    expect(validateDeposit("123456789.123456")).toEqual({ ok: true, value: 123_456_789_123_456n });
    expect(validateDeposit("")).toMatchObject({ ok: false, error: expect.stringContaining("Enter an amount") });
    expect(validateDeposit("0")).toMatchObject({ ok: false, error: expect.stringContaining("more than zero") });
    expect(validateDeposit("1.0000001")).toMatchObject({ ok: false, error: expect.stringContaining("6 decimals") });
    expect(validateDeposit("1,5")).toMatchObject({ ok: false, error: expect.stringContaining("digits") });
    expect(validateDeposit("-1")).toMatchObject({ ok: false });
    expect(validateDeposit("1e6")).toMatchObject({ ok: false });
    expect(validateDeposit("340282366920938463463374607431768.211456")).toMatchObject({ ok: false, error: expect.stringContaining("more than a tab") });
    expect(validateWithdrawal("5", 5_000_000n)).toEqual({ ok: true, value: 5_000_000n });
    expect(validateWithdrawal("5.000001", 5_000_000n)).toMatchObject({ ok: false, error: "The tab holds 5 USDC; you can withdraw at most that." });
  });

  it("shows a wrong amount beside the field and sends nothing", async () => {
    const { wallet } = mockWallet();
    const user = userEvent.setup();
    fresh(<DepositForm on={on} payee={servicePayee} wallet={async () => wallet} onDone={() => undefined} onClose={() => undefined} />);
    await user.type(screen.getByLabelText("Amount to deposit (USDC)"), "1.0000001");
    await user.click(screen.getByRole("button", { name: "Deposit" }));
    expect(screen.getByLabelText("Amount to deposit (USDC)")).toHaveAttribute("aria-invalid", "true");
    expect(screen.getByRole("alert")).toHaveTextContent("USDC has 6 decimals at most.");
    expect(wallet.clients).not.toHaveBeenCalled();
  });

  it("approves exactly the amount when the allowance is short, then deposits, step by step with the hashes", async () => {
    const { wallet, pub, walletClient, mine } = mockWallet({ allowance: 1_000_000n });
    const done = vi.fn();
    const user = userEvent.setup();
    fresh(<DepositForm on={on} payee={servicePayee} wallet={async () => wallet} onDone={done} onClose={() => undefined} />);
    await user.type(screen.getByLabelText("Amount to deposit (USDC)"), "1.5");
    await user.click(screen.getByRole("button", { name: "Deposit" }));
    const steps = await screen.findByTestId("tx-steps");
    await waitFor(() => expect(steps).toHaveTextContent(`Approving… tx ${APPROVE_TX}`));
    expect(wallet.clients).toHaveBeenCalledWith(31337);
    expect(pub.simulateContract).toHaveBeenCalledWith(
      expect.objectContaining({ address: on.usdc, functionName: "approve", args: [on.validator, 1_500_000n], account: owner }),
    );
    await mine(APPROVE_TX);
    await waitFor(() => expect(steps).toHaveTextContent(`Depositing… tx ${DEPOSIT_TX}`));
    expect(steps).toHaveTextContent(`Approved tx ${APPROVE_TX}`);
    expect(pub.simulateContract).toHaveBeenLastCalledWith(
      expect.objectContaining({ address: on.validator, functionName: "deposit", args: [servicePayee, 1_500_000n] }),
    );
    expect(done).not.toHaveBeenCalled();
    await mine(DEPOSIT_TX);
    await waitFor(() => expect(steps).toHaveTextContent(`Deposited tx ${DEPOSIT_TX}`));
    expect(screen.getByRole("status")).toHaveTextContent("Deposited 1.5 USDC to your tab with 0x3C44…93BC.");
    expect(done).toHaveBeenCalledOnce();
    expect(walletClient.writeContract).toHaveBeenCalledTimes(2);
  });

  it("skips the approval when the allowance covers the amount", async () => {
    const { wallet, walletClient, mine } = mockWallet({ allowance: 2_000_000n });
    const user = userEvent.setup();
    fresh(<DepositForm on={on} payee={servicePayee} wallet={async () => wallet} onDone={() => undefined} onClose={() => undefined} />);
    await user.type(screen.getByLabelText("Amount to deposit (USDC)"), "2");
    await user.click(screen.getByRole("button", { name: "Deposit" }));
    await mine(DEPOSIT_TX);
    await waitFor(() => expect(screen.getByTestId("tx-steps")).toHaveTextContent(`Deposited tx ${DEPOSIT_TX}`));
    expect(screen.getByTestId("tx-steps")).not.toHaveTextContent("Approv");
    expect(walletClient.writeContract).toHaveBeenCalledOnce();
  });

  it("says how much the wallet holds when it is short, before sending anything", async () => {
    const { wallet, walletClient } = mockWallet({ usdcHeld: 1_000_000n });
    const user = userEvent.setup();
    fresh(<DepositForm on={on} payee={servicePayee} wallet={async () => wallet} onDone={() => undefined} onClose={() => undefined} />);
    await user.type(screen.getByLabelText("Amount to deposit (USDC)"), "5");
    await user.click(screen.getByRole("button", { name: "Deposit" }));
    expect(await screen.findByTestId("tx-error")).toHaveTextContent(
      "Your wallet 0x7099…79C8 holds 1 USDC; depositing 5 USDC needs 4 USDC more.",
    );
    expect(walletClient.writeContract).not.toHaveBeenCalled();
  });

  it("says clearly when the transaction is rejected in the wallet", async () => {
    const { wallet } = mockWallet({
      allowance: 10_000_000n,
      write: async () => {
        throw new UserRejectedRequestError(new Error("MetaMask Tx Signature: User denied transaction signature."));
      },
    });
    const done = vi.fn();
    const user = userEvent.setup();
    fresh(<DepositForm on={on} payee={servicePayee} wallet={async () => wallet} onDone={done} onClose={() => undefined} />);
    await user.type(screen.getByLabelText("Amount to deposit (USDC)"), "3");
    await user.click(screen.getByRole("button", { name: "Deposit" }));
    expect(await screen.findByTestId("tx-error")).toHaveTextContent("You rejected the deposit in your wallet; it was not sent.");
    expect(screen.getByText("The deposit did not go through")).toBeInTheDocument();
    expect(screen.getByTestId("tx-steps").querySelector("li")).toHaveAttribute("data-state", "failed");
    expect(screen.getByRole("button", { name: "Deposit" })).toBeEnabled();
    expect(done).not.toHaveBeenCalled();
  });
});

/** What viem throws when a simulation reverts with one of the contract's errors. */
function reverted(errorName: string, args: readonly unknown[], functionName = "withdraw") {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const data = encodeErrorResult({ abi: validatorAbi, errorName, args } as any);
  const cause = new ContractFunctionRevertedError({ abi: validatorAbi, data, functionName });
  return new ContractFunctionExecutionError(cause, { abi: validatorAbi, functionName, args: [servicePayee], contractAddress: on.validator });
}

describe("contract errors", () => {
  it("are named and explained with their amounts", () => {
    expect(txErrorMessage(reverted("WithdrawalNotReady", [1_700_086_400]), "withdrawal")).toBe(
      "The contract refused the withdrawal: WithdrawalNotReady (it can be completed only after 2023-11-15 22:13 UTC, chain time).",
    );
    expect(txErrorMessage(reverted("InsufficientTab", [owner, servicePayee, 9_000_000n, 2_500_000n], "requestWithdrawal"), "withdrawal request")).toBe(
      "The contract refused the withdrawal request: InsufficientTab (the tab holds 2.5 USDC, 9 USDC asked).",
    );
    expect(txErrorMessage(reverted("NoPendingWithdrawal", [owner, servicePayee], "cancelWithdrawal"), "cancellation")).toContain(
      "NoPendingWithdrawal (this tab has no pending withdrawal)",
    );
    expect(txErrorMessage(reverted("ZeroAmount", [], "deposit"), "deposit")).toBe(
      "The contract refused the deposit: ZeroAmount (the amount must be more than zero).",
    );
  });
});

describe("a pending withdrawal", () => {
  const pending: Tab = tabs.tabs[1]!;
  const card = (at: number, clock: "chain" | "clock" = "chain", wallet?: Wallet) => (
    <ul>
      <TabCard
        tab={pending}
        on={on}
        service
        now={at}
        clock={clock}
        wallet={async () => wallet ?? mockWallet().wallet}
        onChanged={() => undefined}
      />
    </ul>
  );

  it("counts down to when it can be completed, with Complete off and why, then on", () => {
    const readyAt = pending.withdrawalReadyAt!;
    const { rerender } = fresh(card(readyAt - 2 * 3_600 - 5 * 60));
    const complete = screen.getByRole("button", { name: "Complete withdrawal" });
    expect(complete).toBeDisabled();
    const why = screen.getByTestId("withdrawal-countdown");
    expect(complete).toHaveAttribute("aria-describedby", why.id);
    expect(why).toHaveTextContent("Can be completed in 2h 05m");
    expect(why).toHaveTextContent("(chain time)");
    expect(why).toHaveTextContent("the payee can still settle calls it already served");
    expect(screen.getByRole("button", { name: "Cancel withdrawal" })).toBeEnabled();
    rerender(<SWRConfig value={{ provider: () => new Map() }}>{card(readyAt - 9, "clock")}</SWRConfig>);
    expect(screen.getByTestId("withdrawal-countdown")).toHaveTextContent("Can be completed in 9s");
    expect(screen.getByTestId("withdrawal-countdown")).toHaveTextContent("by this computer's clock");
    expect(screen.getByRole("button", { name: "Complete withdrawal" })).toBeDisabled();
    rerender(<SWRConfig value={{ provider: () => new Map() }}>{card(readyAt)}</SWRConfig>);
    expect(screen.getByTestId("withdrawal-countdown")).toHaveTextContent("Ready: completing it sends 5 USDC");
    expect(screen.getByRole("button", { name: "Complete withdrawal" })).toBeEnabled();
  });

  it("goes by the chain's clock, which can be ahead of this computer's", async () => {
    vi.stubGlobal("fetch", vi.fn(async () => json(tabs)));
    // The dev chain was moved a day ahead: the withdrawal is ready by chain time only.
    const reader = vi.fn(async (): Promise<BlockReader> => ({
      getBlock: async () => ({ number: 7n, timestamp: BigInt(Math.floor(Date.now() / 1000) + 86_400) }),
    }));
    fresh(<TabsPanel wallet={() => Promise.reject(new Error("unused"))} reader={reader} />);
    const row = (await screen.findAllByTestId("tab"))[0]!;
    await waitFor(() => expect(within(row).getByRole("button", { name: "Complete withdrawal" })).toBeEnabled());
    expect(reader).toHaveBeenCalledWith(31337);
    expect(within(row).getByTestId("withdrawal-countdown")).toHaveTextContent("Ready");
  });

  it("shows the contract's refusal by name when completing fails", async () => {
    const { wallet, pub } = mockWallet();
    pub.simulateContract.mockRejectedValueOnce(reverted("WithdrawalNotReady", [pending.withdrawalReadyAt! - 1]));
    const user = userEvent.setup();
    fresh(card(pending.withdrawalReadyAt!, "chain", wallet));
    await user.click(screen.getByRole("button", { name: "Complete withdrawal" }));
    expect(await screen.findByTestId("tx-error")).toHaveTextContent("The contract refused the withdrawal: WithdrawalNotReady");
    expect(screen.getByTestId("tx-steps")).toHaveTextContent("Withdrawing…");
  });

  it("is requested for at most what the tab holds, says a new request replaces the pending one, and shows its transaction", async () => {
    const { wallet, pub, mine } = mockWallet();
    const changed = vi.fn();
    const user = userEvent.setup();
    fresh(
      <ul>
        <TabCard tab={pending} on={on} service now={now} clock="chain" wallet={async () => wallet} onChanged={changed} />
      </ul>,
    );
    await user.click(screen.getByRole("button", { name: "Withdraw" }));
    const form = screen.getByRole("form", { name: `Withdraw from the tab with ${servicePayee}` });
    expect(within(form).getByText(/replaces the pending request of 5 USDC/)).toBeInTheDocument();
    const amount = within(form).getByLabelText("Amount to withdraw (USDC)");
    await user.type(amount, "26");
    await user.click(within(form).getByRole("button", { name: "Request withdrawal" }));
    expect(within(form).getByRole("alert")).toHaveTextContent("The tab holds 25 USDC; you can withdraw at most that.");
    expect(wallet.clients).not.toHaveBeenCalled();
    await user.clear(amount);
    await user.type(amount, "12.345678");
    await user.click(within(form).getByRole("button", { name: "Request withdrawal" }));
    await mine(DEPOSIT_TX);
    await waitFor(() => expect(screen.getByTestId("tx-steps")).toHaveTextContent(`Withdrawal requested tx ${DEPOSIT_TX}`));
    expect(pub.simulateContract).toHaveBeenCalledWith(
      expect.objectContaining({ functionName: "requestWithdrawal", args: [servicePayee, 12_345_678n] }),
    );
    // Mined: the form closes; the tab's pending withdrawal (refetched) is the rest of the story.
    expect(screen.queryByRole("form")).toBeNull();
    expect(changed).toHaveBeenCalledOnce();
  });
});
