/**
 * @opentab/client — pay for opentab-gated APIs with a session key.
 *
 * `wrapFetchWithPayment(fetch, options)` returns a `fetch` that answers `402 Payment Required`
 * (x402 v2, scheme `session`) by signing the next cumulative voucher with the session key and
 * retrying once. The running total per payee is persisted before each voucher leaves (so a
 * restarted agent never signs a lower total than one it already gave away), and a spending
 * cap bounds everything it will ever sign.
 *
 * ```ts
 * import { wrapFetchWithPayment } from "@opentab/client";
 * const pay = wrapFetchWithPayment(fetch, {
 *   privateKey: "0x…",
 *   cap: "5",                                  // the most it will ever sign, all calls together
 *   statePath: ".opentab-client.json",
 *   trust: {                                   // who may ask it to pay, and for what
 *     "http://127.0.0.1:8402": { payTo: "0xPayee…", networks: "eip155:31337", validators: "0xValidator…", maxPrice: "0.01" },
 *   },
 * });
 * const res = await pay("http://127.0.0.1:8402/v1/chat/completions", { method: "POST", body: "{}" });
 * ```
 *
 * **It signs only what it meant to.** A 402 is answered only if it comes from a trusted origin
 * (scheme, host and port of the URL that answered 402) and asks for a payee (`payTo`), a network
 * (`eip155:<chainId>`) and a validator (`extra.validator`) trusted for that origin, at a price
 * no higher than the per-call maximum (the origin's `maxPrice`, else the client's `maxPrice`,
 * else 0.1 USDC). Anything else throws an {@link UntrustedPaymentError} whose `code` says why
 * (`untrusted_origin`, `untrusted_payee`, `untrusted_network`, `untrusted_validator`,
 * `price_above_max`): nothing is signed and the signed total does not move. A 402 reached through
 * a redirect to another origin is refused too, and the paid retry does not follow redirects
 * (its `PAYMENT-SIGNATURE` would go along), so a voucher only ever goes to the origin it was
 * signed for.
 *
 * **Without `trust`: trust on first use, one origin.** A session key can pay exactly one payee
 * through one validator on one chain, so a client holding one key needs to trust exactly one
 * API. An unconfigured client pins the first 402 it accepts — its origin, payee, network and
 * validator — and refuses every other origin or value from then on; the pin is kept in
 * `statePath` with the totals, so a restart keeps it. This keeps `{ privateKey, cap }` working
 * for the usual single API while a page elsewhere can no longer ask for a voucher (finding: a
 * hostile page answering 402 with the real payee and the whole cap got a voucher worth the
 * cap). It cannot tell a hostile *first* origin from the real one: give `trust` explicitly when
 * the key is worth protecting, or when one API answers on several origins.
 */

import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { privateKeyToAccount } from "viem/accounts";
import type { Address, Hex } from "viem";

/** The header names of the x402 v2 HTTP transport (lower case, as fetch reports them). */
export const PAYMENT_REQUIRED = "payment-required";
export const PAYMENT_SIGNATURE = "payment-signature";
export const PAYMENT_RESPONSE = "payment-response";

/** The EIP-712 type a session key signs: everything it ever promised `payee`. */
export const VOUCHER_TYPES = {
  Voucher: [
    { name: "sessionKey", type: "address" },
    { name: "payee", type: "address" },
    { name: "cumulativeAmount", type: "uint256" },
  ],
} as const;

/** One way to pay, from a 402's `accepts`. */
export interface Requirements {
  scheme: string;
  network: string;
  /** Price in USDC base units (6 decimals), as a decimal string. */
  amount: string;
  asset: Address;
  payTo: Address;
  maxTimeoutSeconds: number;
  extra: { validator: Address; eip712: { name: string; version: string } };
}

/** The body and `PAYMENT-REQUIRED` header of a 402. */
export interface PaymentRequired {
  x402Version: number;
  error?: string;
  message?: string;
  resource: { url: string; description: string; mimeType: string };
  accepts: Requirements[];
}

