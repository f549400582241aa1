import { useEffect, useState } from "react";
import { Wallet as WalletIcon } from "lucide-react";
import { Alert, AlertDescription, AlertTitle } from "@/components/ui/alert";
import { Button } from "@/components/ui/button";
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from "@/components/ui/card";
import { short } from "@/lib/format";
import { devWallet, injectedWallet, signIn, type Wallet } from "@/lib/wallet";

/** Sign in with Ethereum: an injected wallet, or opentab dev's built-in dev wallet. */
export function SignIn({ onSignedIn }: { onSignedIn: (wallet: Wallet) => void }) {
  const [dev, setDev] = useState<Wallet | null | undefined>(undefined);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const hasInjected = typeof window !== "undefined" && Boolean(window.ethereum);

  useEffect(() => {
    void devWallet().then(setDev);
  }, []);

  const go = async (get: () => Promise<Wallet>) => {
    setBusy(true);
    setError(null);
    try {
      const wallet = await get();
      await signIn(wallet);
      onSignedIn(wallet);
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Card className="mx-auto w-full max-w-md">
      <CardHeader>
        <CardTitle>Sign in</CardTitle>
        <CardDescription>
          Sign a message with the account that owns your tabs (Sign-In with Ethereum). Nothing is sent on-chain.
        </CardDescription>
      </CardHeader>
      <CardContent className="grid gap-3">
        <Button disabled={busy || !hasInjected} onClick={() => void go(injectedWallet)}>
          <WalletIcon aria-hidden /> {hasInjected ? "Sign in with your wallet" : "No browser wallet found"}
        </Button>
        {dev && (
          <Button variant="secondary" disabled={busy} onClick={() => void go(async () => dev)}>
            Use the dev wallet ({short(dev.address)})
          </Button>
        )}
        {dev && (
          <p className="text-muted-foreground text-xs">
            opentab dev's demo owner: a development key, offered because this is <code>opentab dev</code>.
          </p>
        )}
        {busy && <p role="status" className="text-muted-foreground text-sm">Waiting for the signature…</p>}
        {error && (
          <Alert variant="destructive">
            <AlertTitle>Not signed in</AlertTitle>
            <AlertDescription>{error}</AlertDescription>
          </Alert>
        )}
      </CardContent>
    </Card>
  );
}
