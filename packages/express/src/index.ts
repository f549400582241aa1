/**
 * @opentab/express — opentab's HTTP 402 gateway as Express middleware.
 *
 * ```ts
 * import express from "express";
 * import { paymentMiddleware } from "@opentab/express";
 *
 * const app = express();
 * app.use(paymentMiddleware(
 *   { "POST /v1/chat": { price: "$0.002" }, "GET /v1/models/:id": "$0.0001" },
 *   { url: "http://127.0.0.1:8402", secret: process.env.OPENTAB_GATEWAY_SECRET! },
 * ));
 * ```
 *
 * For a priced route the middleware asks opentab's charge API (`POST {url}/gateway/v1/charge`)
 * to charge the call before the handler runs. Unpaid or refused calls get opentab's answer
 * verbatim (`402` with `PAYMENT-REQUIRED`, `409` for a duplicate payment, `503` when the
 * gateway cannot charge: never served unpaid). A paid call runs the handler; its response gets
 * the `PAYMENT-RESPONSE` receipt, unless it answers >= 400, in which case the charge is voided
 * (`POST {url}/gateway/v1/void`): a user never pays for an error.
 */

import type { NextFunction, Request, RequestHandler, Response } from "express";

/** A route's price: whole USDC with up to 6 decimals, `"$0.002"` or `"0.002"`. */
export type Price = string | { price: string; description?: string };

/** `"METHOD /path"` (segments may be `:param`, and the last `*`) → price. */
export type Routes = Record<string, Price>;

export interface GatewayOptions {
  /** Where opentab serves the charge API (`opentab dev`, or `opentab proxy` with a secret). */
  url: string;
  /** The charge API's shared secret (`OPENTAB_GATEWAY_SECRET`). */
  secret: string;
  /** Injected for tests; the global `fetch` by default. */
  fetch?: typeof fetch;
}

interface CompiledRoute {
  key: string;
  method: string;
  segments: string[];
  price: string;
}

/** The compiled table, so each request is a cheap match. Throws on a malformed entry. */
export function compileRoutes(routes: Routes): CompiledRoute[] {
  return Object.entries(routes).map(([key, value]) => {
    const match = /^([A-Z]+)\s+(\/\S*)$/.exec(key.trim());
    if (!match) throw new Error(`route ${JSON.stringify(key)} must look like "POST /v1/chat"`);
    const price = (typeof value === "string" ? value : value.price).trim().replace(/^\$/, "");
    if (!/^\d+(\.\d{1,6})?$/.test(price)) {
      throw new Error(`route ${JSON.stringify(key)}: price ${JSON.stringify(price)} is not USDC like "$0.002"`);
    }
    return { key: `${match[1]} ${match[2]}`, method: match[1]!, segments: split(match[2]!), price };
  });
}

function split(path: string): string[] {
  return path.split("/").filter((s) => s.length > 0);
}

/** The route `method path` matches, if any. */
export function findRoute(routes: CompiledRoute[], method: string, path: string): CompiledRoute | undefined {
  const parts = split(path);
  return routes.find((route) => {
    if (route.method !== method.toUpperCase()) return false;
    for (let i = 0; i < route.segments.length; i++) {
      const segment = route.segments[i]!;
      if (segment === "*" && i === route.segments.length - 1) return parts.length >= i;
      const part = parts[i];
      if (part === undefined || (!segment.startsWith(":") && segment !== part)) return false;
    }
    return parts.length === route.segments.length;
  });
}

interface Paid {
  status: "paid";
  chargeId: string;
  paymentResponse: string;
}

/** The middleware (see the module docs). */
export function paymentMiddleware(routes: Routes, gateway: GatewayOptions): RequestHandler {
  const table = compileRoutes(routes);
  const fetchImpl = gateway.fetch ?? fetch;
  const base = gateway.url.replace(/\/$/, "");
  const post = (path: string, body: unknown) =>
    fetchImpl(`${base}/gateway/v1/${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${gateway.secret}` },
      body: JSON.stringify(body),
    });

  return async (req: Request, res: Response, next: NextFunction) => {
    const route = findRoute(table, req.method, req.path);
    if (!route) return next();

    let answer: globalThis.Response;
    try {
      answer = await post("charge", {
        route: route.key,
        price: route.price,
        url: `${req.protocol}://${req.get("host") ?? "localhost"}${req.originalUrl}`,
        payment: req.get("payment-signature"),
        paymentV1: req.get("x-payment"),
        idempotencyKey: req.get("idempotency-key"),
        requestId: req.get("x-request-id"),
      });
    } catch (err) {
      // Fail closed: never serve a priced route that could not be charged.
      console.error(`@opentab/express: the gateway at ${base} did not answer:`, err);
      res.status(503).json({ error: "unavailable", message: "payments cannot be checked right now; nothing was charged" });
      return;
    }

    if (answer.status === 400 || answer.status === 401) {
      // Our configuration is wrong (bad secret, bad price), not the client's payment.
      console.error(`@opentab/express: the gateway refused the charge request: ${await answer.text()}`);
      res.status(500).json({ error: "gateway_misconfigured", message: "this API's payment setup is broken; nothing was charged" });
      return;
    }
    if (answer.status !== 200) {
      // 402 / 409 / 503: opentab's answer, verbatim.
      const required = answer.headers.get("payment-required");
      if (required) res.setHeader("PAYMENT-REQUIRED", required);
      res.status(answer.status).type("application/json").send(await answer.text());
      return;
    }

    const paid = (await answer.json()) as Paid;
    // The receipt goes on a successful answer only; a failed one is voided instead.
    const writeHead = res.writeHead;
    res.writeHead = function (this: Response, statusCode: number, ...rest: unknown[]) {
      if (statusCode < 400 && !this.headersSent) this.setHeader("PAYMENT-RESPONSE", paid.paymentResponse);
      return (writeHead as (...args: unknown[]) => Response).apply(this, [statusCode, ...rest]);
    } as typeof res.writeHead;
    let settled = false;
    const finish = (failed: boolean) => {
      if (settled) return;
      settled = true;
      if (!failed) return;
      post("void", { chargeId: paid.chargeId }).then(
        async (r) => {
          if (!r.ok) console.error(`@opentab/express: could not void ${paid.chargeId}: ${await r.text()}`);
        },
        (err) => console.error(`@opentab/express: could not void ${paid.chargeId}:`, err),
      );
    };
    res.on("finish", () => finish(res.statusCode >= 400));
    // The client went away before the answer was complete: it did not get what it paid for.
    res.on("close", () => finish(!res.writableFinished));
    next();
  };
}
