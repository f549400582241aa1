import { useCallback, useState } from "react";
import { Check, Loader2, X } from "lucide-react";
import { Alert, AlertDescription, AlertTitle } from "@/components/ui/alert";
import { txErrorMessage, type TxStep } from "@/lib/tabs";

/** One flow of the owner's transactions: its steps as they go, its failure, whether it runs. */
export function useTxFlow() {
  const [steps, setSteps] = useState<TxStep[]>([]);
  const [error, setError] = useState<{ title: string; text: string } | null>(null);
  const [busy, setBusy] = useState(false);
  /** Runs `flow` (which reports its steps); `what` names it in a failure ("deposit", …). */
  const run = useCallback(async (what: string, flow: (onSteps: (s: TxStep[]) => void) => Promise<void>): Promise<boolean> => {
    setBusy(true);
    setError(null);
    setSteps([]);
    try {
      await flow(setSteps);
      return true;
    } catch (err) {
      setError({ title: `The ${what} did not go through`, text: txErrorMessage(err, what) });
      return false;
    } finally {
      setBusy(false);
    }
  }, []);
  const reset = useCallback(() => {
    setSteps([]);
    setError(null);
  }, []);
  return { steps, error, busy, run, reset };
}

/** `Approving… tx 0x…`, `Deposited · tx 0x…`: each transaction with its hash, then any failure. */
export function TxProgress({ steps, error }: { steps: TxStep[]; error: { title: string; text: string } | null }) {
  if (steps.length === 0 && !error) return null;
  return (
    <div className="grid gap-2">
      {steps.length > 0 && (
        <ol className="grid gap-1 text-sm" aria-label="Transactions" aria-live="polite" data-testid="tx-steps">
          {steps.map((s, i) => (
            <li key={i} className="flex items-start gap-2" data-state={s.state}>
              {s.state === "active" && <Loader2 className="mt-0.5 size-4 shrink-0 animate-spin" aria-hidden />}
              {s.state === "done" && <Check className="text-success mt-0.5 size-4 shrink-0" aria-hidden />}
              {s.state === "failed" && <X className="text-destructive mt-0.5 size-4 shrink-0" aria-hidden />}
              <span className="min-w-0">
                {s.label}
                {s.hash ? (
                  <>
                    {" "}tx <code className="font-mono text-xs break-all" data-testid="tx-hash">{s.hash}</code>
                  </>
                ) : (
                  s.state === "active" && <span className="text-muted-foreground"> confirm in your wallet</span>
                )}
              </span>
            </li>
          ))}
        </ol>
      )}
      {error && (
        <Alert variant="destructive">
          <AlertTitle>{error.title}</AlertTitle>
          <AlertDescription className="text-inherit" data-testid="tx-error">{error.text}</AlertDescription>
        </Alert>
      )}
    </div>
  );
}
