import { useId, useState } from "react";
import useSWR from "swr";
import { Alert, AlertDescription, AlertTitle } from "@/components/ui/alert";
import { Badge } from "@/components/ui/badge";
import { Button } from "@/components/ui/button";
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from "@/components/ui/card";
import { Input } from "@/components/ui/input";
import { Label } from "@/components/ui/label";
import { ApiError, api, fetcher, type RuleMode, type RuleOverrides, type RuleSettings, type RulesView } from "@/lib/api";
import { parseUsdc, short, usdc, utc } from "@/lib/format";
import {
  SETTINGS,
  SETTING_LABELS,
  changeDetailText,
  inheritedSettings,
  isSetting,
  setOverrides,
  settingValueText,
  sourceOf,
  type SettingName,
  type Source,
} from "@/lib/rules";
import { cn } from "@/lib/utils";
import type { Message } from "./Message";

/** One field of the form: inherit, or this text (what the control shows). */
export type Draft = Record<SettingName, { inherit: boolean; text: string }>;

const MODES: RuleMode[] = ["enforce", "shadow", "off"];
const MODE_TEXT: Record<RuleMode, string> = { enforce: "enforce", shadow: "shadow (alert only)", off: "off" };

/** A setting's value as its control shows it. */
function toText(setting: SettingName, value: unknown): string {
  if (value === undefined || value === null) return "";
  if (setting === "spikeIgnoreUpTo") {
    try {
      return usdc(typeof value === "number" ? BigInt(value) : String(value));
    } catch {
      return String(value);
    }
  }
  if (setting === "spikeIgnoreRoutes") return Array.isArray(value) ? value.join("\n") : String(value);
  return String(value);
}

/** The form's starting point: the key's overrides; elsewhere, what it inherits (shown, disabled). */
export function draftOf(overrides: RuleOverrides, inherited: RuleSettings): Draft {
  const draft = {} as Draft;
  for (const setting of SETTINGS) {
    const own = overrides[setting];
    const set = own !== undefined && own !== null;
    draft[setting] = { inherit: !set, text: toText(setting, set ? own : inherited[setting]) };
  }
  return draft;
}

/** `POST /v1/images, GET /v1/x` or one per line → the routes, trimmed, blanks dropped. */
export function parseRoutes(text: string): string[] {
  return text
    .split(/[\n,]/)
    .map((r) => r.trim().replace(/\s+/g, " "))
    .filter((r) => r !== "");
}

type Parsed = { ok: true; value: unknown } | { ok: false; error: string };

function parseField(setting: SettingName, text: string): Parsed {
  const t = text.trim();
  switch (setting) {
    case "spikeMultiple":
      return /^\d+(\.\d+)?$/.test(t) && Number(t) > 0
        ? { ok: true, value: Number(t) }
        : { ok: false, error: "Enter a number above 0, like 10." };
    case "callsPerMinute":
      return /^\d+$/.test(t) && Number(t) > 0 ? { ok: true, value: Number(t) } : { ok: false, error: "Enter a whole number of calls, like 100." };
    case "lowBalancePercent":
      return /^\d+(\.\d+)?$/.test(t) && Number(t) <= 100
        ? { ok: true, value: Number(t) }
        : { ok: false, error: "Enter a percentage from 0 to 100, like 10." };
    case "spikeIgnoreUpTo": {
      const amount = parseUsdc(t, { allowZero: true });
      return amount.ok ? { ok: true, value: amount.value.toString() } : amount;
    }
    case "spikeIgnoreRoutes":
      return { ok: true, value: parseRoutes(text) };
    case "spikeByRoute":
      return { ok: true, value: t === "true" };
    case "spikeMode":
    case "rateMode":
    case "lowBalanceMode":
      return (MODES as string[]).includes(t) ? { ok: true, value: t } : { ok: false, error: "Pick enforce, shadow or off." };
  }
}

