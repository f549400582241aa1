import { Alert, AlertDescription } from "@/components/ui/alert";
import { Button } from "@/components/ui/button";
import { DepositLink } from "./TabCoverage";

/** What an owner's action came to, for the page's message line. */
export interface Message {
  kind: "ok" | "error";
  text: string;
  /** The payee whose tab needs USDC before opentab relays the action (`tab_unfunded`): the
   * message links to that tab's deposit form. */
  depositTo?: string;
}

/** The page's message line: the outcome of the last action, with the way on when there is one. */
export function MessageLine({ message, onDismiss }: { message: Message; onDismiss: () => void }) {
  return (
    <Alert variant={message.kind === "error" ? "destructive" : "default"} aria-live="polite" data-testid="message">
      <AlertDescription className="text-inherit">
        {message.text}{" "}
        {message.depositTo && (
          <>
            <DepositLink payee={message.depositTo} onClick={onDismiss} />{" "}
          </>
        )}
        <Button variant="link" className="h-auto p-0" onClick={onDismiss}>Dismiss</Button>
      </AlertDescription>
    </Alert>
  );
}
