import { useCallback, useEffect, useId, useRef, useState } from "react";
import useSWR, { useSWRConfig } from "swr";
import type { Address } from "viem";
import { Badge } from "@/components/ui/badge";
import { Button } from "@/components/ui/button";
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from "@/components/ui/card";
import { Input } from "@/components/ui/input";
import { Label } from "@/components/ui/label";
import { useChainTime, type BlockReader } from "@/hooks/useChainTime";
import { fetcher, type Tab, type Tabs } from "@/lib/api";
import { countdown, short, usdc, utc } from "@/lib/format";
import {
  cancelTabWithdrawal,
  completeTabWithdrawal,
  depositToTab,
  requestTabWithdrawal,
  validateDeposit,
  validateWithdrawal,
  type TabsChain,
} from "@/lib/tabs";
import { chainReader, type Wallet } from "@/lib/wallet";
import { TxProgress, useTxFlow } from "./TxProgress";

/** Who may freeze the owner's keys on-chain, and what that means for the rule engine. */
export function guardianText(tabs: Pick<Tabs, "guardian" | "ruleGuardian">): string {
  const { guardian, ruleGuardian } = tabs;
  if (guardian && ruleGuardian && guardian.toLowerCase() === ruleGuardian.toLowerCase()) {
    return "opentab's rule engine: a key that breaks a spike or burst rule is frozen on-chain too";
  }
  if (guardian) return `${short(guardian)} may freeze your keys on-chain`;
  if (ruleGuardian) return "none: rules freeze keys at the gateway only (opentab tab guardian lets them freeze on-chain)";
  return "none";
}

const same = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();

/** This service's payee first; a payee asked for (from a key's "deposit" link) is shown even without a tab yet. */
export function orderTabs(tabs: Tabs, extra?: Address): Tab[] {
  const list = [...tabs.tabs];
  const ensure = (payee: Address) => {
    if (!list.some((t) => same(t.payee, payee))) {
      list.push({ payee, balance: "0", available: "0", pendingWithdrawal: null, withdrawalReadyAt: null, keys: [] });
    }
  };
  ensure(tabs.payee);
  if (extra) ensure(extra);
  return list.sort((a, b) => Number(same(b.payee, tabs.payee)) - Number(same(a.payee, tabs.payee)));
}

/**
 * The owner's tabs: USDC deposited for one payee each, which only that payee's keys draw on.
 * Deposits and withdrawals are the owner's own transactions, signed in their wallet.
 */
export function TabsPanel({
  wallet,
  depositFor,
  onDepositClosed,
  reader = chainReader,
}: {
  wallet: () => Promise<Wallet>;
  /** Open the deposit form for this payee (a key's "deposit to this tab" link). */
  depositFor?: Address;
  onDepositClosed?: () => void;
  /** Reads the chain's latest block, for withdrawal countdowns. */
  reader?: (chainId: number) => Promise<BlockReader | null>;
}) {
  const { data, error, isLoading } = useSWR<Tabs>("/api/tabs", fetcher, { refreshInterval: 10_000 });
  const { mutate } = useSWRConfig();
  const chainId = data?.chainId;
  const readBlocks = useCallback(() => (chainId === undefined ? Promise.resolve(null) : reader(chainId)), [chainId, reader]);
  const { now, source } = useChainTime(chainId === undefined ? null : readBlocks, data);
  // After a transaction: the tabs, and every key's `tabFree`, have moved.
  const changed = useCallback(() => {
    void mutate("/api/tabs");
    void mutate((key) => typeof key === "string" && key.startsWith("/api/session-keys"));
  }, [mutate]);

  return (
    <Card aria-labelledby="tabs-title">
      <CardHeader>
        <CardTitle id="tabs-title">Tabs</CardTitle>
        <CardDescription>
          USDC you hold with the validator contract, one tab per payee. A key draws only on your tab with its payee; money
          leaves a tab only to that payee, or back to you after a withdrawal's waiting time
          {data ? ` (${countdown(data.grace)})` : ""}.
        </CardDescription>
      </CardHeader>
      <CardContent className="grid gap-4">
        {isLoading && <p className="text-muted-foreground text-sm">Loading tabs…</p>}
        {error && <p className="text-destructive text-sm">Tabs unavailable: {(error as Error).message}</p>}
        {data && (
          <>
            <ul className="grid gap-3" aria-label="Your tabs">
              {orderTabs(data, depositFor).map((tab) => (
                <TabCard
                  key={tab.payee}
                  tab={tab}
                  on={data}
                  service={same(tab.payee, data.payee)}
                  now={now}
                  clock={source}
                  wallet={wallet}
                  depositOpen={Boolean(depositFor && same(depositFor, tab.payee))}
                  onDepositClosed={onDepositClosed}
                  onChanged={changed}
                />
              ))}
            </ul>
            <dl className="grid gap-3 text-sm sm:grid-cols-2">
              <div>
                <dt className="text-muted-foreground">Guardian</dt>
                <dd data-testid="tabs-guardian">{guardianText(data)}</dd>
              </div>
              <div>
                <dt className="text-muted-foreground">Contracts</dt>
                <dd className="font-mono text-xs">
                  <span title={data.validator}>validator {short(data.validator)}</span> ·{" "}
                  <span title={data.usdc}>USDC {short(data.usdc)}</span> · chain {data.chainId}
                </dd>
              </div>
            </dl>
          </>
        )}
      </CardContent>
    </Card>
  );
}