/** What to `PUT`: only the fields not left to inherit; or what is wrong with them. */
export function overridesOf(draft: Draft): { overrides?: RuleOverrides; errors: Partial<Record<SettingName, string>> } {
  const overrides: Record<string, unknown> = {};
  const errors: Partial<Record<SettingName, string>> = {};
  for (const setting of SETTINGS) {
    const field = draft[setting];
    if (field.inherit) continue;
    const parsed = parseField(setting, field.text);
    if (parsed.ok) overrides[setting] = parsed.value;
    else errors[setting] = parsed.error;
  }
  return Object.keys(errors).length > 0 ? { errors } : { overrides: overrides as RuleOverrides, errors };
}

const GROUPS: { legend: string; settings: SettingName[] }[] = [
  { legend: "Spike: an unusually large charge", settings: ["spikeMultiple", "spikeMode", "spikeByRoute", "spikeIgnoreRoutes", "spikeIgnoreUpTo"] },
  { legend: "Rate: too many calls in a minute", settings: ["callsPerMinute", "rateMode"] },
  { legend: "Low balance: the limit almost used up", settings: ["lowBalancePercent", "lowBalanceMode"] },
];

const HELP: Partial<Record<SettingName, string>> = {
  spikeMultiple: "A charge above this many times the key's average is a spike.",
  spikeByRoute: "Compare a charge with the average of its own route.",
  spikeIgnoreRoutes: "One per line or comma separated, as METHOD /path (e.g. POST /v1/images).",
  spikeIgnoreUpTo: "Charges up to this amount are never a spike.",
  callsPerMinute: "More calls than this in a sliding minute fires the rule.",
  lowBalancePercent: "Less than this share of the limit left fires the rule.",
};

const SOURCE_TEXT: Record<Source, string> = { key: "from key", owner: "from your defaults", seed: "from seed" };

/** A key's rule settings: what is in force and where each value comes from, the form to override
 * them for this key (each field may inherit), and the history of changes. */
export function RuleSettingsCard({ address, onMessage }: { address: string; onMessage: (message: Message) => void }) {
  const path = `/api/session-keys/${address}/rules`;
  const { data, error, isLoading, mutate } = useSWR<RulesView>(path, fetcher);
  return (
    <Card aria-labelledby="rules-title">
      <CardHeader>
        <CardTitle id="rules-title">Rule settings</CardTitle>
        <CardDescription>
          What the rule engine applies to this key and where each value comes from: the deployment's defaults (seed), yours
          (owner), or this key's own. Override any of them for this key; leave the rest to inherit.
        </CardDescription>
      </CardHeader>
      <CardContent className="grid gap-5">
        {isLoading && <p className="text-muted-foreground text-sm" role="status">Loading rule settings…</p>}
        {error && !data && (
          <Alert variant="destructive">
            <AlertTitle>The rule settings could not be loaded</AlertTitle>
            <AlertDescription>{(error as Error).message}</AlertDescription>
          </Alert>
        )}
        {data && (
          <>
            <RulesForm
              // A new server state (saved here, or changed by an unfreeze to shadow) starts the form afresh.
              key={JSON.stringify([data.seed, setOverrides(data.owner), setOverrides(data.key)])}
              view={data}
              path={path}
              onSaved={(saved) => {
                void mutate(saved, { revalidate: false });
                const set = SETTINGS.filter((s) => sourceOf(saved, s) === "key").map((s) => SETTING_LABELS[s].replace(/ \(USDC\)$/, "").toLowerCase());
                onMessage({
                  kind: "ok",
                  text: `Rule settings saved: ${set.length > 0 ? `this key overrides ${set.join(", ")}` : "this key inherits every setting"}.`,
                });
              }}
            />
            <History view={data} />
          </>
        )}
      </CardContent>
    </Card>
  );
}

