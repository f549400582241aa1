/**
 * Voids mean "the API failed" (DESIGN §3.4, issue 9 findings 4 and 9): against a real
 * `opentab dev`, a streamed answer the client read and then hung up on stays paid; a handler
 * that fails after the client left is voided; a void that does not get through is retried until
 * the gateway records it; and no log line carries the charge id, the payment or the secret.
 */

import { request as httpRequest, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import express from "express";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { decodeHeader, type PaymentRequired, type PaymentResponse } from "@opentab/client";
import { startDev, type Dev } from "../../client/test/dev.ts";
import { paymentMiddleware, type GatewayOptions } from "../src/index.ts";
import { payment, raw } from "./pay.ts";

let dev: Dev;
let accepted: PaymentRequired["accepts"][number];
/** Everything the demo key has signed so far in this file. */
let signed = 0n;
const servers: Server[] = [];

beforeAll(async () => {
  dev = await startDev();
});
afterAll(async () => {
  await dev?.stop();
});
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
  vi.restoreAllMocks();
});

/** What the middleware sent to the charge API, and what it got back. */
interface Spy {
  voids: { status: number | string; chargeId: string }[];
  chargeIds: string[];
  fetch: typeof fetch;
}

/** A fetch that records charge ids and voids; `interfere` may answer a void attempt itself. */
function spy(interfere?: (attempt: number) => Response | "forward" | "forward-then-503" | Error): Spy {
  const record: Spy = {
    voids: [],
    chargeIds: [],
    fetch: async (input, init) => {
      const url = String(input);
      if (url.endsWith("/void")) {
        const { chargeId } = JSON.parse(String(init?.body)) as { chargeId: string };
        const what = interfere?.(record.voids.length + 1) ?? "forward";
        // Recorded as soon as it is sent.
        const attempt: Spy["voids"][number] = { status: "sent", chargeId };
        record.voids.push(attempt);
        if (what instanceof Error) {
          attempt.status = "network error";
          throw what;
        }
        if (what instanceof Response) {
          attempt.status = what.status;
          return what;
        }
        const answer = await fetch(input, init);
        attempt.status = answer.status;
        // The gateway recorded the void, but its answer is lost on the way back.
        if (what === "forward-then-503") return new Response('{"error":"unavailable"}', { status: 503 });
        return answer;
      }
      const answer = await fetch(input, init);
      if (url.endsWith("/charge") && answer.status === 200) {
        record.chargeIds.push(((await answer.clone().json()) as { chargeId: string }).chargeId);
      }
      return answer;
    },
  };
  return record;
}

/** Waits for the voids `middleware` has in flight. */
async function settle(middleware: { drain?: () => Promise<void> }): Promise<void> {
  await (typeof middleware.drain === "function" ? middleware.drain() : new Promise((resolve) => setTimeout(resolve, 500)));
}

async function listen(app: express.Express): Promise<number> {
  const server = app.listen(0, "127.0.0.1");
  servers.push(server);
  await new Promise((resolve) => server.once("listening", resolve));
  return (server.address() as AddressInfo).port;
}

/** The next voucher: always above everything signed, so the gateway accepts it. */
async function nextPayment(): Promise<string> {
  signed += BigInt(accepted.amount);
  return payment(dev, accepted, signed);
}

/** What the key has been charged so far, from a paid call's receipt. */
async function servedNow(port: number): Promise<bigint> {
  const res = await raw(port, "POST", "/v1/ok", { "payment-signature": await nextPayment() });
  expect(res.status).toBe(200);
  return BigInt(decodeHeader<PaymentResponse>(res.headers["payment-response"] as string).receipt.served);
}

function gatewayOptions(fetchImpl: typeof fetch): GatewayOptions {
  return { url: dev.demo.gateway.url, secret: dev.demo.gateway.secret, fetch: fetchImpl, voidRetry: { initialDelayMs: 20, maxDelayMs: 100 } };
}