/** The `PAYMENT-RESPONSE` receipt of a paid call (amounts in base units). */
export interface PaymentResponse {
  success: boolean;
  payer: Address;
  network: string;
  receipt: { sessionKey: Address; charged: string; served: string; remaining: string };
}

/** What the client trusts one origin to ask for. */
export interface OriginTrust {
  /** The payees (`payTo`) this origin may ask to be paid. */
  payTo: Address | Address[];
  /** The networks it may name, CAIP-2 `eip155:<chainId>`. */
  networks: string | string[];
  /** The validator contracts (`extra.validator`) it may name. */
  validators: Address | Address[];
  /** The most one call to this origin may cost: whole USDC (`"0.01"`) or base units; the client's `maxPrice` without it. */
  maxPrice?: string | bigint;
}

export interface PayingFetchOptions {
  /** The session key's private key. */
  privateKey: Hex;
  /** The most this client will ever sign per payee: whole USDC (`"5"`, `"0.25"`) or base units. */
  cap: string | bigint;
  /** A JSON file keeping the signed totals (and the first-use pin) across restarts; in memory only without it. */
  statePath?: string;
  /**
   * Origins (`"https://api.example.com"`) allowed to ask for payment, each with what it may ask
   * for. Without it, the first origin that asks is pinned (see the module docs).
   */
  trust?: Record<string, OriginTrust>;
  /** The most one call may cost, for origins without their own `maxPrice`: whole USDC or base units (default `"0.1"`). */
  maxPrice?: string | bigint;
}

/** The default per-call maximum: 0.1 USDC. */
export const DEFAULT_MAX_PRICE = 100_000n;

/** Why a 402 was not paid. */
export type PaymentErrorCode =
  | "untrusted_origin"
  | "untrusted_payee"
  | "untrusted_network"
  | "untrusted_validator"
  | "price_above_max"
  | "cap_exceeded"
  | "unpayable";

/** The client refused to pay a 402; nothing was signed. `code` says why. */
export class PaymentError extends Error {
  constructor(
    readonly code: PaymentErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "PaymentError";
  }
}

/** The 402 asked for something this client does not trust (see the module docs); nothing was signed. */
export class UntrustedPaymentError extends PaymentError {
  constructor(
    code: Exclude<PaymentErrorCode, "cap_exceeded" | "unpayable">,
    message: string,
    /** The origin that answered 402. */
    readonly origin: string,
    /** What it asked for. */
    readonly requirements: Requirements | undefined,
  ) {
    super(code, `refusing to pay ${origin}: ${message}`);
    this.name = "UntrustedPaymentError";
  }
}

/** Paying would take the signed total past the cap; nothing was signed. */
export class CapExceededError extends PaymentError {
  constructor(
    readonly price: bigint,
    readonly total: bigint,
    readonly cap: bigint,
  ) {
    super("cap_exceeded", `paying ${price} would bring the signed total to ${total}, past the cap of ${cap} (base units)`);
    this.name = "CapExceededError";
  }
}

/** The 402 offered nothing this client can pay. */
export class UnpayableError extends PaymentError {
  constructor(message: string) {
    super("unpayable", `the 402 offers no usable \`session\` payment: ${message}`);
    this.name = "UnpayableError";
  }
}

/** Parses whole USDC with up to 6 decimals (`"5"`, `"$0.002"`) into base units. */
export function parseUsdc(text: string): bigint {
  const match = /^\$?(\d+)(?:\.(\d{1,6}))?$/.exec(text.trim());
  if (!match) throw new Error(`${JSON.stringify(text)} is not a USDC amount like "5" or "0.002"`);
  return BigInt(match[1]!) * 1_000_000n + BigInt((match[2] ?? "").padEnd(6, "0"));
}

