import { useId, useState } from "react";
import useSWR, { useSWRConfig } from "swr";
import { Check, Copy } from "lucide-react";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import type { Address, Hex } from "viem";
import { Alert, AlertDescription, AlertTitle } from "@/components/ui/alert";
import { Button } from "@/components/ui/button";
import { Card, CardContent, CardDescription, CardFooter, CardHeader, CardTitle } from "@/components/ui/card";
import { Input } from "@/components/ui/input";
import { Label } from "@/components/ui/label";
import { ApiError, api, fetcher, type PreparedKey, type Relayed, type Tabs } from "@/lib/api";
import { parseUsdc, usdc } from "@/lib/format";
import type { Wallet } from "@/lib/wallet";
import { DepositLink, serviceTabFree } from "./TabCoverage";

export const EXPIRY_PRESETS = [
  { id: "1d", label: "1 day", seconds: 86_400 },
  { id: "7d", label: "7 days", seconds: 7 * 86_400 },
  { id: "30d", label: "30 days", seconds: 30 * 86_400 },
  { id: "custom", label: "Custom", seconds: 0 },
] as const;

export interface CreateForm {
  limit: string;
  expiry: (typeof EXPIRY_PRESETS)[number]["id"];
  customExpiry: string; // datetime-local
  validAfter: string; // datetime-local, optional
  source: "generate" | "address";
  address: string;
}

export type FieldErrors = Partial<Record<"limit" | "customExpiry" | "validAfter" | "address", string>>;

/** Checks the form; on success, what to ask the API for (times in unix seconds). */
export function validateCreate(
  form: CreateForm,
  now: number,
): { errors: FieldErrors; request?: { limit: bigint; validUntil: number; validAfter?: number } } {
  const errors: FieldErrors = {};
  const limit = parseUsdc(form.limit);
  if (!limit.ok) errors.limit = limit.error;
  const toUnix = (local: string) => Math.floor(new Date(local).getTime() / 1000);
  let validAfter: number | undefined;
  if (form.validAfter.trim() !== "") {
    validAfter = toUnix(form.validAfter);
    if (!Number.isFinite(validAfter)) errors.validAfter = "Pick a date and time.";
  }
  let validUntil = now + (EXPIRY_PRESETS.find((p) => p.id === form.expiry)?.seconds ?? 0);
  if (form.expiry === "custom") {
    validUntil = toUnix(form.customExpiry);
    if (!Number.isFinite(validUntil)) errors.customExpiry = "Pick when the key should expire.";
    else if (validUntil <= now) errors.customExpiry = "The expiry must be in the future.";
  }
  if (validAfter !== undefined && Number.isFinite(validAfter) && validAfter >= validUntil) {
    errors.validAfter = "The key must become valid before it expires.";
  }
  if (form.source === "address") {
    if (!/^0x[0-9a-fA-F]{40}$/.test(form.address.trim())) errors.address = "Paste a 0x address of 40 hex digits.";
    else if (/^0x0{40}$/.test(form.address.trim())) errors.address = "The zero address cannot sign.";
  }
  if (Object.keys(errors).length > 0 || !limit.ok) return { errors };
  return { errors, request: { limit: limit.value, validUntil, validAfter } };
}

interface Created {
  address: Address;
  privateKey?: Hex;
  limit: bigint;
}

