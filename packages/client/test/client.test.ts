/**
 * The TypeScript paying client against a real `opentab dev` on anvil: it answers the demo
 * API's 402 with vouchers the Rust gateway accepts (viem's EIP-712 signatures, verified with
 * libsecp256k1), continues from its persisted total after a restart, and stops at its cap.
 */

import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CapExceededError,
  PAYMENT_REQUIRED,
  decodeHeader,
  parseUsdc,
  receiptOf,
  wrapFetchWithPayment,
  type PaymentRequired,
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
      [`${dev.demo.sessionKey.address.toLowerCase()}->${dev.demo.payee.toLowerCase()}`]: "6000",
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
});