const amountOf = (value: string | bigint) => (typeof value === "bigint" ? value : parseUsdc(value));

/** Decodes a base64 JSON header (`PAYMENT-REQUIRED`, `PAYMENT-RESPONSE`). */
export function decodeHeader<T>(value: string): T {
  return JSON.parse(Buffer.from(value, "base64").toString("utf8")) as T;
}

/** Encodes a JSON value as a header. */
export function encodeHeader(value: unknown): string {
  return Buffer.from(JSON.stringify(value), "utf8").toString("base64");
}

/** The receipt of a response, if it was paid for. */
export function receiptOf(response: Response): PaymentResponse | undefined {
  const value = response.headers.get(PAYMENT_RESPONSE);
  return value ? decodeHeader<PaymentResponse>(value) : undefined;
}

/** What one origin may ask for, normalised (addresses lower case). */
interface Trusted {
  payTo: Set<string>;
  networks: Set<string>;
  validators: Set<string>;
  maxPrice: bigint;
}

/** The first-use pin of an unconfigured client. */
interface Pin {
  origin: string;
  payTo: string;
  network: string;
  validator: string;
}

const ADDRESS = /^0x[0-9a-fA-F]{40}$/;

const list = <T extends string>(value: T | T[]): T[] => (Array.isArray(value) ? value : [value]);

function originOf(url: string, what: string): string {
  let origin: string;
  try {
    origin = new URL(url).origin;
  } catch {
    throw new Error(`${what} ${JSON.stringify(url)} is not a URL like "https://api.example.com"`);
  }
  if (origin === "null") throw new Error(`${what} ${JSON.stringify(url)} has no origin (use http: or https:)`);
  return origin;
}

function compileTrust(trust: Record<string, OriginTrust>, maxPrice: bigint): Map<string, Trusted> {
  const compiled = new Map<string, Trusted>();
  for (const [key, entry] of Object.entries(trust)) {
    const origin = originOf(key, "trusted origin");
    const where = `trust[${JSON.stringify(key)}]`;
    const payTo = list(entry.payTo ?? []);
    const networks = list(entry.networks ?? []);
    const validators = list(entry.validators ?? []);
    for (const [name, values] of [["payTo", payTo], ["validators", validators]] as const) {
      if (values.length === 0) throw new Error(`${where}.${name} must name at least one address`);
      for (const value of values) {
        if (!ADDRESS.test(value)) throw new Error(`${where}.${name}: ${JSON.stringify(value)} is not an address`);
      }
    }
    if (networks.length === 0) throw new Error(`${where}.networks must name at least one network`);
    for (const network of networks) {
      if (!/^eip155:\d+$/.test(network)) throw new Error(`${where}.networks: ${JSON.stringify(network)} is not eip155:<chainId>`);
    }
    compiled.set(origin, {
      payTo: new Set(payTo.map((a) => a.toLowerCase())),
      networks: new Set(networks),
      validators: new Set(validators.map((a) => a.toLowerCase())),
      maxPrice: entry.maxPrice === undefined ? maxPrice : amountOf(entry.maxPrice),
    });
  }
  return compiled;
}

/** Signed totals per (session key, payee) and the first-use pin, persisted before each voucher leaves. */
class State {
  private readonly totals = new Map<string, bigint>();
  pin: Pin | undefined;

  constructor(private readonly path?: string) {
    if (path && existsSync(path)) {
      const saved = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
      // Older files hold the totals alone, as a flat object.
      const totals = (typeof saved.totals === "object" && saved.totals !== null ? saved.totals : saved) as Record<string, unknown>;
      for (const [slot, total] of Object.entries(totals)) {
        if (typeof total === "string") this.totals.set(slot, BigInt(total));
      }
      if (typeof saved.pinned === "object" && saved.pinned !== null) this.pin = saved.pinned as Pin;
    }
  }

  get(slot: string): bigint {
    return this.totals.get(slot) ?? 0n;
  }

