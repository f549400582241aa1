/**
 * The Express middleware, driven with supertest, charging through a real `opentab dev` (its
 * charge API, its gateway, anvil underneath): the challenge, a paid call with its receipt, a
 * failed handler's charge voided, a duplicate refused, unpriced routes untouched, a wrong
 * secret and an unreachable gateway failing closed.
 */

import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import express from "express";
import request from "supertest";
import { privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VOUCHER_TYPES, decodeHeader, encodeHeader, type PaymentRequired, type PaymentResponse } from "@opentab/client";
import { startDev, type Dev } from "../../client/test/dev.ts";
import { compileRoutes, findRoute, paymentMiddleware } from "../src/index.ts";

let dev: Dev;
let app: express.Express;
let handled = 0;

beforeAll(async () => {
  dev = await startDev();
  app = express();
  app.use(
    paymentMiddleware(
      { "POST /v1/chat": { price: "$0.002" }, "POST /v1/fail": "$0.002" },
      { url: dev.demo.gateway.url, secret: dev.demo.gateway.secret },
    ),
  );
  app.post("/v1/chat", (_req, res) => {
    handled++;
    res.json({ answer: 42 });
  });
  app.post("/v1/fail", () => {
    throw new Error("the model crashed");
  });
  app.get("/health", (_req, res) => res.send("ok"));
});
afterAll(async () => {
  await dev?.stop();
});

/** The `PAYMENT-SIGNATURE` for `total` base units, signed by the demo session key. */
async function payment(accepted: PaymentRequired["accepts"][number], total: bigint): Promise<string> {
  const account = privateKeyToAccount(dev.demo.sessionKey.privateKey);
  const signature = await account.signTypedData({
    domain: {
      name: accepted.extra.eip712.name,
      version: accepted.extra.eip712.version,
      chainId: dev.demo.chainId,
      verifyingContract: accepted.extra.validator,
    },
    types: VOUCHER_TYPES,
    primaryType: "Voucher",
    message: { sessionKey: account.address, payee: accepted.payTo, cumulativeAmount: total },
  });
  return encodeHeader({
    x402Version: 2,
    accepted,
    payload: { sessionKey: account.address, cumulativeAmount: total.toString(), signature },
  });
}

async function challenge(path: string) {
  const res = await request(app).post(path).send({ prompt: "hi" });
  expect(res.status).toBe(402);
  const required = decodeHeader<PaymentRequired>(res.headers["payment-required"] as string);
  expect(res.body).toEqual(required);
  return required.accepts[0]!;
}

describe("paymentMiddleware", () => {
  it("matches routes like the gateway does", () => {
    const table = compileRoutes({ "GET /v1/models/:id": "0.0001", "POST /v1/files/*": "$1" });
    expect(findRoute(table, "GET", "/v1/models/gpt")?.price).toBe("0.0001");
    expect(findRoute(table, "GET", "/v1/models")).toBeUndefined();
    expect(findRoute(table, "POST", "/v1/files/a/b")?.price).toBe("1");
    expect(() => compileRoutes({ "chat": "1" })).toThrow(/look like/);
    expect(() => compileRoutes({ "POST /x": "cheap" })).toThrow(/not USDC/);
  });

  it("challenges, charges, receipts, voids failures and refuses duplicates", async () => {
    const accepted = await challenge("/v1/chat");
    expect(accepted.amount).toBe("2000");
    expect(accepted.payTo.toLowerCase()).toBe(dev.demo.payee.toLowerCase());
    expect(handled).toBe(0);

    const paid = await request(app).post("/v1/chat").set("PAYMENT-SIGNATURE", await payment(accepted, 2000n)).send({});
    expect(paid.status).toBe(200);
    expect(paid.body).toEqual({ answer: 42 });
    const receipt = decodeHeader<PaymentResponse>(paid.headers["payment-response"] as string);
    expect(receipt.receipt).toMatchObject({ charged: "2000", served: "2000" });
    expect(handled).toBe(1);

    // A replayed voucher buys nothing: opentab's refusal, relayed.
    const replay = await request(app).post("/v1/chat").set("PAYMENT-SIGNATURE", await payment(accepted, 2000n)).send({});
    expect(replay.status).toBe(402);
    expect(replay.body.error).toBe("voucher_too_low");

    // The handler fails: no receipt, and the charge is voided, so the same voucher pays again.
    const failing = await challenge("/v1/fail");
    const failed = await request(app).post("/v1/fail").set("PAYMENT-SIGNATURE", await payment(failing, 4000n)).send({});
    expect(failed.status).toBe(500);
    expect(failed.headers["payment-response"]).toBeUndefined();
    await expect
      .poll(async () => {
        const again = await request(app).post("/v1/chat").set("PAYMENT-SIGNATURE", await payment(accepted, 4000n)).send({});
        return again.status === 200 ? decodeHeader<PaymentResponse>(again.headers["payment-response"] as string).receipt.served : again.status;
      }, { timeout: 5_000 })
      .toBe("4000");

    // The same idempotency key twice: served once, the retry told it was paid already.
    const first = await request(app)
      .post("/v1/chat")
      .set("PAYMENT-SIGNATURE", await payment(accepted, 6000n))
      .set("Idempotency-Key", "order-7f3a-0001")
      .send({});
    expect(first.status).toBe(200);
    const retry = await request(app)
      .post("/v1/chat")
      .set("PAYMENT-SIGNATURE", await payment(accepted, 8000n))
      .set("Idempotency-Key", "order-7f3a-0001")
      .send({});
    expect(retry.status).toBe(409);
    expect(retry.body.error).toBe("duplicate_payment");
    expect(handled).toBe(3);
  });

  it("leaves unpriced routes alone", async () => {
    const res = await request(app).get("/health");
    expect([res.status, res.text]).toEqual([200, "ok"]);
  });

  it("fails closed on a wrong secret or an unreachable gateway", async () => {
    const wrong = express();
    wrong.use(paymentMiddleware({ "POST /v1/chat": "$0.002" }, { url: dev.demo.gateway.url, secret: "not-it" }));
    wrong.post("/v1/chat", (_req, res) => res.send("served"));
    const misconfigured = await request(wrong).post("/v1/chat").send({});
    expect(misconfigured.status).toBe(500);
    expect(misconfigured.body.error).toBe("gateway_misconfigured");

    // A port that was just free: nothing listens there.
    const closed = await new Promise<number>((resolve) => {
      const server = createServer().listen(0, "127.0.0.1", () => {
        const { port } = server.address() as AddressInfo;
        server.close(() => resolve(port));
      });
    });
    const down = express();
    down.use(paymentMiddleware({ "POST /v1/chat": "$0.002" }, { url: `http://127.0.0.1:${closed}`, secret: "x" }));
    down.post("/v1/chat", (_req, res) => res.send("served"));
    const unavailable = await request(down).post("/v1/chat").send({});
    expect(unavailable.status).toBe(503);
    expect(unavailable.text).not.toContain("served");
  });
});