export function CreateKey({
  wallet,
  onDone,
  onCancel,
}: {
  wallet: () => Promise<Wallet>;
  onDone: (address: string) => void;
  onCancel: () => void;
}) {
  const { mutate } = useSWRConfig();
  // The owner's tabs, to say up front when the one with this service is empty. The server
  // still decides (`tab_unfunded`); this only saves a signature that would be refused.
  const { data: tabs } = useSWR<Tabs>("/api/tabs", fetcher);
  const [form, setForm] = useState<CreateForm>({
    limit: "",
    expiry: "7d",
    customExpiry: "",
    validAfter: "",
    source: "generate",
    address: "",
  });
  const [errors, setErrors] = useState<FieldErrors>({});
  // `unfunded`: opentab refused because the tab with this service holds too little (`tab_unfunded`).
  const [failure, setFailure] = useState<{ text: string; unfunded: boolean } | null>(null);
  const [busy, setBusy] = useState(false);
  const [created, setCreated] = useState<Created | null>(null);
  const id = useId();
  const set = <K extends keyof CreateForm>(key: K, value: CreateForm[K]) => {
    setForm((f) => ({ ...f, [key]: value }));
    // An edited field's message goes; the next submit checks it again.
    setErrors((e) => (key in e ? { ...e, [key]: undefined } : e));
  };

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    setFailure(null);
    const { errors, request } = validateCreate(form, Math.floor(Date.now() / 1000));
    setErrors(errors);
    if (!request) return;
    setBusy(true);
    try {
      // A key made here never leaves the browser: opentab only learns its address.
      const privateKey = form.source === "generate" ? generatePrivateKey() : undefined;
      const sessionKey = privateKey ? privateKeyToAccount(privateKey).address : (form.address.trim() as Address);
      const prepared = await api<PreparedKey>("/api/session-keys/prepare", {
        method: "POST",
        json: {
          limit: request.limit.toString(),
          validUntil: request.validUntil,
          ...(request.validAfter !== undefined ? { validAfter: request.validAfter } : {}),
          sessionKey,
        },
      });
      const signer = await wallet();
      const signature = await signer.signTypedData(prepared.typedData);
      const relayed = await api<Relayed>("/api/session-keys", {
        method: "POST",
        json: { message: prepared.typedData.message, signature },
      });
      void mutate("/api/session-keys");
      setCreated({ address: relayed.key.address, privateKey, limit: request.limit });
    } catch (err) {
      const e = err as Error & { field?: string };
      if (e.field === "limit" || e.field === "validUntil" || e.field === "validAfter") {
        setErrors({ [e.field === "validUntil" ? "customExpiry" : e.field]: e.message });
      }
      const unfunded = err instanceof ApiError && err.code === "tab_unfunded";
      if (unfunded) void mutate("/api/tabs");
      setFailure({ text: e.message, unfunded });
    } finally {
      setBusy(false);
    }
  };

  const emptyTab = tabs !== undefined && serviceTabFree(tabs) === 0n;
  if (created) return <CreatedPanel created={created} onDone={() => onDone(created.address)} />;

  const err = (name: keyof FieldErrors) =>
    errors[name] ? (
      <p id={`${id}-${name}-error`} className="text-destructive text-sm" role="alert">
        {errors[name]}
      </p>
    ) : null;
  const invalid = (name: keyof FieldErrors) =>
    errors[name] ? { "aria-invalid": true as const, "aria-describedby": `${id}-${name}-error` } : {};

  return (
    <Card>
      <CardHeader>
        <CardTitle>New session key</CardTitle>
        <CardDescription>
          Your agent signs each call with it, up to the limit, until it expires. It can pay only this API's payee.
        </CardDescription>
      </CardHeader>
      <form onSubmit={(e) => void submit(e)} noValidate>
        <CardContent className="grid gap-5">
          <div className="grid gap-2">
            <Label htmlFor={`${id}-limit`}>Spend limit (USDC)</Label>
            <Input
              id={`${id}-limit`}
              inputMode="decimal"
              placeholder="25"
              value={form.limit}
              onChange={(e) => set("limit", e.target.value)}
              {...invalid("limit")}
            />
            {err("limit")}
          </div>

          <fieldset className="grid gap-2">
            <legend className="mb-2 text-sm font-medium">Expires after</legend>
            <div className="flex flex-wrap gap-2">
              {EXPIRY_PRESETS.map((p) => (
                <label key={p.id} className="has-[:checked]:bg-primary has-[:checked]:text-primary-foreground has-[:focus-visible]:ring-ring/50 flex cursor-pointer items-center gap-2 rounded-md border px-3 py-1.5 text-sm has-[:focus-visible]:ring-[3px]">
                  <input
                    type="radio"
                    name={`${id}-expiry`}
                    value={p.id}
                    checked={form.expiry === p.id}
                    onChange={() => set("expiry", p.id)}
                    className="sr-only"
                  />
                  {p.label}
                </label>
              ))}
            </div>
            {form.expiry === "custom" && (
              <div className="grid gap-2">
                <Label htmlFor={`${id}-custom`}>Expiry date and time</Label>
                <Input
                  id={`${id}-custom`}
                  type="datetime-local"
                  value={form.customExpiry}
                  onChange={(e) => set("customExpiry", e.target.value)}
                  {...invalid("customExpiry")}
                />
                {err("customExpiry")}
              </div>
            )}
          </fieldset>

          <div className="grid gap-2">
            <Label htmlFor={`${id}-after`}>Valid from (optional)</Label>
            <Input
              id={`${id}-after`}
              type="datetime-local"
              value={form.validAfter}
              onChange={(e) => set("validAfter", e.target.value)}
              {...invalid("validAfter")}
            />
            <p className="text-muted-foreground text-xs">Empty: valid right away.</p>
            {err("validAfter")}
          </div>

          <fieldset className="grid gap-2">
            <legend className="mb-2 text-sm font-medium">The key</legend>
            <label className="flex items-start gap-2 text-sm">
              <input type="radio" name={`${id}-source`} checked={form.source === "generate"} onChange={() => set("source", "generate")} />
              <span>Generate it in this browser (you copy the private key to your agent once)</span>
            </label>
            <label className="flex items-start gap-2 text-sm">
              <input type="radio" name={`${id}-source`} checked={form.source === "address"} onChange={() => set("source", "address")} />
              <span>My agent made its own key: paste its address</span>
            </label>
            {form.source === "address" && (
              <div className="grid gap-2">
                <Label htmlFor={`${id}-address`}>Session key address</Label>
                <Input
                  id={`${id}-address`}
                  className="font-mono"
                  placeholder="0x…"
                  value={form.address}
                  onChange={(e) => set("address", e.target.value)}
                  {...invalid("address")}
                />
                {err("address")}
              </div>
            )}
          </fieldset>

          {emptyTab && !failure?.unfunded && (
            <Alert role="note" data-testid="create-tab-empty">
              <AlertTitle>Deposit first</AlertTitle>
              <AlertDescription className="grid gap-2">
                <p>
                  Your tab with this service holds 0 USDC. opentab creates keys only for owners whose tab with this service
                  holds USDC: deposit to it first.
                </p>
                <DepositLink payee={tabs.payee} variant="outline" />
              </AlertDescription>
            </Alert>
          )}

          {failure && (
            <Alert variant="destructive" data-testid="create-failure">
              <AlertTitle>The key was not created</AlertTitle>
              <AlertDescription className="grid gap-2">
                <p>{failure.text}</p>
                {failure.unfunded && tabs && <DepositLink payee={tabs.payee} variant="outline" />}
              </AlertDescription>
            </Alert>
          )}
        </CardContent>
        <CardFooter className="mt-5 justify-end">
          <Button type="button" variant="outline" onClick={onCancel}>Cancel</Button>
          <Button type="submit" disabled={busy}>{busy ? "Creating…" : "Create key"}</Button>
        </CardFooter>
      </form>
    </Card>
  );
}

