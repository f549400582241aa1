import { useState } from "react";
import { useSWRConfig } from "swr";
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
import { ApiError, api, type KeyDetail, type KeyStatus, type KeyView, type Relayed, type TypedData } from "@/lib/api";
import type { Wallet } from "@/lib/wallet";
import type { Message } from "./Message";

export type Action = "freeze" | "unfreeze" | "delete";

const COPY: Record<Action, { title: string; body: string; confirm: string; optimistic: KeyStatus }> = {
  freeze: {
    title: "Freeze this key?",
    body: "Calls paid with it are refused at once, before the transaction is mined. You can unfreeze it later.",
    confirm: "Freeze",
    optimistic: "frozen",
  },
  unfreeze: {
    title: "Unfreeze this key?",
    body: "It can pay again once the unfreeze is confirmed on-chain, within seconds.",
    confirm: "Unfreeze",
    optimistic: "active",
  },
  delete: {
    title: "Delete this key for good?",
    body: "It is revoked on-chain and can never pay again; what it owes is still settled. This cannot be undone.",
    confirm: "Delete",
    optimistic: "revoked",
  },
};

/** Signs `action` on the key with the owner's wallet and has opentab relay it: the typed data
 * to sign comes from `GET …/{action}`, the signature goes back with its nonce and deadline (and
 * `extra`, e.g. an unfreeze's `shadowRule`) by `POST …/{action}` (a delete: `DELETE` the key). */
export async function signAndRelay(
  address: string,
  action: Action,
  wallet: () => Promise<Wallet>,
  extra: Record<string, unknown> = {},
): Promise<Relayed> {
  const path = `/api/session-keys/${address}`;
  const signer = await wallet();
  const typed = await api<TypedData>(`${path}/${action}`);
  const signature = await signer.signTypedData(typed);
  const body = { nonce: String(typed.message.nonce), deadline: Number(typed.message.deadline), signature, ...extra };
  return action === "delete"
    ? await api<Relayed>(path, { method: "DELETE", json: body })
    : await api<Relayed>(`${path}/${action}`, { method: "POST", json: body });
}

/** Runs a signed action on a key the way the page does: its status changes on screen at once and
 * goes back, with the server's reason, if opentab refuses; the outcome goes to `onMessage`; the
 * keys are read again after. */
export function useKeyAction({
  keyView,
  wallet,
  onMessage,
  onDeleted,
  servicePayee,
}: {
  keyView: KeyView;
  wallet: () => Promise<Wallet>;
  onMessage: (message: Message) => void;
  onDeleted?: () => void;
  /** This service's payee: the tab opentab wants funded before it relays an unfreeze. */
  servicePayee?: string;
}) {
  const { mutate } = useSWRConfig();
  const [busy, setBusy] = useState(false);
  const path = `/api/session-keys/${keyView.address}`;

  const setStatus = (status: KeyStatus) => {
    void mutate<KeyDetail>(path, (k) => (k ? { ...k, status } : k), { revalidate: false });
    void mutate<KeyView[]>(
      "/api/session-keys",
      (keys) => keys?.map((k) => (k.address === keyView.address ? { ...k, status } : k)),
      { revalidate: false },
    );
  };

  /** `extra` goes in the request body; `note` ends the success message. */
  const run = async (action: Action, { extra, note }: { extra?: Record<string, unknown>; note?: string } = {}) => {
    setBusy(true);
    const before = keyView.status;
    setStatus(COPY[action].optimistic);
    try {
      const relayed = await signAndRelay(keyView.address, action, wallet, extra);
      const done = action === "delete" ? "deleted" : action === "freeze" ? "frozen" : "unfrozen";
      const how =
        relayed.txStatus === "not_needed" ? "no transaction needed: it was frozen at the gateway only" : `transaction ${relayed.txStatus}`;
      onMessage({ kind: "ok", text: `Key ${done} (${how}).${note ? ` ${note}` : ""}` });
      if (action === "delete") onDeleted?.();
    } catch (err) {
      setStatus(before);
      // Unfreezes are relayed only for a funded tab: say so with the way to fund it.
      const unfunded = err instanceof ApiError && err.code === "tab_unfunded";
      onMessage({
        kind: "error",
        text: `Could not ${action} the key: ${(err as Error).message}`,
        ...(unfunded ? { depositTo: servicePayee ?? keyView.payee } : {}),
      });
    } finally {
      setBusy(false);
      // The key, the list, and what hangs off the key (its rule settings).
      void mutate((key) => typeof key === "string" && key.startsWith("/api/session-keys"));
    }
  };

  return { busy, run };
}

/** Freeze, unfreeze and delete, each signed by the owner and confirmed first. The key's status
 * changes on screen at once and goes back, with the server's reason, if opentab refuses. */
export function KeyActions({
  keyView,
  wallet,
  onDeleted,
  onMessage,
  servicePayee,
}: {
  keyView: KeyView;
  wallet: () => Promise<Wallet>;
  onDeleted: () => void;
  onMessage: (message: Message) => void;
  /** This service's payee: the tab opentab wants funded before it relays an unfreeze. */
  servicePayee?: string;
}) {
  const [open, setOpen] = useState<Action | null>(null);
  const { busy, run: runAction } = useKeyAction({ keyView, wallet, onMessage, onDeleted, servicePayee });
  const run = async (action: Action) => {
    setOpen(null);
    await runAction(action);
  };

  const canFreeze = keyView.status === "active" || keyView.status === "not_yet_valid";
  const canUnfreeze = keyView.status === "frozen" && keyView.revokedAt === null;
  const canDelete = keyView.status !== "revoked";
  return (
    <div className="flex flex-wrap gap-2">
      {canFreeze && <Button variant="outline" disabled={busy} onClick={() => setOpen("freeze")}>Freeze</Button>}
      {canUnfreeze && <Button variant="outline" disabled={busy} onClick={() => setOpen("unfreeze")}>Unfreeze</Button>}
      {canDelete && <Button variant="destructive" disabled={busy} onClick={() => setOpen("delete")}>Delete</Button>}
      <Dialog open={open !== null} onOpenChange={(o) => !o && setOpen(null)}>
        {open && (
          <DialogContent>
            <DialogHeader>
              <DialogTitle>{COPY[open].title}</DialogTitle>
              <DialogDescription>{COPY[open].body}</DialogDescription>
            </DialogHeader>
            <DialogFooter>
              <DialogClose asChild>
                <Button variant="outline">Cancel</Button>
              </DialogClose>
              <Button variant={open === "delete" ? "destructive" : "default"} onClick={() => void run(open)}>
                {COPY[open].confirm}
              </Button>
            </DialogFooter>
          </DialogContent>
        )}
      </Dialog>
    </div>
  );
}
