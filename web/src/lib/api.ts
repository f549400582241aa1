/** The session-key service's REST API (same origin; the session cookie authenticates). */

import type { Address, Hex } from "viem";

/** Key status as the API reports it. */
export type KeyStatus = "pending" | "active" | "not_yet_valid" | "frozen" | "revoked" | "expired";

/** Amounts are USDC base units as decimal strings. */
export interface Usage {
  served: string;
  settled: string;
  pending: string;
  remaining: string;
  percentUsed: number;
}

export interface KeyView {
  address: Address;
  owner: Address;
  payee: Address;
  status: KeyStatus;
  limit: string;
  validAfter: number;
  validUntil: number;
  frozenAt: number | null;
  revokedAt: number | null;
  deletedAt: number | null;
  usage: Usage;
  createdAt: number;
  lastActivityAt: number | null;
  /** What the gateway can still charge the owner on this key's tab (tab available + settled −
   * served, floored at 0). "0": every call is refused with `insufficient_funds`. Absent from a
   * server older than tabs. */
  tabFree?: string;
}

export interface Settlement {
  amount: string;
  cumulative: string;
  txHash: Hex;
  blockNumber: number;
}

/** The rule engine's rules. */
export type RuleName = "spike" | "rate" | "low_balance";

/** What a rule does when it fires: alert and freeze (where it freezes), alert only, or nothing. */
export type RuleMode = "enforce" | "shadow" | "off";

/** An amount in USDC base units, as a decimal string or (from some fields) a JSON number. */
export type BaseUnits = string | number;

/** Every setting of the rule engine, as applied to a key (or a deployment's defaults). */
export interface RuleSettings {
  /** A charge above this many times the key's average is a spike. */
  spikeMultiple: number;
  spikeMode: RuleMode;
  /** Compare a charge with the average of its own route rather than the key's. */
  spikeByRoute: boolean;
  /** Routes the spike rule ignores, as `METHOD /path` (e.g. `POST /v1/images`). */
  spikeIgnoreRoutes: string[];
  /** Charges up to this (base units) are never a spike. */
  spikeIgnoreUpTo: string;
  /** More calls than this in a sliding minute is too many. */
  callsPerMinute: number;
  rateMode: RuleMode;
  /** Less than this percentage of the limit left is low. */
  lowBalancePercent: number;
  lowBalanceMode: RuleMode;
}

/** Overrides of some settings; an absent (or null) field inherits. */
export type RuleOverrides = { [K in keyof RuleSettings]?: RuleSettings[K] | null };

/** One audited change of rule settings. */
export interface RuleChange {
  /** Unix seconds. */
  at: number;
  /** Who made it (the owner's address, or opentab). */
  actor: string;
  action: string;
  /** JSON text: what was set. */
  detail: string;
}

/** `GET /api/session-keys/{key}/rules` (and `/api/rules`, without `key`). */
export interface RulesView {
  /** What the gateway applies now. */
  effective: RuleSettings;
  /** The deployment's defaults. */
  seed: RuleSettings;
  /** The owner's defaults. */
  owner: RuleOverrides;
  /** This key's overrides (absent from the owner-wide view). */
  key?: RuleOverrides;
  /** Rule changes, oldest first. */
  history: RuleChange[];
  /** A calls-per-minute setting fitted to the key's last 24 hours (key views, once charged). */
  suggestion?: { callsPerMinute: number; busiestMinute: number };
}

/** What a rule saw when it fired; each field may be absent. Amounts are base units. */
export interface AlertInputs {
  charge?: BaseUnits;
  callsBefore?: number;
  servedBefore?: BaseUnits;
  callsLastMinute?: number;
  limit?: BaseUnits;
  servedAfter?: BaseUnits;
  average?: BaseUnits;
  route?: string;
}

/** A setting and its value, e.g. `{ setting: "callsPerMinute", value: 3 }`. */
export interface SettingValue {
  setting: string;
  value: number | string | boolean;
}

/** A rule engine alert: which rule, why (with the numbers), and whether it froze the key. */
export interface RuleAlert {
  rule: RuleName;
  mode: "enforce" | "shadow";
  reason: string;
  froze: boolean;
  firedAt: number;
  recoveredAt: number | null;
  /** The numbers the rule saw (absent from older servers). */
  inputs?: AlertInputs | null;
  /** The setting in force when it fired. */
  threshold?: SettingValue | null;
  /** The least value of that setting that would not have fired; null when none would have. */
  wouldNotFire?: SettingValue | null;
}