  /** Raises the total (and sets the pin, if given) and writes them down, synchronously:
   * concurrent calls cannot interleave. */
  reserve(slot: string, price: bigint, cap: bigint, pin?: Pin): bigint {
    const total = this.get(slot) + price;
    if (total > cap) throw new CapExceededError(price, total, cap);
    this.totals.set(slot, total);
    if (pin) this.pin = pin;
    if (this.path) {
      const json = {
        totals: Object.fromEntries([...this.totals].map(([k, v]) => [k, v.toString()])),
        ...(this.pin ? { pinned: this.pin } : {}),
      };
      writeFileSync(`${this.path}.tmp`, JSON.stringify(json, null, 2));
      renameSync(`${this.path}.tmp`, this.path);
    }
    return total;
  }
}

function urlOf(input: RequestInfo | URL): string {
  if (typeof input === "string") return input;
  if (input instanceof URL) return input.href;
  return input.url;
}

/** Why `offer` is not even well-formed, if it is not. */
function malformed(offer: Requirements): UnpayableError | undefined {
  const extra = offer.extra as Partial<Requirements["extra"]> | undefined;
  if (typeof offer.amount !== "string" || !/^\d+$/.test(offer.amount)) return new UnpayableError(`amount ${JSON.stringify(offer.amount)} is not base units`);
  if (typeof offer.network !== "string" || !/^eip155:\d{1,15}$/.test(offer.network)) {
    return new UnpayableError(`network ${JSON.stringify(offer.network)} is not eip155:<chainId>`);
  }
  if (typeof offer.payTo !== "string" || !ADDRESS.test(offer.payTo)) return new UnpayableError(`payTo ${JSON.stringify(offer.payTo)} is not an address`);
  if (typeof extra?.validator !== "string" || !ADDRESS.test(extra.validator)) {
    return new UnpayableError(`extra.validator ${JSON.stringify(extra?.validator)} is not an address`);
  }
  if (typeof extra.eip712?.name !== "string" || typeof extra.eip712.version !== "string") {
    return new UnpayableError("extra.eip712 lacks a name and version");
  }
  return undefined;
}

/** Why `accepted`, offered by `origin`, may not be paid; undefined when it may. */
function refusal(
  origin: string,
  accepted: Requirements,
  trusted: Trusted | undefined,
  pin: Pin | undefined,
  configured: boolean,
): UntrustedPaymentError | undefined {
  const refuse = (code: ConstructorParameters<typeof UntrustedPaymentError>[0], message: string) =>
    new UntrustedPaymentError(code, message, origin, accepted);
  const payTo = accepted.payTo.toLowerCase();
  const validator = accepted.extra.validator.toLowerCase();
  if (configured) {
    if (!trusted) return refuse("untrusted_origin", "this origin is not in the client's trust settings");
    if (!trusted.payTo.has(payTo)) return refuse("untrusted_payee", `payee ${accepted.payTo} is not trusted for this origin`);
    if (!trusted.networks.has(accepted.network)) {
      return refuse("untrusted_network", `network ${accepted.network} is not trusted for this origin`);
    }
    if (!trusted.validators.has(validator)) {
      return refuse("untrusted_validator", `validator ${accepted.extra.validator} is not trusted for this origin`);
    }
    return undefined;
  }
  if (!pin) return undefined;
  if (pin.origin !== origin) {
    return refuse("untrusted_origin", `this client pays only ${pin.origin}, the first origin it paid (configure \`trust\` for more)`);
  }
  if (pin.payTo !== payTo) return refuse("untrusted_payee", `payee ${accepted.payTo} is not ${pin.payTo}, the one pinned at first use`);
  if (pin.network !== accepted.network) {
    return refuse("untrusted_network", `network ${accepted.network} is not ${pin.network}, the one pinned at first use`);
  }
  if (pin.validator !== validator) {
    return refuse("untrusted_validator", `validator ${accepted.extra.validator} is not ${pin.validator}, the one pinned at first use`);
  }
  return undefined;
}