function CreatedPanel({ created, onDone }: { created: Created; onDone: () => void }) {
  const origin = typeof window === "undefined" ? "http://127.0.0.1:8402" : window.location.origin;
  const ts = created.privateKey
    ? `import { wrapFetchWithPayment } from "@opentab/client";\n\nconst pay = wrapFetchWithPayment(fetch, {\n  privateKey: "${created.privateKey}",\n  cap: "${usdc(created.limit)}",\n  statePath: "./opentab-totals.json",\n});\nconst res = await pay("${origin}/v1/chat/completions", { method: "POST", body: "{}" });`
    : "";
  const rust = created.privateKey
    ? `use opentab_client::{receipt_of, Payer, PaymentMiddleware};\nuse opentab_core::Usdc;\n\nlet key = "${created.privateKey}".parse()?;\nlet payer = Payer::new(key, Usdc::parse_decimal("${usdc(created.limit)}")?, Some("opentab-totals.json".into()))?;\nlet client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(PaymentMiddleware::new(payer)).build();\nlet res = client.post("${origin}/v1/chat/completions").body("{}").send().await?;\nprintln!("{:?}", receipt_of(&res));`
    : "";
  return (
    <Card>
      <CardHeader>
        <CardTitle>Key created</CardTitle>
        <CardDescription className="font-mono break-all" data-testid="created-address">{created.address}</CardDescription>
      </CardHeader>
      <CardContent className="grid gap-4">
        {created.privateKey ? (
          <>
            <Alert>
              <AlertTitle>Copy the private key now</AlertTitle>
              <AlertDescription>
                It was made in this browser and is shown this once; opentab never had it. Give it to your agent only.
              </AlertDescription>
            </Alert>
            <CopyField label="Private key" value={created.privateKey} testId="private-key" />
            <CopyField label="TypeScript (@opentab/client)" value={ts} multiline />
            <CopyField label="Rust (opentab-client)" value={rust} multiline />
          </>
        ) : (
          <p className="text-sm">Registered for the address your agent made. It can pay as soon as opentab sees the registration on-chain.</p>
        )}
      </CardContent>
      <CardFooter className="justify-end">
        <Button onClick={onDone}>{created.privateKey ? "I saved it: show the key" : "Show the key"}</Button>
      </CardFooter>
    </Card>
  );
}

function CopyField({ label, value, multiline, testId }: { label: string; value: string; multiline?: boolean; testId?: string }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    await navigator.clipboard?.writeText(value);
    setCopied(true);
    setTimeout(() => setCopied(false), 1500);
  };
  return (
    <div className="grid gap-1.5">
      <div className="flex items-center justify-between">
        <span className="text-sm font-medium">{label}</span>
        <Button type="button" variant="outline" size="sm" onClick={() => void copy()} aria-label={`Copy ${label}`}>
          {copied ? <Check aria-hidden /> : <Copy aria-hidden />} {copied ? "Copied" : "Copy"}
        </Button>
      </div>
      <pre
        className={`bg-muted overflow-x-auto rounded-md p-3 font-mono text-xs ${multiline ? "whitespace-pre" : "break-all whitespace-pre-wrap"}`}
        data-testid={testId}
      >
        {value}
      </pre>
    </div>
  );
}
