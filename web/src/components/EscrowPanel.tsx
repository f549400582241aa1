import useSWR from "swr";
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from "@/components/ui/card";
import { fetcher, type Escrow } from "@/lib/api";
import { relative, short, usdc } from "@/lib/format";

/** Who may freeze the owner's keys on-chain, and what that means for the rule engine. */
export function guardianText(escrow: Pick<Escrow, "guardian" | "ruleGuardian">): string {
  const { guardian, ruleGuardian } = escrow;
  if (guardian && ruleGuardian && guardian.toLowerCase() === ruleGuardian.toLowerCase()) {
    return "opentab's rule engine: a key that breaks a spike or burst rule is frozen on-chain too";
  }
  if (guardian) return `${short(guardian)} may freeze your keys on-chain`;
  if (ruleGuardian) return "none: rules freeze keys at the gateway only (opentab escrow guardian lets them freeze on-chain)";
  return "none";
}

export function EscrowPanel() {
  const { data, error, isLoading } = useSWR<Escrow>("/api/escrow", fetcher, { refreshInterval: 10_000 });
  return (
    <Card aria-labelledby="escrow-title">
      <CardHeader>
        <CardTitle id="escrow-title">Escrow</CardTitle>
        <CardDescription>USDC your keys can spend, held by the validator contract.</CardDescription>
      </CardHeader>
      <CardContent>
        {isLoading && <p className="text-muted-foreground text-sm">Loading escrow…</p>}
        {error && <p className="text-destructive text-sm">Escrow unavailable: {(error as Error).message}</p>}
        {data && (
          <dl className="grid grid-cols-2 gap-3 text-sm sm:grid-cols-3">
            <div>
              <dt className="text-muted-foreground">Balance</dt>
              <dd className="text-lg font-semibold" data-testid="escrow-balance">{usdc(data.balance)} USDC</dd>
            </div>
            <div>
              <dt className="text-muted-foreground">Available</dt>
              <dd className="text-lg font-semibold">{usdc(data.available)} USDC</dd>
            </div>
            <div className="col-span-2 sm:col-span-1">
              <dt className="text-muted-foreground">Pending withdrawal</dt>
              <dd>
                {data.pendingWithdrawal
                  ? `${usdc(data.pendingWithdrawal)} USDC, ready ${relative(data.withdrawalReadyAt ?? 0)}`
                  : "none"}
              </dd>
            </div>
            <div className="col-span-2 sm:col-span-3">
              <dt className="text-muted-foreground">Deposit to</dt>
              <dd className="font-mono text-xs break-all" title={data.depositTo}>
                {short(data.depositTo)} (opentab escrow deposit AMOUNT)
              </dd>
            </div>
            <div className="col-span-2 sm:col-span-3">
              <dt className="text-muted-foreground">Guardian</dt>
              <dd data-testid="escrow-guardian">{guardianText(data)}</dd>
            </div>
          </dl>
        )}
      </CardContent>
    </Card>
  );
}
