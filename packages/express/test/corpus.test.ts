/**
 * The bypass corpus (testdata/routes/bypass-corpus.json) against the Express middleware,
 * charging through a real `opentab dev`: an Express app serves the corpus's routes with
 * handlers that record that they ran; every variant is sent unpaid, byte for byte (raw
 * `http.request`), and must be charged (402) or refused (400/404/405), its handler never run.
 * Run with the table in front (Express's default routing, then `case sensitive routing` and
 * `strict routing` on) and with the per-route `paid(...)` form. The same app without the
 * middleware shows which variants Express really routes to a handler: each of those must be
 * a 402, so the corpus tests the pricing, not just a 404.
 */

import { readFileSync } from "node:fs";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import express from "express";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDev, type Dev } from "../../client/test/dev.ts";
import { paid, paymentMiddleware, type GatewayOptions } from "../src/index.ts";
import { raw } from "./pay.ts";

interface Variant {
  method: string;
  path: string;
  targets: string;
  class: string;
}
interface Corpus {
  routes: Record<string, string>;
  variants: Variant[];
}

const corpus = JSON.parse(
  readFileSync(fileURLToPath(new URL("../../../testdata/routes/bypass-corpus.json", import.meta.url)), "utf8"),
) as Corpus;

let dev: Dev;
const servers: Server[] = [];
beforeAll(async () => {
  dev = await startDev();
});
afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  await dev?.stop();
});

/** A corpus route's path as Express 5 writes it (`{name}` is `:name` there; `*` is `*rest`). */
function expressPath(pattern: string): string {
  return pattern.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, ":$1").replace(/\/\*$/, "/*rest");
}

type Form = "none" | "table" | "per-route";

/** The corpus app; `ran` lists the routes whose handlers ran. */
async function corpusApp(form: Form, strictRouting: boolean): Promise<{ port: number; ran: string[] }> {
  const ran: string[] = [];
  const app = express();
  if (strictRouting) {
    app.set("case sensitive routing", true);
    app.set("strict routing", true);
  }
  const gateway: GatewayOptions = { ...dev.demo.gateway, log: () => {} };
  if (form === "table") app.use(paymentMiddleware(corpus.routes, gateway));
  for (const [key, price] of Object.entries(corpus.routes)) {
    const [method, pattern] = key.split(" ") as [string, string];
    const handler: express.RequestHandler = (_req, res) => {
      ran.push(key);
      res.send("served");
    };
    const verb = method.toLowerCase() as "get" | "post";
    if (form === "per-route") app[verb](expressPath(pattern), paid(price, gateway), handler);
    else app[verb](expressPath(pattern), handler);
  }
  const server = app.listen(0, "127.0.0.1");
  servers.push(server);
  await new Promise((resolve) => server.once("listening", resolve));
  return { port: (server.address() as AddressInfo).port, ran };
}

/** Which variants the app, unguarded, serves from a priced handler. */
async function routedByExpress(strictRouting: boolean): Promise<Set<Variant>> {
  const { port, ran } = await corpusApp("none", strictRouting);
  const routed = new Set<Variant>();
  for (const variant of corpus.variants) {
    const before = ran.length;
    await raw(port, variant.method, variant.path);
    if (ran.length > before) routed.add(variant);
  }
  return routed;
}

const label = (v: Variant) => `${v.method} ${v.path} (${v.class})`;

describe("the bypass corpus against @opentab/express", () => {
  for (const [name, form, strictRouting] of [
    ["the table, Express's default routing", "table", false],
    ["the table, case sensitive + strict routing", "table", true],
    ["the per-route form, Express's default routing", "per-route", false],
    ["the per-route form, case sensitive + strict routing", "per-route", true],
  ] as const) {
    it(`${name}: every variant charged or refused, no handler run unpaid`, async () => {
      const routed = await routedByExpress(strictRouting);
      // The exact spellings are routed, so the corpus exercises real handlers.
      for (const variant of corpus.variants.filter((v) => v.class === "exact")) expect(routed.has(variant), label(variant)).toBe(true);

      const { port, ran } = await corpusApp(form, strictRouting);
      for (const variant of corpus.variants) {
        const before = ran.length;
        const res = await raw(port, variant.method, variant.path);
        expect(ran.length, `${label(variant)} ran its handler unpaid`).toBe(before);
        expect([402, 400, 404, 405], `${label(variant)} answered ${res.status}`).toContain(res.status);
        if (routed.has(variant)) expect(res.status, `${label(variant)} is routed by Express`).toBe(402);
        if (res.status === 402) expect(res.headers["payment-required"], label(variant)).toBeDefined();
      }
      expect(ran).toEqual([]);
    });
  }
});