function RulesForm({ view, path, onSaved }: { view: RulesView; path: string; onSaved: (saved: RulesView) => void }) {
  const id = useId();
  const { values: inherited, sources: inheritedFrom } = inheritedSettings(view);
  const [draft, setDraft] = useState<Draft>(() => draftOf(setOverrides(view.key), inherited));
  const [errors, setErrors] = useState<Partial<Record<SettingName, string>>>({});
  const [failure, setFailure] = useState<{ text: string; field?: SettingName } | null>(null);
  const [busy, setBusy] = useState(false);

  const edit = (setting: SettingName, change: Partial<Draft[SettingName]>) => {
    setDraft((d) => ({ ...d, [setting]: { ...d[setting], ...change } }));
    setErrors((e) => (setting in e ? { ...e, [setting]: undefined } : e));
  };
  const setInherit = (setting: SettingName, inherit: boolean) =>
    // Inheriting shows the inherited value again; overriding starts from it.
    edit(setting, inherit ? { inherit, text: toText(setting, inherited[setting]) } : { inherit });

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    setFailure(null);
    const { overrides, errors } = overridesOf(draft);
    setErrors(errors);
    if (!overrides) return;
    setBusy(true);
    try {
      onSaved(await api<RulesView>(path, { method: "PUT", json: overrides }));
    } catch (err) {
      const field = err instanceof ApiError && err.field && isSetting(err.field) ? err.field : undefined;
      setFailure({ text: (err as Error).message, field });
    } finally {
      setBusy(false);
    }
  };

  const fieldId = (setting: SettingName) => `${id}-${setting}`;
  const describedBy = (setting: SettingName) =>
    [errors[setting] && `${fieldId(setting)}-error`, failure?.field === setting && `${id}-failure`, HELP[setting] && `${fieldId(setting)}-help`]
      .filter(Boolean)
      .join(" ") || undefined;
  const invalid = (setting: SettingName) => (errors[setting] || failure?.field === setting ? true : undefined);

  const control = (setting: SettingName) => {
    const field = draft[setting];
    const common = {
      id: fieldId(setting),
      disabled: field.inherit,
      "aria-invalid": invalid(setting),
      "aria-describedby": describedBy(setting),
    };
    switch (setting) {
      case "spikeMode":
      case "rateMode":
      case "lowBalanceMode":
        return (
          <select
            {...common}
            value={field.text}
            onChange={(e) => edit(setting, { text: e.target.value })}
            className="h-9 w-44 rounded-md border bg-transparent px-2 text-sm shadow-xs outline-none focus-visible:ring-[3px] disabled:opacity-50 aria-invalid:border-destructive"
          >
            {MODES.map((m) => (
              <option key={m} value={m}>{MODE_TEXT[m]}</option>
            ))}
          </select>
        );
      case "spikeByRoute":
        return (
          <input
            {...common}
            type="checkbox"
            className="size-4"
            checked={field.text === "true"}
            onChange={(e) => edit(setting, { text: String(e.target.checked) })}
          />
        );
      case "spikeIgnoreRoutes":
        return (
          <textarea
            {...common}
            rows={2}
            placeholder="POST /v1/images"
            value={field.text}
            onChange={(e) => edit(setting, { text: e.target.value })}
            className={cn(
              "w-full max-w-sm rounded-md border bg-transparent px-3 py-1 font-mono text-sm shadow-xs outline-none",
              "focus-visible:ring-[3px] disabled:opacity-50 aria-invalid:border-destructive",
            )}
          />
        );
      default:
        return (
          <Input
            {...common}
            className="w-44"
            inputMode={setting === "callsPerMinute" ? "numeric" : "decimal"}
            value={field.text}
            onChange={(e) => edit(setting, { text: e.target.value })}
          />
        );
    }
  };

  return (
    <form aria-label="Rule settings for this key" className="grid gap-5" onSubmit={(e) => void submit(e)} noValidate>
      {GROUPS.map((group) => (
        <fieldset key={group.legend} className="grid gap-3">
          <legend className="mb-2 text-sm font-semibold">{group.legend}</legend>
          {group.settings.map((setting) => {
            const label = SETTING_LABELS[setting];
            const plain = label.replace(/ \(USDC\)$/, "").toLowerCase();
            const source = sourceOf(view, setting);
            return (
              <div key={setting} className="grid gap-1.5 sm:grid-cols-[14rem_1fr] sm:items-start">
                <Label htmlFor={fieldId(setting)} className="sm:pt-2">{label}</Label>
                <div className="grid gap-1">
                  <div className="flex flex-wrap items-center gap-3">
                    {control(setting)}
                    <label className="flex items-center gap-1.5 text-sm">
                      <input
                        type="checkbox"
                        aria-label={`Inherit ${plain}`}
                        checked={draft[setting].inherit}
                        onChange={(e) => setInherit(setting, e.target.checked)}
                      />
                      Inherit
                      <span className="text-muted-foreground">
                        ({settingValueText(setting, inherited[setting])} {SOURCE_TEXT[inheritedFrom[setting]]})
                      </span>
                    </label>
                  </div>
                  <p className="text-muted-foreground flex flex-wrap items-center gap-1.5 text-xs" data-testid={`effective-${setting}`}>
                    In force: <span className="text-foreground font-medium">{settingValueText(setting, view.effective[setting])}</span>
                    <Badge variant={source === "key" ? "default" : "outline"}>{SOURCE_TEXT[source]}</Badge>
                  </p>
                  {HELP[setting] && (
                    <p id={`${fieldId(setting)}-help`} className="text-muted-foreground text-xs">{HELP[setting]}</p>
                  )}
                  {setting === "callsPerMinute" && view.suggestion && (
                    <p className="flex flex-wrap items-center gap-2 text-xs" data-testid="rate-suggestion">
                      Suggested: {view.suggestion.callsPerMinute}, half as many again as this key's busiest minute in the last
                      24 hours ({view.suggestion.busiestMinute} calls).
                      <Button
                        type="button"
                        variant="outline"
                        size="sm"
                        onClick={() => edit("callsPerMinute", { inherit: false, text: String(view.suggestion?.callsPerMinute) })}
                      >
                        Use {view.suggestion.callsPerMinute}
                      </Button>
                    </p>
                  )}
                  {errors[setting] && (
                    <p id={`${fieldId(setting)}-error`} className="text-destructive text-sm" role="alert">{errors[setting]}</p>
                  )}
                </div>
              </div>
            );
          })}
        </fieldset>
      ))}
      {failure && (
        <Alert variant="destructive" id={`${id}-failure`} data-testid="rules-failure">
          <AlertTitle>The rule settings were not saved</AlertTitle>
          <AlertDescription>{failure.text}</AlertDescription>
        </Alert>
      )}
      <div className="flex justify-end">
        <Button type="submit" disabled={busy}>{busy ? "Saving…" : "Save rule settings"}</Button>
      </div>
    </form>
  );
}

/** The audited changes of this key's rules, newest first. */
function History({ view }: { view: RulesView }) {
  const changes = [...view.history].reverse();
  return (
    <div className="grid gap-2">
      <h3 id="rules-history-title" className="text-sm font-semibold">History</h3>
      {changes.length === 0 ? (
        <p className="text-muted-foreground text-sm">No changes: this key has followed the defaults all along.</p>
      ) : (
        <ol aria-labelledby="rules-history-title" className="grid max-h-60 gap-1 overflow-y-auto text-xs">
          {changes.map((c, i) => (
            <li key={`${c.at}-${i}`} className="flex flex-wrap gap-x-2 border-t pt-1" data-testid="rule-change">
              <span className="text-muted-foreground">{utc(c.at)}</span>
              <span className="font-mono" title={c.actor}>{/^0x[0-9a-fA-F]{40}$/.test(c.actor) ? short(c.actor) : c.actor}</span>
              <span className="font-medium">{c.action.replace(/_/g, " ")}</span>
              <span className="break-all">{changeDetailText(c.detail)}</span>
            </li>
          ))}
        </ol>
      )}
    </div>
  );
}
