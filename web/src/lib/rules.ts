/** The rule engine's rules and settings, for people: names, values, sources, and the sentences
 * that explain a decision (what a rule saw, the setting in force, the one that would not have fired). */

import type { AlertInputs, BaseUnits, KeyDetail, RuleAlert, RuleName, RuleOverrides, RuleSettings, RulesView, SettingValue } from "./api";
import { usdcAmount } from "./format";

/** What each rule watches for. */
export const RULE_NAMES: Record<string, string> = {
  spike: "Unusually large charge",
  rate: "Too many calls in a minute",
  low_balance: "Limit almost used up",
};

/** A rule in a sentence: "switch the rate rule to shadow". */
export const RULE_SHORT: Record<RuleName, string> = {
  spike: "the spike rule",
  rate: "the rate rule",
  low_balance: "the low-balance rule",
};

export type SettingName = keyof RuleSettings;

/** The settings in the order the form shows them, with their labels. */
export const SETTING_LABELS: Record<SettingName, string> = {
  spikeMultiple: "Spike multiple",
  spikeMode: "Spike mode",
  spikeByRoute: "Compare by route",
  spikeIgnoreRoutes: "Routes the spike rule ignores",
  spikeIgnoreUpTo: "Ignore charges up to (USDC)",
  callsPerMinute: "Calls per minute",
  rateMode: "Rate mode",
  lowBalancePercent: "Low-balance percent",
  lowBalanceMode: "Low-balance mode",
};

export const SETTINGS = Object.keys(SETTING_LABELS) as SettingName[];

export function isSetting(name: string): name is SettingName {
  return Object.prototype.hasOwnProperty.call(SETTING_LABELS, name);
}

/** Where a setting in force for a key comes from. */
export type Source = "key" | "owner" | "seed";

const present = (value: unknown) => value !== undefined && value !== null;

/** A key's override wins over the owner's default, which wins over the deployment's. */
export function sourceOf(view: Pick<RulesView, "owner" | "key">, setting: SettingName): Source {
  if (present(view.key?.[setting])) return "key";
  if (present(view.owner[setting])) return "owner";
  return "seed";
}

/** What a key gets for each setting it does not override: the owner's default, else the seed's. */
export function inheritedSettings(view: Pick<RulesView, "seed" | "owner">): { values: RuleSettings; sources: Record<SettingName, Source> } {
  const values = { ...view.seed } as Record<SettingName, unknown>;
  const sources = {} as Record<SettingName, Source>;
  for (const setting of SETTINGS) {
    const own = view.owner[setting];
    if (present(own)) values[setting] = own;
    sources[setting] = present(own) ? "owner" : "seed";
  }
  return { values: values as unknown as RuleSettings, sources };
}

/** Only the overrides that are set (a server may send an inherited field as null). */
export function setOverrides(overrides: RuleOverrides | undefined): RuleOverrides {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(overrides ?? {})) if (present(value)) out[name] = value;
  return out as RuleOverrides;
}

/** A setting's value for people: `10×`, `0.05 USDC`, `10%`, `yes`, `POST /v1/images, GET /v1/x`. */
export function settingValueText(setting: string, value: unknown): string {
  if (value === undefined || value === null) return "—";
  switch (setting) {
    case "spikeMultiple":
      return `${value}×`;
    case "spikeIgnoreUpTo":
      return usdcAmount(value as BaseUnits);
    case "lowBalancePercent":
      return `${value}%`;
    case "spikeByRoute":
      return value ? "yes" : "no";
    case "spikeIgnoreRoutes":
      return Array.isArray(value) && value.length > 0 ? value.join(", ") : "none";
    default:
      return Array.isArray(value) ? value.join(", ") : String(value);
  }
}

const plural = (n: unknown, one: string, many: string) => (Number(n) === 1 ? one : many);

/** A setting with its value as a phrase: "a limit of 3 calls a minute", "a spike multiple of 10×". */
export function settingPhrase({ setting, value }: SettingValue): string {
  switch (setting) {
    case "callsPerMinute":
      return `a limit of ${value} ${plural(value, "call", "calls")} a minute`;
    case "spikeMultiple":
      return `a spike multiple of ${value}×`;
    case "lowBalancePercent":
      return `a low-balance threshold of ${value}%`;
    case "spikeIgnoreUpTo":
      return `ignoring charges up to ${settingValueText(setting, value)}`;
    default:
      return `${isSetting(setting) ? SETTING_LABELS[setting].toLowerCase() : setting} ${settingValueText(setting, value)}`;
  }
}

const capital = (text: string) => text.charAt(0).toUpperCase() + text.slice(1);

/** "In force: a limit of 3 calls a minute." */
export function thresholdText(threshold: SettingValue): string {
  return `In force: ${settingPhrase(threshold)}.`;
}

/** "A limit of 4 calls a minute would not have fired." — or, when no value would have (`null`),
 * says so for the setting in force ("No spike multiple would have kept it from firing."). */
export function wouldNotFireText(wouldNotFire: SettingValue | null, threshold?: SettingValue | null): string {
  if (wouldNotFire) return `${capital(settingPhrase(wouldNotFire))} would not have fired.`;
  const nouns: Record<string, string> = {
    callsPerMinute: "limit of calls a minute",
    spikeMultiple: "spike multiple",
    lowBalancePercent: "low-balance threshold",
  };
  const noun = (threshold && nouns[threshold.setting]) ?? "value of this setting";
  return `No ${noun} would have kept it from firing.`;
}

/** The numbers a rule saw, in the order people read them, each as [field, label, text]. */
export function inputRows(inputs: AlertInputs | null | undefined): [keyof AlertInputs, string, string][] {
  if (!inputs) return [];
  const amount = (v: unknown) => usdcAmount(v as BaseUnits);
  const count = (v: unknown) => String(v);
  const rows: [keyof AlertInputs, string, (v: unknown) => string][] = [
    ["callsLastMinute", "Calls in the last minute", count],
    ["charge", "This charge", amount],
    ["average", "Average charge", amount],
    ["route", "Route", count],
    ["callsBefore", "Calls before it", count],
    ["servedBefore", "Served before it", amount],
    ["servedAfter", "Served after it", amount],
    ["limit", "Limit", amount],
  ];
  return rows.filter(([field]) => present(inputs[field])).map(([field, label, text]) => [field, label, text(inputs[field])]);
}

/** The alert that froze a frozen key: its newest open alert that froze it. */
export function freezingAlert(detail: Pick<KeyDetail, "status" | "alerts">): RuleAlert | undefined {
  if (detail.status !== "frozen") return undefined;
  // Alerts come newest first.
  return detail.alerts.find((a) => a.froze && a.recoveredAt === null);
}

/** An audited change's detail (JSON text) for people: "calls per minute 3, rate mode shadow". */
export function changeDetailText(detail: string): string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(detail);
  } catch {
    return detail;
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) return detail;
  const parts = Object.entries(parsed as Record<string, unknown>).map(([name, value]) => {
    if (isSetting(name)) {
      const label = SETTING_LABELS[name].replace(/ \(USDC\)$/, "").toLowerCase();
      return `${label} ${value === null ? "inherited" : settingValueText(name, value)}`;
    }
    return `${name} ${typeof value === "object" && value !== null ? JSON.stringify(value) : String(value)}`;
  });
  return parts.length > 0 ? parts.join(", ") : "—";
}