export interface KeyDetail extends KeyView {
  settlements: Settlement[];
  alerts: RuleAlert[];
}

/** The owner's tab with one payee: USDC only that payee's keys of this owner draw on. */
export interface Tab {
  payee: Address;
  balance: string;
  /** balance − pending withdrawal. */
  available: string;
  pendingWithdrawal: string | null;
  /** The first unix second (chain time) at which `withdraw(payee)` succeeds. */
  withdrawalReadyAt: number | null;
  /** The owner's session keys that pay this payee. */
  keys: Address[];
}

/** `GET /api/tabs` (and the SSE `tabs` event): the signed-in owner's tabs and where they live. */
export interface Tabs {
  owner: Address;
  validator: Address;
  usdc: Address;
  chainId: number;
  /** Seconds a withdrawal waits, so the payee can settle first. */
  grace: number;
  /** This service's payee: the tab its API draws on (always listed, even at 0). */
  payee: Address;
  /** Who may freeze the owner's keys on-chain. */
  guardian: Address | null;
  /** The account opentab's rule engine freezes with, if it has one. */
  ruleGuardian: Address | null;
  tabs: Tab[];
}

/** EIP-712 typed data as the API hands it out (numbers may be decimal strings). */
export interface TypedData {
  domain: { name: string; version: string; chainId: number; verifyingContract: Address };
  types: Record<string, { name: string; type: string }[]>;
  primaryType: string;
  message: Record<string, unknown>;
}

export interface PreparedKey {
  sessionKey: Address;
  privateKey: Hex | null;
  typedData: TypedData;
}

export interface Relayed {
  key: KeyView;
  txHash: Hex | null;
  txStatus: "mined" | "pending" | "not_needed";
}

/** A refusal of the API (`application/problem+json`), or a network failure (status 0). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    /** The server's own words. The message is the same, except for a rate limit's (see `problemMessage`). */
    readonly detail: string,
    readonly field?: string,
    /** Seconds to wait before trying again (`Retry-After`), on a 429. */
    readonly retryAfter?: number,
  ) {
    super(problemMessage(code, detail, retryAfter));
    this.name = "ApiError";
  }
}

/** What a refusal says to the user: a rate limit says when to try again; the rest, the server's detail. */
export function problemMessage(code: string, detail: string, retryAfter?: number): string {
  if (code !== "rate_limited") return detail;
  return retryAfter === undefined
    ? "Too many requests just now; try again in a moment."
    : `Too many requests just now; try again in ${retryAfter} s.`;
}

/** `Retry-After` in whole seconds from now: delay-seconds or an HTTP date; undefined if absent or unreadable. */
export function retryAfterSeconds(header: string | null, now: number = Date.now()): number | undefined {
  if (header === null || header.trim() === "") return undefined;
  const text = header.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - now) / 1000));
}

export async function api<T>(path: string, init?: RequestInit & { json?: unknown }): Promise<T> {
  const headers = new Headers(init?.headers);
  let body = init?.body;
  if (init?.json !== undefined) {
    headers.set("content-type", "application/json");
    body = JSON.stringify(init.json);
  }
  let res: Response;
  try {
    res = await fetch(path, { ...init, headers, body, credentials: "same-origin" });
  } catch {
    throw new ApiError(0, "network", "opentab cannot be reached; check that it is running");
  }
  const text = await res.text();
  if (!res.ok) {
    let problem: { code?: string; detail?: string; field?: string } = {};
    try {
      problem = JSON.parse(text) as typeof problem;
    } catch {
      // not JSON: keep the status
    }
    throw new ApiError(
      res.status,
      problem.code ?? `http_${res.status}`,
      problem.detail ?? (text || res.statusText),
      problem.field,
      res.status === 429 ? retryAfterSeconds(res.headers.get("retry-after")) : undefined,
    );
  }
  return (text ? JSON.parse(text) : undefined) as T;
}

/** SWR's fetcher. */
export const fetcher = <T,>(path: string) => api<T>(path);