/** A `fetch` that pays opentab's 402s (see the module docs). Request bodies must be replayable
 * (a string, bytes or `URLSearchParams`, not a stream): a paid call is sent twice. */
export function wrapFetchWithPayment(
  fetchImpl: typeof fetch,
  options: PayingFetchOptions,
): typeof fetch & { signedTotal(payee: Address): bigint; address: Address } {
  const account = privateKeyToAccount(options.privateKey);
  const cap = amountOf(options.cap);
  const maxPrice = options.maxPrice === undefined ? DEFAULT_MAX_PRICE : amountOf(options.maxPrice);
  const configured = options.trust !== undefined;
  const trust = compileTrust(options.trust ?? {}, maxPrice);
  const state = new State(options.statePath);
  const slot = (payee: string) => `${account.address.toLowerCase()}->${payee.toLowerCase()}`;

  const paying = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const first = await fetchImpl(input, init);
    if (first.status !== 402) return first;

    const requested = originOf(urlOf(input), "the request URL");
    const origin = first.url ? originOf(first.url, "the 402's URL") : requested;
    const header = first.headers.get(PAYMENT_REQUIRED);
    const challenge: PaymentRequired = header ? decodeHeader(header) : ((await first.json()) as PaymentRequired);
    const offers = (Array.isArray(challenge.accepts) ? challenge.accepts : []).filter((a) => a?.scheme === "session");
    if (offers.length === 0) throw new UnpayableError('no entry with scheme "session"');
    if (origin !== requested) {
      throw new UntrustedPaymentError("untrusted_origin", `the 402 came from a redirect away from ${requested}`, origin, offers[0]);
    }

    // The first offer this client trusts; else the reason the first one is refused.
    const trusted = trust.get(origin);
    const limit = trusted?.maxPrice ?? maxPrice;
    let problem: PaymentError | undefined;
    let accepted: Requirements | undefined;
    for (const offer of offers) {
      const why =
        malformed(offer) ??
        refusal(origin, offer, trusted, state.pin, configured) ??
        (BigInt(offer.amount) > limit
          ? new UntrustedPaymentError("price_above_max", `price ${offer.amount} is above the per-call maximum of ${limit} (base units)`, origin, offer)
          : undefined);
      if (!why) {
        accepted = offer;
        break;
      }
      problem ??= why;
    }
    if (!accepted) throw problem!;
    const chainId = Number(accepted.network.slice("eip155:".length));

    const pin =
      configured || state.pin
        ? undefined
        : { origin, payTo: accepted.payTo.toLowerCase(), network: accepted.network, validator: accepted.extra.validator.toLowerCase() };
    const total = state.reserve(slot(accepted.payTo), BigInt(accepted.amount), cap, pin);
    const signature = await account.signTypedData({
      domain: {
        name: accepted.extra.eip712.name,
        version: accepted.extra.eip712.version,
        chainId,
        verifyingContract: accepted.extra.validator,
      },
      types: VOUCHER_TYPES,
      primaryType: "Voucher",
      message: { sessionKey: account.address, payee: accepted.payTo, cumulativeAmount: total },
    });
    const payment = {
      x402Version: 2,
      accepted,
      payload: { sessionKey: account.address, cumulativeAmount: total.toString(), signature },
    };
    const headers = new Headers(init?.headers);
    headers.set(PAYMENT_SIGNATURE, encodeHeader(payment));
    // A redirect would carry the voucher to wherever it points: the caller gets the 3xx instead.
    const redirect = init?.redirect === "error" ? "error" : "manual";
    return fetchImpl(input, { ...init, headers, redirect });
  };

  return Object.assign(paying as typeof fetch, {
    signedTotal: (payee: Address) => state.get(slot(payee)),
    address: account.address,
  });
}
