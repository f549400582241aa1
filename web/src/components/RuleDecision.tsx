import { useId, useState } from "react";
import { Button } from "@/components/ui/button";
import {
  Dialog,
  DialogClose,
  DialogContent,
  DialogDescription,
  DialogFooter,
  DialogHeader,
  DialogTitle,
} from "@/components/ui/dialog";
import type { KeyView, RuleAlert } from "@/lib/api";
import { relative } from "@/lib/format";
import { RULE_NAMES, RULE_SHORT, inputRows, thresholdText, wouldNotFireText } from "@/lib/rules";
import type { Wallet } from "@/lib/wallet";
import { useKeyAction } from "./KeyActions";
import type { Message } from "./Message";

/** What a rule saw and the setting in force, compactly: for each entry of the alerts list. */
export function AlertNumbers({ alert }: { alert: RuleAlert }) {
  const rows = inputRows(alert.inputs);
  if (rows.length === 0 && !alert.threshold && alert.wouldNotFire === undefined) return null;
  return (
    <div className="text-muted-foreground mt-1 grid gap-0.5 text-xs" data-testid="alert-numbers">
      {rows.length > 0 && (
        <dl className="flex flex-wrap gap-x-3 gap-y-0.5">
          {rows.map(([field, label, text]) => (
            <div key={field} className="flex gap-1">
              <dt>{label}:</dt>
              <dd className="text-foreground">{text}</dd>
            </div>
          ))}
        </dl>
      )}
      {alert.threshold && (
        <p>
          {thresholdText(alert.threshold)}
          {alert.wouldNotFire !== undefined && ` ${wouldNotFireText(alert.wouldNotFire, alert.threshold)}`}
        </p>
      )}
      {!alert.threshold && alert.wouldNotFire !== undefined && <p>{wouldNotFireText(alert.wouldNotFire)}</p>}
    </div>
  );
}

/** Why a frozen key was frozen: the rule that fired, the numbers it saw, the setting in force and
 * the one that would not have fired; and the way out: unfreeze and switch that rule to shadow
 * (alert only) for this key, in one signed request. */
export function DecisionPanel({
  keyView,
  alert,
  wallet,
  onMessage,
  servicePayee,
}: {
  keyView: KeyView;
  alert: RuleAlert;
  wallet: () => Promise<Wallet>;
  onMessage: (message: Message) => void;
  servicePayee?: string;
}) {
  const id = useId();
  const [confirming, setConfirming] = useState(false);
  const { busy, run } = useKeyAction({ keyView, wallet, onMessage, servicePayee });
  const rows = inputRows(alert.inputs);
  const rule = RULE_SHORT[alert.rule] ?? `the ${alert.rule} rule`;
  const canUnfreeze = keyView.status === "frozen" && keyView.revokedAt === null;

  const unfreeze = async () => {
    setConfirming(false);
    await run("unfreeze", {
      extra: { shadowRule: alert.rule },
      note: `${rule.charAt(0).toUpperCase()}${rule.slice(1)} now only alerts for this key.`,
    });
  };

  return (
    <section
      aria-labelledby={`${id}-title`}
      className="bg-card border-destructive/60 grid gap-3 rounded-xl border-2 p-5 shadow-sm"
      data-testid="decision"
    >
      <div className="grid gap-1">
        <h2 id={`${id}-title`} className="text-destructive leading-none font-semibold">Why this key was frozen</h2>
        <p className="text-sm">
          <span className="font-medium" data-testid="decision-rule">{RULE_NAMES[alert.rule] ?? alert.rule}</span>{" "}
          <span className="text-muted-foreground">({rule}) froze it {relative(alert.firedAt)}:</span> {alert.reason}
        </p>
      </div>
      {rows.length > 0 && (
        <div className="grid gap-1">
          <h3 className="text-sm font-medium">What it saw</h3>
          <dl className="grid grid-cols-2 gap-2 text-sm sm:grid-cols-4">
            {rows.map(([field, label, text]) => (
              <div key={field}>
                <dt className="text-muted-foreground">{label}</dt>
                <dd className="font-medium" data-testid={`seen-${field}`}>{text}</dd>
              </div>
            ))}
          </dl>
        </div>
      )}
      {(alert.threshold || alert.wouldNotFire !== undefined) && (
        <ul className="grid gap-0.5 text-sm">
          {alert.threshold && <li data-testid="decision-threshold">{thresholdText(alert.threshold)}</li>}
          {alert.wouldNotFire !== undefined && (
            <li className="font-medium" data-testid="decision-would-not-fire">{wouldNotFireText(alert.wouldNotFire, alert.threshold)}</li>
          )}
        </ul>
      )}
      {canUnfreeze && (
        <div className="flex flex-wrap items-center gap-3">
          <Button disabled={busy} onClick={() => setConfirming(true)}>Unfreeze and switch {rule} to shadow</Button>
          <span className="text-muted-foreground text-xs">Or change its setting under Rule settings, then unfreeze.</span>
        </div>
      )}
      <Dialog open={confirming} onOpenChange={setConfirming}>
        {confirming && (
          <DialogContent>
            <DialogHeader>
              <DialogTitle>Unfreeze and switch {rule} to shadow?</DialogTitle>
              <DialogDescription>
                The key is unfrozen (you sign the unfreeze; opentab relays it) and can pay again. From now on {rule} only alerts
                for this key: it no longer freezes it. The change is recorded in this key's rule history, and you can switch the
                rule back to enforce under Rule settings.
              </DialogDescription>
            </DialogHeader>
            <DialogFooter>
              <DialogClose asChild>
                <Button variant="outline">Cancel</Button>
              </DialogClose>
              <Button onClick={() => void unfreeze()}>Unfreeze and switch to shadow</Button>
            </DialogFooter>
          </DialogContent>
        )}
      </Dialog>
    </section>
  );
}
