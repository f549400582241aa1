import { useCallback, useEffect, useState } from "react";
import useSWR, { SWRConfig } from "swr";
import type { Address } from "viem";
import { Alert, AlertDescription } from "@/components/ui/alert";
import { Button } from "@/components/ui/button";
import { CreateKey } from "@/components/CreateKey";
import { KeyDetailView } from "@/components/KeyDetailView";
import { KeyList } from "@/components/KeyList";
import { MessageLine, type Message } from "@/components/Message";
import { SignIn } from "@/components/SignIn";
import { TabsPanel } from "@/components/TabsPanel";
import { useLive } from "@/hooks/useLive";
import { ApiError, api, fetcher, type Tabs } from "@/lib/api";
import { short } from "@/lib/format";
import { devWallet, injectedWallet, type Wallet } from "@/lib/wallet";

type Route = { page: "list"; deposit?: Address } | { page: "new" } | { page: "key"; address: string };

function parseRoute(hash: string): Route {
  const key = /^#\/keys\/(0x[0-9a-fA-F]{40})$/.exec(hash);
  if (key) return { page: "key", address: key[1]! };
  // A key's "deposit to this tab" link: the list, with that tab's deposit form open.
  const deposit = /^#\/deposit\/(0x[0-9a-fA-F]{40})$/.exec(hash);
  if (deposit) return { page: "list", deposit: deposit[1] as Address };
  if (hash === "#/new") return { page: "new" };
  return { page: "list" };
}

function useRoute(): [Route, (hash: string) => void] {
  const [route, setRoute] = useState(() => parseRoute(window.location.hash));
  useEffect(() => {
    const onHash = () => setRoute(parseRoute(window.location.hash));
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);
  return [route, (hash) => (window.location.hash = hash)];
}

export function App() {
  return (
    <SWRConfig value={{ fetcher, shouldRetryOnError: (e: unknown) => !(e instanceof ApiError && e.status === 401) }}>
      <Shell />
    </SWRConfig>
  );
}

function Shell() {
  // Signed in = the session cookie works; the tabs tell whose it is.
  const { data: me, error, isLoading, mutate } = useSWR<Tabs>("/api/tabs", fetcher);
  const [wallet, setWallet] = useState<Wallet | null>(null);
  const [route, go] = useRoute();
  const [message, setMessage] = useState<Message | null>(null);
  const signedIn = Boolean(me) && !error;
  const live = useLive(signedIn);

  // Actions need a signer: the one used to sign in, else the dev wallet or the injected one
  // for the signed-in account (after a reload the cookie outlives the page's wallet).
  const getWallet = useCallback(async (): Promise<Wallet> => {
    if (wallet) return wallet;
    const dev = await devWallet();
    const found = dev && me && dev.address.toLowerCase() === me.owner.toLowerCase() ? dev : await injectedWallet();
    if (me && found.address.toLowerCase() !== me.owner.toLowerCase()) {
      throw new Error(`The wallet's account ${short(found.address)} is not the signed-in owner ${short(me.owner)}.`);
    }
    setWallet(found);
    return found;
  }, [wallet, me]);

  const signOut = async () => {
    await api("/api/auth/logout", { method: "POST" }).catch(() => undefined);
    setWallet(null);
    await mutate(undefined, { revalidate: true });
    go("#/");
  };

  return (
    <div className="mx-auto grid max-w-5xl gap-6 p-4 sm:p-6">
      <header className="flex flex-wrap items-center justify-between gap-3">
        <a href="#/" className="text-2xl font-bold tracking-tight">opentab</a>
        {signedIn && me && (
          <div className="flex items-center gap-3 text-sm">
            <span className="text-muted-foreground" aria-live="polite">{live ? "● live" : "○ polling"}</span>
            <span className="font-mono" title={me.owner} data-testid="owner">{short(me.owner)}</span>
            <Button variant="outline" size="sm" onClick={() => void signOut()}>Sign out</Button>
          </div>
        )}
      </header>
      <main className="grid gap-6">
        {message && <MessageLine message={message} onDismiss={() => setMessage(null)} />}
        {isLoading && <p role="status" className="text-muted-foreground">Loading…</p>}
        {!isLoading && !me && error && !(error instanceof ApiError && error.status === 401) && (
          <Alert variant="destructive">
            <AlertDescription className="text-inherit">
              opentab could not load your tabs: {(error as Error).message}{" "}
              <Button variant="link" className="h-auto p-0" onClick={() => void mutate()}>Try again</Button>
            </AlertDescription>
          </Alert>
        )}
        {!isLoading && !signedIn && (
          <SignIn
            onSignedIn={(w) => {
              setWallet(w);
              void mutate();
            }}
          />
        )}
        {signedIn && route.page === "list" && (
          <>
            <TabsPanel wallet={getWallet} depositFor={route.deposit} onDepositClosed={() => go("#/")} />
            <KeyList onOpen={(a) => go(`#/keys/${a}`)} onCreate={() => go("#/new")} />
          </>
        )}
        {signedIn && route.page === "new" && (
          <CreateKey wallet={getWallet} onDone={(a) => go(`#/keys/${a}`)} onCancel={() => go("#/")} />
        )}
        {signedIn && route.page === "key" && (
          <KeyDetailView address={route.address} wallet={getWallet} onBack={() => go("#/")} onMessage={setMessage} />
        )}
      </main>
    </div>
  );
}
