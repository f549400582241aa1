import useSWR from "swr";
import { KeyRound, Plus } from "lucide-react";
import { Alert, AlertDescription, AlertTitle } from "@/components/ui/alert";
import { Button } from "@/components/ui/button";
import { Card, CardContent, CardHeader, CardTitle } from "@/components/ui/card";
import { fetcher, type KeyView, type Tabs } from "@/lib/api";
import { relative, short, usdc } from "@/lib/format";
import { StatusBadge } from "./StatusBadge";
import { TabCoverage } from "./TabCoverage";
import { UsageBar } from "./UsageBar";

export function KeyCard({
  keyView,
  onOpen,
  servicePayee,
}: {
  keyView: KeyView;
  onOpen: (address: string) => void;
  /** This service's payee, to name it in the tab note. */
  servicePayee?: string;
}) {
  return (
    <li>
      <Card className="gap-3 py-4" data-testid="key-card" data-address={keyView.address}>
        <CardHeader className="flex flex-row flex-wrap items-center justify-between gap-2">
          <CardTitle className="font-mono text-sm">
            <button
              type="button"
              className="underline-offset-4 hover:underline focus-visible:underline"
              onClick={() => onOpen(keyView.address)}
              aria-label={`Open key ${keyView.address}`}
            >
              {short(keyView.address)}
            </button>
          </CardTitle>
          <StatusBadge status={keyView.status} />
        </CardHeader>
        <CardContent className="grid gap-3">
          <UsageBar keyView={keyView} />
          <TabCoverage keyView={keyView} servicePayee={servicePayee} />
          <dl className="grid grid-cols-2 gap-2 text-xs sm:grid-cols-3">
            <div>
              <dt className="text-muted-foreground">Remaining</dt>
              <dd className="font-medium" data-testid="remaining">{usdc(keyView.usage.remaining)} USDC</dd>
            </div>
            <div>
              <dt className="text-muted-foreground">Expires</dt>
              <dd>{relative(keyView.validUntil)}</dd>
            </div>
            <div>
              <dt className="text-muted-foreground">Last activity</dt>
              <dd>{keyView.lastActivityAt ? relative(keyView.lastActivityAt) : "never"}</dd>
            </div>
          </dl>
        </CardContent>
      </Card>
    </li>
  );
}

export function KeyList({ onOpen, onCreate }: { onOpen: (address: string) => void; onCreate: () => void }) {
  const { data, error, isLoading, mutate } = useSWR<KeyView[]>("/api/session-keys", fetcher, { refreshInterval: 5_000 });
  const { data: tabs } = useSWR<Tabs>("/api/tabs", fetcher);
  return (
    <section aria-labelledby="keys-title" className="grid gap-3">
      <div className="flex items-center justify-between">
        <h2 id="keys-title" className="text-xl font-semibold">Session keys</h2>
        <Button onClick={onCreate}>
          <Plus aria-hidden /> New key
        </Button>
      </div>
      {isLoading && <p className="text-muted-foreground text-sm" role="status">Loading keys…</p>}
      {error && (
        <Alert variant="destructive">
          <AlertTitle>Keys could not be loaded</AlertTitle>
          <AlertDescription>
            {(error as Error).message}{" "}
            <Button variant="link" className="h-auto p-0" onClick={() => void mutate()}>Try again</Button>
          </AlertDescription>
        </Alert>
      )}
      {data && data.length === 0 && (
        <Card>
          <CardContent className="text-muted-foreground flex flex-col items-center gap-2 py-6 text-center text-sm">
            <KeyRound className="size-6" aria-hidden />
            <p>No session keys yet. A key lets an agent pay per call, up to its limit, until it expires.</p>
            <Button variant="outline" onClick={onCreate}>Create your first key</Button>
          </CardContent>
        </Card>
      )}
      {data && data.length > 0 && (
        <ul className="grid gap-3 md:grid-cols-2" aria-label="Your session keys">
          {data.map((k) => (
            <KeyCard key={k.address} keyView={k} onOpen={onOpen} servicePayee={tabs?.payee} />
          ))}
        </ul>
      )}
    </section>
  );
}

