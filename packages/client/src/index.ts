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
 * const pay = wrapFetchWithPayment(fetch, { privateKey: "0x…", cap: "5", statePath: ".opentab-client.json" });
 * const res = await pay("http://127.0.0.1:8402/v1/chat/completions", { method: "POST", body: "{}" });
 * ```
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

export interface PayingFetchOptions {
  /** The session key's private key. */
  privateKey: Hex;
  /** The most this client will ever sign per payee: whole USDC (`"5"`, `"0.25"`) or base units. */
  cap: string | bigint;
  /** A JSON file keeping the signed totals across restarts; in memory only without it. */
  statePath?: string;
}

/** Paying would take the signed total past the cap; nothing was signed. */
export class CapExceededError extends Error {
  constructor(
    readonly price: bigint,
    readonly total: bigint,
    readonly cap: bigint,
  ) {
    super(`paying ${price} would bring the signed total to ${total}, past the cap of ${cap} (base units)`);
    this.name = "CapExceededError";
  }
}

/** The 402 offered nothing this client can pay. */
export class UnpayableError extends Error {
  constructor(message: string) {
    super(`the 402 offers no usable \`session\` payment: ${message}`);
    this.name = "UnpayableError";
  }
}

/** Parses whole USDC with up to 6 decimals (`"5"`, `"$0.002"`) into base units. */
export function parseUsdc(text: string): bigint {
  const match = /^\$?(\d+)(?:\.(\d{1,6}))?$/.exec(text.trim());
  if (!match) throw new Error(`${JSON.stringify(text)} is not a USDC amount like "5" or "0.002"`);
  return BigInt(match[1]!) * 1_000_000n + BigInt((match[2] ?? "").padEnd(6, "0"));
}

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

/** Signed totals per (session key, payee), persisted before each voucher leaves. */
class Totals {
  private readonly totals: Map<string, bigint>;

  constructor(private readonly path?: string) {
    this.totals = new Map();
    if (path && existsSync(path)) {
      const saved = JSON.parse(readFileSync(path, "utf8")) as Record<string, string>;
      for (const [slot, total] of Object.entries(saved)) this.totals.set(slot, BigInt(total));
    }
  }

  get(slot: string): bigint {
    return this.totals.get(slot) ?? 0n;
  }

  /** Raises the total and writes it down (synchronously: concurrent calls cannot interleave). */
  reserve(slot: string, price: bigint, cap: bigint): bigint {
    const total = this.get(slot) + price;
    if (total > cap) throw new CapExceededError(price, total, cap);
    this.totals.set(slot, total);
    if (this.path) {
      const json = Object.fromEntries([...this.totals].map(([k, v]) => [k, v.toString()]));
      writeFileSync(`${this.path}.tmp`, JSON.stringify(json, null, 2));
      renameSync(`${this.path}.tmp`, this.path);
    }
    return total;
  }
}

/** A `fetch` that pays opentab's 402s (see the module docs). Request bodies must be replayable
 * (a string, bytes or `URLSearchParams`, not a stream): a paid call is sent twice. */
export function wrapFetchWithPayment(
  fetchImpl: typeof fetch,
  options: PayingFetchOptions,
): typeof fetch & { signedTotal(payee: Address): bigint; address: Address } {
  const account = privateKeyToAccount(options.privateKey);
  const cap = typeof options.cap === "bigint" ? options.cap : parseUsdc(options.cap);
  const totals = new Totals(options.statePath);
  const slot = (payee: string) => `${account.address.toLowerCase()}->${payee.toLowerCase()}`;

  const paying = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const first = await fetchImpl(input, init);
    if (first.status !== 402) return first;
    const header = first.headers.get(PAYMENT_REQUIRED);
    const challenge: PaymentRequired = header ? decodeHeader(header) : ((await first.json()) as PaymentRequired);
    const accepted = challenge.accepts.find((a) => a.scheme === "session");
    if (!accepted) throw new UnpayableError('no entry with scheme "session"');
    const chainId = Number(/^eip155:(\d+)$/.exec(accepted.network)?.[1]);
    if (!Number.isSafeInteger(chainId)) throw new UnpayableError(`network ${accepted.network} is not eip155:<chainId>`);

    const total = totals.reserve(slot(accepted.payTo), BigInt(accepted.amount), cap);
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
    return fetchImpl(input, { ...init, headers });
  };

  return Object.assign(paying as typeof fetch, {
    signedTotal: (payee: Address) => totals.get(slot(payee)),
    address: account.address,
  });
}