describe("voids", () => {
  it("a client that reads a streamed answer and hangs up before its end pays (issue 9, finding 4)", async () => {
    const record = spy();
    const middleware = paymentMiddleware({ "POST /v1/stream": "0.002", "POST /v1/ok": "0.002" }, gatewayOptions(record.fetch));
    const app = express();
    app.use(middleware);
    app.post("/v1/ok", (_req, res) => void res.send("ok"));
    let ended = false;
    app.post("/v1/stream", async (_req, res) => {
      const gone = new Promise((resolve) => res.once("close", resolve));
      res.writeHead(200, { "content-type": "text/plain" });
      for (let i = 0; i < 10; i++) {
        res.write(`token${i}\n`);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      // The last chunk comes only after the client has gone.
      await gone;
      res.end("[DONE]\n");
      ended = true;
    });
    const port = await listen(app);
    const challenge = await raw(port, "POST", "/v1/stream");
    expect(challenge.status).toBe(402);
    accepted = decodeHeader<PaymentRequired>(challenge.headers["payment-required"] as string).accepts[0]!;

    const before = await servedNow(port);
    const { tokens, receipt } = await new Promise<{ tokens: number; receipt: PaymentResponse }>((resolve, reject) => {
      void nextPayment().then((signature) => {
        const req = httpRequest(
          { host: "127.0.0.1", port, method: "POST", path: "/v1/stream", headers: { "payment-signature": signature }, agent: false },
          (res) => {
            let text = "";
            res.setEncoding("utf8");
            res.on("data", (chunk: string) => {
              text += chunk;
              const tokens = text.split("\n").filter((t) => t.startsWith("token")).length;
              if (tokens === 10) {
                // All ten tokens read: drop the socket before the last chunk.
                req.destroy();
                resolve({ tokens, receipt: decodeHeader<PaymentResponse>(res.headers["payment-response"] as string) });
              }
            });
          },
        );
        req.on("error", (err) => (err.message.includes("socket hang up") ? undefined : reject(err)));
        req.end("{}");
      }, reject);
    });
    expect(tokens).toBe(10);
    expect(BigInt(receipt.receipt.served)).toBe(before + 2000n);
    await vi.waitFor(() => expect(ended).toBe(true));
    await settle(middleware);

    // Served and paid: no void was sent, and the gateway still counts the call.
    expect(record.voids).toEqual([]);
    expect(await servedNow(port)).toBe(before + 4000n);
  });

  it("the status decides even when the client is gone: a handler failing after a hang-up is voided", async () => {
    const record = spy();
    const middleware = paymentMiddleware({ "POST /v1/slow-fail": "0.002", "POST /v1/ok": "0.002" }, gatewayOptions(record.fetch));
    const app = express();
    app.use(middleware);
    app.post("/v1/ok", (_req, res) => void res.send("ok"));
    let failed = false;
    app.post("/v1/slow-fail", async (req) => {
      if (!req.socket.destroyed) await new Promise((resolve) => req.socket.once("close", resolve));
      failed = true;
      throw new Error("the model crashed after the client left");
    });
    const port = await listen(app);
    const before = await servedNow(port);
    await new Promise<void>((resolve) => {
      void nextPayment().then((signature) => {
        const req = httpRequest({ host: "127.0.0.1", port, method: "POST", path: "/v1/slow-fail", headers: { "payment-signature": signature }, agent: false });
        req.on("error", () => resolve());
        req.end("{}", () => setTimeout(() => req.destroy(), 100));
      });
    });
    await vi.waitFor(() => expect(failed).toBe(true));
    await vi.waitFor(() => expect(record.voids.length).toBe(1));
    await settle(middleware);
    expect(record.voids[0]!.status).toBe(200);
    expect(await servedNow(port)).toBe(before + 2000n);
  });

  it("retries a void until the gateway records it, and never logs the charge id (issue 9, finding 9)", async () => {
    const lines: string[] = [];
    vi.spyOn(console, "error").mockImplementation((...args: unknown[]) => void lines.push(args.map(String).join(" ")));
    // Two attempts fail outright, the third is recorded but its answer is lost, the fourth hears 404.
    const record = spy((attempt) =>
      attempt === 1 ? new Response('{"error":"unavailable"}', { status: 503 }) : attempt === 2 ? new TypeError("fetch failed") : attempt === 3 ? "forward-then-503" : "forward",
    );
    const middleware = paymentMiddleware({ "POST /v1/fail": "0.002", "POST /v1/ok": "0.002" }, gatewayOptions(record.fetch));
    const app = express();
    app.use(middleware);
    app.post("/v1/ok", (_req, res) => void res.send("ok"));
    app.post("/v1/fail", () => {
      throw new Error("the model crashed");
    });
    const port = await listen(app);
    const before = await servedNow(port);
    const signature = await nextPayment();
    const failed = await raw(port, "POST", "/v1/fail", { "payment-signature": signature });
    expect(failed.status).toBe(500);
    expect(failed.headers["payment-response"]).toBeUndefined();
    await settle(middleware);

    expect(record.voids.map((v) => v.status)).toEqual([503, "network error", 200, 404]);
    expect(await servedNow(port)).toBe(before + 2000n);

    // Every problem was reported, none with anything that could be replayed.
    expect(lines.length).toBeGreaterThanOrEqual(3);
    const chargeId = record.voids[0]!.chargeId;
    const voucher = JSON.parse(Buffer.from(signature, "base64").toString()) as { payload: { signature: string } };
    for (const line of lines) {
      expect(line).not.toContain(chargeId);
      expect(line).not.toContain(signature);
      expect(line).not.toContain(voucher.payload.signature);
      expect(line).not.toContain(voucher.payload.signature.slice(2, 42));
      expect(line).not.toContain(dev.demo.gateway.secret);
    }
  });

  it("gives up on a void only once the gateway could no longer record it", async () => {
    const lines: string[] = [];
    const record = spy(() => new TypeError("fetch failed"));
    const options = { ...gatewayOptions(record.fetch), log: (line: string) => void lines.push(line), voidRetry: { initialDelayMs: 10, maxDelayMs: 40, deadlineMs: 300 } };
    const middleware = paymentMiddleware({ "GET /v1/broken": "0.001" }, options);
    const app = express();
    app.use(middleware);
    app.get("/v1/broken", (_req, res) => void res.status(502).send("upstream down"));
    const port = await listen(app);
    const challenge = await raw(port, "GET", "/v1/broken");
    const priced = decodeHeader<PaymentRequired>(challenge.headers["payment-required"] as string).accepts[0]!;
    signed += 1000n;
    const res = await raw(port, "GET", "/v1/broken", { "payment-signature": await payment(dev, priced, signed) });
    expect(res.status).toBe(502);
    await settle(middleware);
    expect(record.voids.length).toBeGreaterThan(3);
    expect(lines.at(-1)).toMatch(/gave up after \d+ attempts/);
    for (const line of lines) expect(line).not.toContain(record.chargeIds[0]!);
  });
});
