import { Alert, AlertDescription } from "@/components/ui/alert";
import { Button } from "@/components/ui/button";
import type { KeyView, Tabs } from "@/lib/api";
import { short, usdc } from "@/lib/format";

/**
 * What the owner's tab with this service's payee holds free (balance less any pending
 * withdrawal), in base units: 0 when it is not listed. opentab relays key creations and
 * unfreezes only for tabs holding enough of it (the API's `tab_unfunded`).
 */
export function serviceTabFree(tabs: Tabs): bigint {
  const tab = tabs.tabs.find((t) => t.payee.toLowerCase() === tabs.payee.toLowerCase());
  return tab ? BigInt(tab.available) : 0n;
}

/** Opens the deposit form for the owner's tab with `payee` (the list, at `#/deposit/<payee>`):
 * inline in a sentence, or as a button-like call to action (`outline`). */
export function DepositLink({
  payee,
  children = "Deposit to this tab",
  variant = "link",
  onClick,
}: {
  payee: string;
  children?: React.ReactNode;
  variant?: "link" | "outline";
  onClick?: () => void;
}) {
  return (
    <Button asChild variant={variant} size={variant === "link" ? "default" : "sm"} className={variant === "link" ? "h-auto p-0" : "text-foreground w-fit"}>
      <a href={`#/deposit/${payee}`} onClick={onClick}>{children}</a>
    </Button>
  );
}

/** Statuses in which the gateway would serve the key if its tab could pay. */
const SERVABLE = new Set(["active", "pending", "not_yet_valid"]);

/**
 * Whether the key's tab covers it: "empty" when the gateway can charge nothing more on it (every
 * call refused with `insufficient_funds`), "short" when it covers less than the key's remaining
 * limit, null when it covers all of it (or the key cannot pay anyway).
 */
export function tabCoverage(key: KeyView): "empty" | "short" | null {
  if (key.tabFree === undefined || !SERVABLE.has(key.status)) return null;
  const free = BigInt(key.tabFree);
  const remaining = BigInt(key.usage.remaining);
  if (remaining === 0n) return null;
  if (free === 0n) return "empty";
  return free < remaining ? "short" : null;
}

/** A key whose tab cannot cover it, flagged on its card with the way to fund the tab. */
export function TabCoverage({ keyView, servicePayee }: { keyView: KeyView; servicePayee?: string }) {
  const coverage = tabCoverage(keyView);
  if (!coverage) return null;
  const payee = (
    <>
      <span className="font-mono" title={keyView.payee}>{short(keyView.payee)}</span>
      {servicePayee && servicePayee.toLowerCase() === keyView.payee.toLowerCase() ? " (this service)" : ""}
    </>
  );
  const fund = (label: string) => <DepositLink payee={keyView.payee}>{label}</DepositLink>;
  if (coverage === "empty") {
    return (
      <Alert variant="destructive" role="note" data-testid="tab-empty">
        <AlertDescription className="text-inherit">
          <span>
            This key's tab with {payee} is empty: every call will be refused with <code>insufficient_funds</code>.
          </span>{" "}
          {fund("Deposit to this tab")}
        </AlertDescription>
      </Alert>
    );
  }
  return (
    <p className="text-muted-foreground text-xs" role="note" data-testid="tab-short">
      The tab with {payee} covers {usdc(keyView.tabFree ?? "0")} USDC more of this key's {usdc(keyView.usage.remaining)} USDC
      remaining; calls beyond that are refused with <code>insufficient_funds</code>. {fund("Deposit more")}
    </p>
  );
}
