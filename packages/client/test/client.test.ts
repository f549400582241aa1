/**
 * The TypeScript paying client against a real `opentab dev` on anvil: it answers the demo
 * API's 402 with vouchers the Rust gateway accepts (viem's EIP-712 signatures, verified with
 * libsecp256k1), continues from its persisted total after a restart, and stops at its cap.
 * It signs only what it meant to (issue 9, finding 5): a hostile 402 — another payee, a huge
 * amount, another chain, another validator, another origin — is refused with a typed error,
 * nothing signed or sent, its total unchanged; configured or trusting on first use.
 */

import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CapExceededError,
  PAYMENT_REQUIRED,
  PAYMENT_SIGNATURE,
  UntrustedPaymentError,
  decodeHeader,
  encodeHeader,
  parseUsdc,
  receiptOf,
  wrapFetchWithPayment,
  type PayingFetchOptions,
  type PaymentRequired,
  type Requirements,
} from "../src/index.ts";
import { startDev, type Dev } from "./dev.ts";

let dev: Dev;
beforeAll(async () => {
  dev = await startDev();
});
afterAll(async () => {
  await dev?.stop();
});

const call = (pay: typeof fetch) =>
  pay(`${dev.demo.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(dev.demo.routes[0]!.exampleBody),
  });

describe("wrapFetchWithPayment", () => {
  it("parses USDC amounts exactly", () => {
    expect(parseUsdc("5")).toBe(5_000_000n);
    expect(parseUsdc("$0.002")).toBe(2_000n);
    expect(() => parseUsdc("0.0000001")).toThrow(/not a USDC amount/);
  });

  it("pays the 402 with the next cumulative voucher, across restarts, up to its cap", async () => {
    const unpaid = await fetch(`${dev.demo.url}/v1/chat/completions`, { method: "POST", body: "{}" });
    expect(unpaid.status).toBe(402);
    const challenge = decodeHeader<PaymentRequired>(unpaid.headers.get(PAYMENT_REQUIRED)!);
    expect(challenge.accepts[0]!.amount).toBe("2000");

    const statePath = join(mkdtempSync(join(tmpdir(), "opentab-client-")), "totals.json");
    const options = { privateKey: dev.demo.sessionKey.privateKey, cap: "1", statePath };
    const pay = wrapFetchWithPayment(fetch, options);
    for (const served of ["2000", "4000", "6000"]) {
      const res = await call(pay);
      expect(res.status).toBe(200);
      expect(receiptOf(res)?.receipt.served).toBe(served);
      expect((await res.json()) as { object: string }).toMatchObject({ object: "chat.completion" });
    }
    expect(pay.signedTotal(dev.demo.payee)).toBe(6000n);
    expect(JSON.parse(readFileSync(statePath, "utf8"))).toEqual({
      totals: { [`${dev.demo.sessionKey.address.toLowerCase()}->${dev.demo.payee.toLowerCase()}`]: "6000" },
      // No `trust` given: the first origin it paid is pinned, with what that 402 asked for.
      pinned: {
        origin: new URL(dev.demo.url).origin,
        payTo: dev.demo.payee.toLowerCase(),
        network: `eip155:${dev.demo.chainId}`,
        validator: dev.demo.validator.toLowerCase(),
      },
    });

    // A restarted agent continues from its file, never re-signing a lower total.
    const restarted = wrapFetchWithPayment(fetch, options);
    const res = await call(restarted);
    expect(receiptOf(res)?.receipt.served).toBe("8000");

    // A cap below the next total refuses before anything is signed or sent.
    const capped = wrapFetchWithPayment(fetch, { ...options, cap: 9_000n });
    await expect(call(capped)).rejects.toBeInstanceOf(CapExceededError);
    expect(capped.signedTotal(dev.demo.payee)).toBe(8000n);
  });

  it("passes a refusal through as the gateway's 402", async () => {
    // Another key, never registered: the gateway names the problem.
    const stranger = wrapFetchWithPayment(fetch, {
      privateKey: "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
      cap: "1",
    });
    const res = await call(stranger);
    expect(res.status).toBe(402);
    expect(((await res.json()) as { error: string }).error).toBe("unknown_key");
  });

  it("pays a configured origin within its trust settings", async () => {
    const pay = wrapFetchWithPayment(fetch, { privateKey: dev.demo.sessionKey.privateKey, cap: "1", statePath: seededState(), trust: trustDev() });
    const res = await call(pay);
    expect(res.status).toBe(200);
    expect(receiptOf(res)?.receipt.charged).toBe("2000");
    // Compiled trust settings are checked up front.
    const options = { privateKey: dev.demo.sessionKey.privateKey, cap: "1" };
    expect(() => wrapFetchWithPayment(fetch, { ...options, trust: { "not a url": trustDev()[origin()]! } })).toThrow(/not a URL/);
    expect(() => wrapFetchWithPayment(fetch, { ...options, trust: { [origin()]: { ...trustDev()[origin()]!, networks: "137" } } })).toThrow(
      /eip155/,
    );
    expect(() => wrapFetchWithPayment(fetch, { ...options, trust: { [origin()]: { ...trustDev()[origin()]!, payTo: [] } } })).toThrow(
      /payTo/,
    );
  });

  describe("refuses a hostile 402, signing nothing (issue 9, finding 5)", () => {
    const evil = "http://pay.evil.example";
    // `remaining`: what the cap still allows this client to sign.
    const hostile: [string, string, (r: Requirements, remaining: bigint) => Requirements][] = [
      ["another payee", "untrusted_payee", (r) => ({ ...r, payTo: "0x000000000000000000000000000000000000dEaD" })],
      // The finding: the real payee and validator, and all the cap allows in one call.
      ["the whole cap in one call", "price_above_max", (r, remaining) => ({ ...r, amount: remaining.toString() })],
      ["another chain", "untrusted_network", (r) => ({ ...r, network: "eip155:137" })],
      ["another validator", "untrusted_validator", (r) => ({ ...r, extra: { ...r.extra, validator: "0x1111111111111111111111111111111111111111" } })],
    ];

    for (const [trustMode, options] of [
      ["configured", () => ({ trust: trustDev() })],
      ["trust on first use", () => ({})],
    ] as const) {
      for (const [what, code, mutate] of hostile) {
        it(`${trustMode}: ${what} is ${code}`, async () => {
          const { pay, sent, statePath } = await pinnedClient(options());
          const before = pay.signedTotal(dev.demo.payee);
          const file = readFileSync(statePath, "utf8");
          const served = stub((r) => mutate(r, parseUsdc("1") - before), sent);
          const refused = wrapFetchWithPayment(served, { privateKey: dev.demo.sessionKey.privateKey, cap: "1", statePath, ...options() });
          const err = await refused(`${dev.demo.url}/v1/chat/completions`, { method: "POST", body: "{}" }).catch((e: unknown) => e);
          // Nothing signed, nothing sent: the one request is the unpaid one that got the 402.
          expect(sent.filter((h) => h.has(PAYMENT_SIGNATURE))).toEqual([]);
          expect(sent).toHaveLength(1);
          expect(err).toBeInstanceOf(UntrustedPaymentError);
          expect((err as UntrustedPaymentError).code).toBe(code);
          expect(refused.signedTotal(dev.demo.payee)).toBe(before);
          expect(readFileSync(statePath, "utf8")).toBe(file);
          // And the real API is still paid as before, by the same client.
          const res = await call(wrapFetchWithPayment(fetch, { privateKey: dev.demo.sessionKey.privateKey, cap: "1", statePath, ...options() }));
          expect(res.status).toBe(200);
        });
      }

      it(`${trustMode}: another origin asking for the real payee is untrusted_origin`, async () => {
        const { sent, statePath } = await pinnedClient(options());
        const file = readFileSync(statePath, "utf8");
        const page = wrapFetchWithPayment(stub((r) => r, sent), { privateKey: dev.demo.sessionKey.privateKey, cap: "1", statePath, ...options() });
        const err = await page(`${evil}/checkout`).catch((e: unknown) => e);
        expect(sent.filter((h) => h.has(PAYMENT_SIGNATURE))).toEqual([]);
        expect((err as UntrustedPaymentError).code).toBe("untrusted_origin");
        expect((err as UntrustedPaymentError).origin).toBe(evil);
        expect(readFileSync(statePath, "utf8")).toBe(file);
      });
    }

    it("a 402 reached through a redirect to another origin is refused", async () => {
      const sent: Headers[] = [];
      const redirected = stub((r) => r, sent, evil);
      const pay = wrapFetchWithPayment(redirected, { privateKey: dev.demo.sessionKey.privateKey, cap: "1" });
      const err = await pay(`${dev.demo.url}/v1/chat/completions`).catch((e: unknown) => e);
      expect(sent.filter((h) => h.has(PAYMENT_SIGNATURE))).toEqual([]);
      expect(pay.signedTotal(dev.demo.payee)).toBe(0n);
      expect((err as UntrustedPaymentError).code).toBe("untrusted_origin");
    });

    it("the per-call maximum can be raised per origin, and the paid retry never follows a redirect", async () => {
      const sent: Headers[] = [];
      const inits: (RequestInit | undefined)[] = [];
      const pricey = stub((r) => ({ ...r, amount: "500000" }), sent, undefined, inits);
      const trust = trustDev();
      trust[origin()]!.maxPrice = "0.5";
      const pay = wrapFetchWithPayment(pricey, { privateKey: dev.demo.sessionKey.privateKey, cap: "1", trust });
      const res = await pay(`${dev.demo.url}/v1/chat/completions`, { method: "POST", body: "{}" });
      expect(res.status).toBe(200);
      expect(pay.signedTotal(dev.demo.payee)).toBe(500_000n);
      expect(inits.at(-1)?.redirect).toBe("manual");
    });
  });
});

const origin = () => new URL(dev.demo.url).origin;

/** Trust settings for `opentab dev`'s demo API. */
function trustDev(): NonNullable<PayingFetchOptions["trust"]> {
  return {
    [origin()]: { payTo: dev.demo.payee, networks: `eip155:${dev.demo.chainId}`, validators: [dev.demo.validator] },
  };
}

/**
 * A fresh state file whose signed total is already above anything the demo key has been
 * charged in this file, so a new client's vouchers are accepted (a fresh total of 0 would be
 * `voucher_too_low`). Written in the older flat format, which the client still reads.
 */
function seededState(): string {
  const statePath = join(mkdtempSync(join(tmpdir(), "opentab-client-")), "totals.json");
  const slot = `${dev.demo.sessionKey.address.toLowerCase()}->${dev.demo.payee.toLowerCase()}`;
  writeFileSync(statePath, JSON.stringify({ [slot]: "100000" }));
  return statePath;
}

/** A client that has paid the real demo API once (so a first-use pin, if any, is the real one). */
async function pinnedClient(options: Partial<PayingFetchOptions>) {
  const statePath = seededState();
  const pay = wrapFetchWithPayment(fetch, { privateKey: dev.demo.sessionKey.privateKey, cap: "1", statePath, ...options });
  expect((await call(pay)).status).toBe(200);
  return { pay, statePath, sent: [] as Headers[] };
}

/**
 * A fetch that answers every unpaid request with the real demo API's 402, altered by `mutate`
 * (as if from `from`, the final URL after redirects, when given), and a paid one with 200. It
 * records the headers of every request it gets.
 */
function stub(mutate: (r: Requirements) => Requirements, sent: Headers[], from?: string, inits?: (RequestInit | undefined)[]): typeof fetch {
  return async (input, init) => {
    const headers = new Headers(init?.headers);
    sent.push(headers);
    inits?.push(init);
    if (headers.has(PAYMENT_SIGNATURE)) return new Response("served", { status: 200 });
    const real = await fetch(`${dev.demo.url}/v1/chat/completions`, { method: "POST", body: "{}" });
    const challenge = decodeHeader<PaymentRequired>(real.headers.get(PAYMENT_REQUIRED)!);
    const altered = { ...challenge, accepts: challenge.accepts.map(mutate) };
    const res = new Response(JSON.stringify(altered), { status: 402, headers: { [PAYMENT_REQUIRED]: encodeHeader(altered) } });
    Object.defineProperty(res, "url", { value: from ? `${from}/v1/chat/completions` : String(input) });
    return res;
  };
}
