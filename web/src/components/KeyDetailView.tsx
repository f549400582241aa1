import useSWR from "swr";
import { ArrowLeft } from "lucide-react";
import { Alert, AlertDescription, AlertTitle } from "@/components/ui/alert";
import { Button } from "@/components/ui/button";
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from "@/components/ui/card";
import { ApiError, fetcher, type KeyDetail, type Tabs } from "@/lib/api";
import { relative, short, usdc, utc } from "@/lib/format";
import { RULE_NAMES, freezingAlert } from "@/lib/rules";
import type { Wallet } from "@/lib/wallet";
import { KeyActions } from "./KeyActions";
import type { Message } from "./Message";
import { AlertNumbers, DecisionPanel } from "./RuleDecision";
import { RuleSettingsCard } from "./RuleSettings";
import { StatusBadge } from "./StatusBadge";
import { TabCoverage } from "./TabCoverage";
import { UsageBar } from "./UsageBar";

export function KeyDetailView({
  address,
  wallet,
  onBack,
  onMessage,
}: {
  address: string;
  wallet: () => Promise<Wallet>;
  onBack: () => void;
  onMessage: (message: Message) => void;
}) {
  const { data, error, isLoading } = useSWR<KeyDetail>(`/api/session-keys/${address}`, fetcher, { refreshInterval: 5_000 });
  const { data: tabs } = useSWR<Tabs>("/api/tabs", fetcher);
  const froze = data ? freezingAlert(data) : undefined;
  return (
    <section aria-labelledby="key-title" className="grid gap-4">
      <div>
        <Button variant="ghost" onClick={onBack}>
          <ArrowLeft aria-hidden /> All keys
        </Button>
      </div>
      {isLoading && <p className="text-muted-foreground text-sm" role="status">Loading key…</p>}
      {error && (
        <Alert variant="destructive">
          <AlertTitle>{error instanceof ApiError && error.status === 404 ? "No such key" : "The key could not be loaded"}</AlertTitle>
          <AlertDescription>{(error as Error).message}</AlertDescription>
        </Alert>
      )}
      {data && (
        <>
          <Card>
            <CardHeader className="flex flex-row flex-wrap items-center justify-between gap-2">
              <div className="grid gap-1">
                <CardTitle id="key-title" className="font-mono text-sm break-all">{data.address}</CardTitle>
                <CardDescription>pays {short(data.payee)} · created {relative(data.createdAt)}</CardDescription>
              </div>
              <StatusBadge status={data.status} />
            </CardHeader>
            <CardContent className="grid gap-4">
              <UsageBar keyView={data} />
              <TabCoverage keyView={data} servicePayee={tabs?.payee} />
              <dl className="grid grid-cols-2 gap-3 text-sm sm:grid-cols-4">
                <Stat label="Limit" value={`${usdc(data.limit)} USDC`} />
                <Stat label="Remaining" value={`${usdc(data.usage.remaining)} USDC`} />
                <Stat label="Settled" value={`${usdc(data.usage.settled)} USDC`} />
                <Stat label="Pending" value={`${usdc(data.usage.pending)} USDC`} />
                <Stat label="Valid from" value={utc(data.validAfter)} />
                <Stat label="Expires" value={`${utc(data.validUntil)} (${relative(data.validUntil)})`} />
                <Stat label="Last activity" value={data.lastActivityAt ? relative(data.lastActivityAt) : "never"} />
                {data.tabFree !== undefined && <Stat label="Tab can still pay" value={`${usdc(data.tabFree)} USDC`} />}
                {data.frozenAt && <Stat label="Frozen" value={relative(data.frozenAt)} />}
              </dl>
              <KeyActions keyView={data} wallet={wallet} onDeleted={onBack} onMessage={onMessage} servicePayee={tabs?.payee} />
            </CardContent>
          </Card>
          {froze && <DecisionPanel keyView={data} alert={froze} wallet={wallet} onMessage={onMessage} servicePayee={tabs?.payee} />}
          <Card aria-labelledby="settlements-title">
            <CardHeader>
              <CardTitle id="settlements-title">Settlements</CardTitle>
              <CardDescription>Paid on-chain to the payee every 10 USDC, or at once when the key stops.</CardDescription>
            </CardHeader>
            <CardContent>
              {data.settlements.length === 0 ? (
                <p className="text-muted-foreground text-sm">None yet.</p>
              ) : (
                <div className="overflow-x-auto">
                  <table className="w-full text-left text-sm">
                    <thead className="text-muted-foreground">
                      <tr>
                        <th scope="col" className="py-1 pr-3 font-medium">Block</th>
                        <th scope="col" className="py-1 pr-3 font-medium">Amount</th>
                        <th scope="col" className="py-1 pr-3 font-medium">Total settled</th>
                        <th scope="col" className="py-1 font-medium">Transaction</th>
                      </tr>
                    </thead>
                    <tbody>
                      {data.settlements.map((s) => (
                        <tr key={s.txHash + s.blockNumber} className="border-t">
                          <td className="py-1 pr-3">{s.blockNumber}</td>
                          <td className="py-1 pr-3">{usdc(s.amount)} USDC</td>
                          <td className="py-1 pr-3">{usdc(s.cumulative)} USDC</td>
                          <td className="py-1 font-mono text-xs" title={s.txHash}>{short(s.txHash)}</td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                </div>
              )}
            </CardContent>
          </Card>
          <Card aria-labelledby="alerts-title">
            <CardHeader>
              <CardTitle id="alerts-title">Rule alerts</CardTitle>
              <CardDescription>Why the rule engine froze or warned about this key (unusual spending, low balance).</CardDescription>
            </CardHeader>
            <CardContent>
              {data.alerts.length === 0 ? (
                <p className="text-muted-foreground text-sm">No alerts for this key.</p>
              ) : (
                <ul className="grid gap-2" aria-label="Rule alerts">
                  {data.alerts.map((a) => (
                    <li key={`${a.rule}-${a.firedAt}`} className="rounded-md border p-3 text-sm" data-testid="alert">
                      <div className="flex flex-wrap items-center gap-2">
                        <span className="font-medium">{RULE_NAMES[a.rule] ?? a.rule}</span>
                        {a.froze && <span className="text-destructive text-xs font-medium">froze the key</span>}
                        {a.mode === "shadow" && <span className="text-muted-foreground text-xs">shadow mode: alert only</span>}
                        <span className="text-muted-foreground ml-auto text-xs">
                          {relative(a.firedAt)}
                          {a.recoveredAt ? ` · cleared ${relative(a.recoveredAt)}` : " · ongoing"}
                        </span>
                      </div>
                      <p className="mt-1">{a.reason}</p>
                      <AlertNumbers alert={a} />
                    </li>
                  ))}
                </ul>
              )}
            </CardContent>
          </Card>
          <RuleSettingsCard address={data.address} onMessage={onMessage} />
        </>
      )}
    </section>
  );
}

function Stat({ label, value }: { label: string; value: string }) {
  return (
    <div>
      <dt className="text-muted-foreground">{label}</dt>
      <dd className="font-medium">{value}</dd>
    </div>
  );
}
