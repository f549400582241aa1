/**
 * The Express middleware, driven with supertest, charging through a real `opentab dev` (its
 * charge API, its gateway, anvil underneath): the challenge, a paid call with its receipt, a
 * failed handler's charge voided, a duplicate refused, unpriced routes untouched, a wrong
 * secret and an unreachable gateway failing closed; the route syntax and how a table prices
 * what Express routes (issue 9 findings 1 and 2); the per-route `paid(...)` form.
 */

import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import express from "express";
import request from "supertest";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeHeader, type PaymentRequired, type PaymentResponse } from "@opentab/client";
import { startDev, type Dev } from "../../client/test/dev.ts";
import { compileRoutes, findRoute, gateway, paid, paymentMiddleware } from "../src/index.ts";
import { payment as signed } from "./pay.ts";

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

const payment = (accepted: PaymentRequired["accepts"][number], total: bigint) => signed(dev, accepted, total);

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
    expect(findRoute(table, "POST", "/v1/files")?.price).toBe("1");
    expect(() => compileRoutes({ "chat": "1" })).toThrow(/look like/);
    expect(() => compileRoutes({ "POST /x": "cheap" })).toThrow(/not USDC/);
  });

  it("accepts :id and {id} alike, and refuses any other route syntax naming the route", () => {
    const table = compileRoutes({ "GET /v1/models/:id": "0.0001", "post /v1/files/{name}": "0.01" });
    expect(table.map((r) => r.key)).toEqual(["GET /v1/models/:id", "POST /v1/files/{name}"]);
    expect(findRoute(table, "POST", "/v1/files/report.pdf")?.key).toBe("POST /v1/files/{name}");
    expect(findRoute(table, "POST", "/v1/files/a/b")).toBeUndefined();
    for (const bad of [
      "GET /v1/models/<id>",
      "GET /v1/models/[id]",
      "GET /v1/*rest/x",
      "GET /v1/*/x",
      "GET /v1/files/*name",
      "GET /v1/models/{id",
      "GET /v1/models/id}",
      "GET /v1/{a}{b}",
      "GET /v1/models/(.*)",
      "GET /v1/chat;x=1",
      "GET /v1/models/a|b",
      "GET /v1/models/a?",
      "GET /v1/file.:ext",
      "GET /v1/:",
      "GET /v1/:1d",
      "GET /v1//chat",
      "GET /v1/../chat",
      "GET /v1/%63hat",
      "GET v1/chat",
    ]) {
      expect(() => compileRoutes({ [bad]: "1" }), bad).toThrow(`route ${JSON.stringify(bad)}`);
    }
  });

  it("prices what Express routes: case, trailing slash, encoding, HEAD, per the app's settings", () => {
    const table = compileRoutes({ "POST /v1/chat": "0.002", "GET /v1/report": "0.001", "GET /v1/models/:id": "0.0001" });
    const key = (method: string, path: string, routing = {}) => findRoute(table, method, path, routing)?.key;
    // Express's defaults: case-insensitive, an optional trailing slash.
    expect(key("POST", "/V1/Chat")).toBe("POST /v1/chat");
    expect(key("post", "/v1/CHAT/")).toBe("POST /v1/chat");
    expect(key("POST", "/v1/chat//")).toBeUndefined();
    expect(key("POST", "//v1/chat")).toBeUndefined();
    // HEAD runs GET handlers, so it costs what GET costs; no other method does.
    expect(key("HEAD", "/v1/report")).toBe("GET /v1/report");
    expect(key("HEAD", "/V1/Report")).toBe("GET /v1/report");
    expect(key("POST", "/v1/report")).toBeUndefined();
    // Literals match their percent-decoded spelling too; a parameter takes any one raw segment,
    // an encoded slash included (Express decodes it into the parameter).
    expect(key("POST", "/v1/%63hat")).toBe("POST /v1/chat");
    expect(key("POST", "/%76%31/%43HAT")).toBe("POST /v1/chat");
    expect(key("GET", "/v1/models/a%2Fb")).toBe("GET /v1/models/:id");
    expect(key("GET", "/v1/models/%ZZ")).toBe("GET /v1/models/:id");
    expect(key("GET", "/v1/models/")).toBeUndefined();
    expect(key("GET", "/v1/models//x")).toBeUndefined();
    // `case sensitive routing` and `strict routing` on: exactly what Express then routes.
    const strict = { caseSensitive: true, strict: true };
    expect(key("POST", "/v1/chat", strict)).toBe("POST /v1/chat");
    expect(key("POST", "/V1/Chat", strict)).toBeUndefined();
    expect(key("POST", "/v1/chat/", strict)).toBeUndefined();
    expect(key("POST", "/v1/%63hat", strict)).toBe("POST /v1/chat");
    const slashed = compileRoutes({ "POST /v1/chat/": "0.002" });
    expect(findRoute(slashed, "POST", "/v1/chat/", strict)?.key).toBe("POST /v1/chat/");
    expect(findRoute(slashed, "POST", "/v1/chat", strict)).toBeUndefined();
    expect(findRoute(slashed, "POST", "/v1/chat")?.key).toBe("POST /v1/chat/");
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

  it("charges what Express would serve, whatever the case, and HEAD as GET (issue 9, finding 2)", async () => {
    // Before: the table matched case-sensitively and never priced HEAD, and Express ran these
    // handlers unpaid.
    const ran: string[] = [];
    const routed = express();
    routed.use(paymentMiddleware({ "POST /v1/chat": "0.002", "GET /v1/report": "0.001" }, dev.demo.gateway));
    routed.post("/v1/chat", (_req, res) => void (ran.push("chat"), res.send("chat")));
    routed.get("/v1/report", (_req, res) => void (ran.push("report"), res.send("report")));
    for (const [method, path] of [
      ["post", "/V1/Chat"],
      ["post", "/v1/CHAT"],
      ["get", "/V1/report"],
      ["head", "/v1/report"],
    ] as const) {
      const res = await request(routed)[method](path).send();
      expect(res.status, `${method} ${path}`).toBe(402);
    }
    expect(ran).toEqual([]);
  });

  it("prices {name} and :id routes (issue 9, finding 1)", async () => {
    // Before: `{name}` was a literal segment, so the route Express serves as `:name` was free.
    const ran: string[] = [];
    const routed = express();
    routed.use(paymentMiddleware({ "POST /v1/files/{name}": "0.01", "GET /v1/models/:id": "0.0001" }, dev.demo.gateway));
    routed.post("/v1/files/:name", (req, res) => void (ran.push(String(req.params.name)), res.send("stored")));
    routed.get("/v1/models/:id", (req, res) => void (ran.push(String(req.params.id)), res.send("model")));
    const file = await request(routed).post("/v1/files/report.pdf").send();
    expect(file.status).toBe(402);
    expect(decodeHeader<PaymentRequired>(file.headers["payment-required"] as string).accepts[0]!.amount).toBe("10000");
    const model = await request(routed).get("/v1/models/gpt-4");
    expect(model.status).toBe(402);
    expect(ran).toEqual([]);
  });

  it("offers a per-route form that charges exactly when the route runs", async () => {
    const ran: string[] = [];
    const routed = express();
    const priced = gateway(dev.demo.gateway);
    routed.post("/v1/chat", priced("$0.002"), (_req, res) => void (ran.push("chat"), res.json({ answer: 42 })));
    routed.get("/v1/models/:id", paid("0.0001", dev.demo.gateway), (req, res) => void (ran.push(String(req.params.id)), res.send("m")));
    routed.get("/free", (_req, res) => void res.send("free"));

    const chat = await request(routed).post("/V1/CHAT/").send({});
    expect(chat.status).toBe(402);
    const accepted = decodeHeader<PaymentRequired>(chat.headers["payment-required"] as string).accepts[0]!;
    expect(accepted.amount).toBe("2000");
    // HEAD runs the GET route, so it is charged like GET.
    const head = await request(routed).head("/v1/models/gpt-4");
    expect(head.status).toBe(402);
    expect(ran).toEqual([]);
    expect((await request(routed).get("/free")).text).toBe("free");

    // Paid: served with a receipt (the running total continues from the tests above).
    const served = decodeHeader<PaymentResponse>(
      (await request(app).post("/v1/chat").set("PAYMENT-SIGNATURE", await payment(accepted, 10_000n)).send({})).headers[
        "payment-response"
      ] as string,
    ).receipt.served;
    const ok = await request(routed)
      .post("/v1/chat")
      .set("PAYMENT-SIGNATURE", await payment(accepted, BigInt(served) + 2000n))
      .send({});
    expect(ok.status).toBe(200);
    expect(ok.body).toEqual({ answer: 42 });
    expect(decodeHeader<PaymentResponse>(ok.headers["payment-response"] as string).receipt.served).toBe(
      (BigInt(served) + 2000n).toString(),
    );
    expect(ran).toEqual(["chat"]);
    await priced.drain();
  });
});