/** One tab: its money, the keys drawing on it, and the owner's deposit and withdrawal. */
export function TabCard({
  tab,
  on,
  service,
  now,
  clock,
  wallet,
  depositOpen = false,
  onDepositClosed,
  onChanged,
}: {
  tab: Tab;
  on: TabsChain & { grace: number };
  service: boolean;
  /** The chain's time (unix seconds), or this computer's if the chain cannot be read. */
  now: number;
  clock: "chain" | "clock";
  wallet: () => Promise<Wallet>;
  depositOpen?: boolean;
  onDepositClosed?: () => void;
  onChanged: () => void;
}) {
  const [form, setForm] = useState<"deposit" | "withdraw" | null>(depositOpen ? "deposit" : null);
  const withdrawalFlow = useTxFlow();
  const id = useId();
  useEffect(() => {
    if (depositOpen) setForm("deposit");
  }, [depositOpen]);
  // Leaving the deposit form also leaves its route (a key's link), so the link opens it again.
  const show = (next: "deposit" | "withdraw" | null) => {
    if (form === "deposit" && next !== "deposit") onDepositClosed?.();
    setForm(next);
  };
  const close = () => show(null);

  const readyAt = tab.withdrawalReadyAt;
  const ready = readyAt !== null && now >= readyAt;
  const pending = tab.pendingWithdrawal && tab.pendingWithdrawal !== "0" ? tab.pendingWithdrawal : null;

  const cancel = () =>
    void withdrawalFlow
      .run("cancellation", async (onSteps) => cancelTabWithdrawal(await wallet(), on, tab.payee, onSteps))
      .then((ok) => ok && onChanged());
  const complete = () =>
    void withdrawalFlow
      .run("withdrawal", async (onSteps) => completeTabWithdrawal(await wallet(), on, tab.payee, onSteps))
      .then((ok) => ok && onChanged());

  return (
    <li className="grid gap-3 rounded-lg border p-4" data-testid="tab" data-payee={tab.payee}>
      <div className="flex flex-wrap items-center justify-between gap-2">
        <div className="flex flex-wrap items-center gap-2">
          <span className="text-sm">
            Tab with <span className="font-mono" title={tab.payee}>{short(tab.payee)}</span>
          </span>
          {service && (
            <Badge variant="secondary" title="This service's payee: its API draws on this tab">
              this service
            </Badge>
          )}
        </div>
        <div className="flex gap-2">
          <Button size="sm" variant={form === "deposit" ? "secondary" : "default"} onClick={() => show("deposit")}>
            Deposit
          </Button>
          <Button size="sm" variant={form === "withdraw" ? "secondary" : "outline"} onClick={() => show("withdraw")} disabled={tab.balance === "0"}>
            Withdraw
          </Button>
        </div>
      </div>
      <dl className="grid grid-cols-2 gap-3 text-sm sm:grid-cols-3">
        <div>
          <dt className="text-muted-foreground">Balance</dt>
          <dd className="text-lg font-semibold" data-testid="tab-balance">{usdc(tab.balance)} USDC</dd>
        </div>
        <div>
          <dt className="text-muted-foreground">Available</dt>
          <dd className="text-lg font-semibold" data-testid="tab-available">{usdc(tab.available)} USDC</dd>
        </div>
        <div className="col-span-2 sm:col-span-1">
          <dt className="text-muted-foreground">Pending withdrawal</dt>
          <dd data-testid="tab-pending">{pending ? `${usdc(pending)} USDC` : "none"}</dd>
        </div>
        <div className="col-span-2 sm:col-span-3">
          <dt className="text-muted-foreground">Keys drawing on it</dt>
          <dd data-testid="tab-keys">
            {tab.keys.length === 0 ? (
              "none"
            ) : (
              <ul className="flex flex-wrap gap-x-3 gap-y-1 font-mono text-xs" aria-label="Keys on this tab">
                {tab.keys.map((k) => (
                  <li key={k}>
                    <a className="underline-offset-4 hover:underline" href={`#/keys/${k}`} title={k}>{short(k)}</a>
                  </li>
                ))}
              </ul>
            )}
          </dd>
        </div>
      </dl>

      {pending && readyAt !== null && (
        <div className="grid gap-2 rounded-md border p-3 text-sm" data-testid="withdrawal">
          <p id={`${id}-when`} data-testid="withdrawal-countdown">
            {ready ? (
              <>Ready: completing it sends {usdc(pending)} USDC (or what the tab still holds) to your wallet.</>
            ) : (
              <>
                Can be completed in <strong>{countdown(readyAt - now)}</strong>, from {utc(readyAt)}
                {clock === "chain" ? " (chain time)" : " (by this computer's clock; the chain's may differ)"}. Until then the
                payee can still settle calls it already served, so <em>Complete</em> stays off.
              </>
            )}
          </p>
          <div className="flex flex-wrap gap-2">
            <Button size="sm" onClick={complete} disabled={!ready || withdrawalFlow.busy} aria-describedby={`${id}-when`}>
              Complete withdrawal
            </Button>
            <Button size="sm" variant="outline" onClick={cancel} disabled={withdrawalFlow.busy}>
              Cancel withdrawal
            </Button>
          </div>
        </div>
      )}
      <TxProgress steps={withdrawalFlow.steps} error={withdrawalFlow.error} />

      {form === "deposit" && (
        <DepositForm
          on={on}
          payee={tab.payee}
          wallet={wallet}
          autoFocus={depositOpen}
          onDone={onChanged}
          onClose={close}
        />
      )}
      {form === "withdraw" && (
        <WithdrawForm on={on} tab={tab} wallet={wallet} flow={withdrawalFlow} onDone={onChanged} onClose={close} />
      )}
    </li>
  );
}

