import useSWR from "swr";
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from "@/components/ui/card";
import { fetcher, type Escrow } from "@/lib/api";
import { relative, short, usdc } from "@/lib/format";

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
          </dl>
        )}
      </CardContent>
    </Card>
  );
}