/** Amount, then approve (if needed) and deposit, signed in the owner's wallet. */
export function DepositForm({
  on,
  payee,
  wallet,
  autoFocus = false,
  onDone,
  onClose,
}: {
  on: TabsChain;
  payee: Address;
  wallet: () => Promise<Wallet>;
  autoFocus?: boolean;
  onDone: () => void;
  onClose: () => void;
}) {
  const [amount, setAmount] = useState("");
  const [invalid, setInvalid] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const flow = useTxFlow();
  const id = useId();
  const input = useRef<HTMLInputElement>(null);
  useEffect(() => {
    if (autoFocus) {
      input.current?.scrollIntoView?.({ block: "center" });
      input.current?.focus();
    }
  }, [autoFocus]);

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    setDone(null);
    const checked = validateDeposit(amount);
    setInvalid(checked.ok ? null : checked.error);
    if (!checked.ok) return;
    const ok = await flow.run("deposit", async (onSteps) => depositToTab(await wallet(), on, payee, checked.value, onSteps));
    if (ok) {
      setDone(`Deposited ${usdc(checked.value)} USDC to your tab with ${short(payee)}.`);
      setAmount("");
      onDone();
    }
  };

  return (
    <form className="grid gap-3 rounded-md border p-3" onSubmit={(e) => void submit(e)} noValidate aria-label={`Deposit to the tab with ${payee}`}>
      <div className="grid gap-2">
        <Label htmlFor={`${id}-amount`}>Amount to deposit (USDC)</Label>
        <Input
          ref={input}
          id={`${id}-amount`}
          inputMode="decimal"
          placeholder="25"
          value={amount}
          onChange={(e) => {
            setAmount(e.target.value);
            setInvalid(null);
          }}
          aria-invalid={invalid ? true : undefined}
          aria-describedby={invalid ? `${id}-error` : `${id}-help`}
        />
        {invalid ? (
          <p id={`${id}-error`} className="text-destructive text-sm" role="alert">{invalid}</p>
        ) : (
          <p id={`${id}-help`} className="text-muted-foreground text-xs">
            From your wallet: an approval of the validator first if it may not take that much yet, then the deposit.
          </p>
        )}
      </div>
      <TxProgress steps={flow.steps} error={flow.error} />
      {done && <p className="text-sm font-medium" role="status">{done}</p>}
      <div className="flex justify-end gap-2">
        <Button type="button" variant="outline" size="sm" onClick={onClose} disabled={flow.busy}>Close</Button>
        <Button type="submit" size="sm" disabled={flow.busy}>{flow.busy ? "Depositing…" : "Deposit"}</Button>
      </div>
    </form>
  );
}

/**
 * Amount, then `requestWithdrawal`: the money can leave after the grace window. The request's
 * transaction shows with the tab's pending withdrawal (`flow`), and the form closes once it is mined.
 */
export function WithdrawForm({
  on,
  tab,
  wallet,
  flow,
  onDone,
  onClose,
}: {
  on: TabsChain & { grace: number };
  tab: Tab;
  wallet: () => Promise<Wallet>;
  flow: ReturnType<typeof useTxFlow>;
  onDone: () => void;
  onClose: () => void;
}) {
  const [amount, setAmount] = useState("");
  const [invalid, setInvalid] = useState<string | null>(null);
  const id = useId();
  const pending = tab.pendingWithdrawal && tab.pendingWithdrawal !== "0" ? tab.pendingWithdrawal : null;

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    const checked = validateWithdrawal(amount, BigInt(tab.balance));
    setInvalid(checked.ok ? null : checked.error);
    if (!checked.ok) return;
    const ok = await flow.run("withdrawal request", async (onSteps) =>
      requestTabWithdrawal(await wallet(), on, tab.payee, checked.value, onSteps),
    );
    if (ok) {
      onDone();
      onClose();
    }
  };

  return (
    <form className="grid gap-3 rounded-md border p-3" onSubmit={(e) => void submit(e)} noValidate aria-label={`Withdraw from the tab with ${tab.payee}`}>
      <div className="grid gap-2">
        <Label htmlFor={`${id}-amount`}>Amount to withdraw (USDC)</Label>
        <div className="flex gap-2">
          <Input
            id={`${id}-amount`}
            inputMode="decimal"
            placeholder={usdc(tab.balance)}
            value={amount}
            onChange={(e) => {
              setAmount(e.target.value);
              setInvalid(null);
            }}
            aria-invalid={invalid ? true : undefined}
            aria-describedby={invalid ? `${id}-error` : `${id}-help`}
          />
          <Button type="button" variant="outline" size="sm" className="h-9" onClick={() => setAmount(usdc(tab.balance))}>
            All
          </Button>
        </div>
        {invalid ? (
          <p id={`${id}-error`} className="text-destructive text-sm" role="alert">{invalid}</p>
        ) : (
          <p id={`${id}-help`} className="text-muted-foreground text-xs">
            It can be completed {countdown(on.grace)} after the request, so the payee can settle calls it already served
            first.
            {pending && ` This replaces the pending request of ${usdc(pending)} USDC and starts the wait again.`}
          </p>
        )}
      </div>
      <div className="flex justify-end gap-2">
        <Button type="button" variant="outline" size="sm" onClick={onClose} disabled={flow.busy}>Close</Button>
        <Button type="submit" size="sm" disabled={flow.busy}>{flow.busy ? "Requesting…" : "Request withdrawal"}</Button>
      </div>
    </form>
  );
}
