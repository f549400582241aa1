/**
 * @opentab/express — opentab's HTTP 402 gateway as Express middleware.
 *
 * Two ways to price routes. **Per route** (the safest: the price sits in the route's own handler
 * chain, so it runs exactly when Express runs that route, and cannot disagree with the router):
 *
 * ```ts
 * import express from "express";
 * import { gateway } from "@opentab/express";
 *
 * const app = express();
 * const paid = gateway({ url: "http://127.0.0.1:8402", secret: process.env.OPENTAB_GATEWAY_SECRET! });
 * app.post("/v1/chat", paid("$0.002"), chat);
 * app.get("/v1/models/:id", paid({ price: "0.0001" }), model); // HEAD runs it too, priced the same
 * ```
 *
 * (`paid(price, options)` is the same thing without the factory.) **As a table** in front of the
 * routes, keyed `"METHOD /path"`:
 *
 * ```ts
 * import { paymentMiddleware } from "@opentab/express";
 * app.use(paymentMiddleware(
 *   { "POST /v1/chat": { price: "$0.002" }, "GET /v1/models/:id": "$0.0001", "POST /v1/files/{name}": "0.01" },
 *   { url: "http://127.0.0.1:8402", secret: process.env.OPENTAB_GATEWAY_SECRET! },
 * ));
 * ```
 *
 * Route keys use opentab's one route syntax (the same as the gateway, the proxy and the charge
 * API): literal segments (letters, digits and `- . _ ~ ! $ & ' + , = @`), a parameter written
 * `:id` or `{id}` (the whole segment), and a trailing `*` for any rest (zero or more segments).
 * Anything else (`<id>`, `[id]`, `*name`, `file.:ext`, unbalanced braces, regex characters, `%`,
 * `;`, `.`/`..` or empty segments) is refused when the table is compiled, with an error naming
 * the route.
 *
 * The table prices what Express routes: it matches the path the router matches (the same
 * parsed `req.path`, so a query, a fragment or an absolute-form request line changes nothing),
 * honours the app's `case sensitive routing` and `strict routing` settings, read from
 * `req.app` at request time (Express's defaults: case-insensitive, a trailing slash optional),
 * compares a literal segment to both its raw and its percent-decoded spelling (`/v1/%63hat` is
 * priced like `/v1/chat`), lets a parameter match any non-empty segment (`a%2Fb` included,
 * which Express hands to `:id` as `a/b`), and prices `HEAD` as `GET` (Express runs GET handlers
 * for HEAD). Keys are paths as the routes next to the middleware see them: mount it where
 * the routes are (`app.use(paymentMiddleware(…))`), not under a path, and set the two routing
 * settings before routes are added. A sub-router with routing options of its own, or any
 * routing the table cannot see, is what the per-route form is for.
 *
 * The options are checked when the middleware is created (`paymentMiddleware`, `gateway`,
 * `paid`): a missing or empty `secret` (an unset `OPENTAB_GATEWAY_SECRET`), a `url` that is not
 * an http(s) URL, a malformed route or price throws then, naming the option or the route, so a
 * misconfigured app stops at start-up. A secret the gateway does not know can only show on a
 * call: that call gets `500 gateway_misconfigured` and a log line.
 *
 * For a priced call the middleware asks opentab's charge API (`POST {url}/gateway/v1/charge`)
 * to charge it before the handler runs. Unpaid or refused calls get opentab's answer verbatim
 * (`402` with `PAYMENT-REQUIRED`, `409` for a duplicate payment, `503` when the gateway cannot
 * charge): a priced handler never runs unpaid. A paid call runs the handler.
 *
 * **Voids mean "the API failed".** The charge stands or falls with the status the handler
 * answers, taken when the status line is written: below 400 the response gets the
 * `PAYMENT-RESPONSE` receipt and the call is paid, even if the client hangs up before the last
 * byte (it was served); 400 and above — including the 500 Express answers when the handler
 * throws or calls `next(err)` before answering — voids the charge (`POST {url}/gateway/v1/void`):
 * a user never pays for an error. (An error handler of yours that answers below 400 declares
 * the call served.) A void that does not reach the gateway (network error, `503`, any 5xx) is
 * retried with capped exponential backoff until the gateway records it, for as long as the
 * gateway can still void it (ten minutes); `drain()` on the returned handler waits for voids
 * in flight (call it on shutdown). Log lines name the route, the request id and a short hash
 * of the charge, never the charge id (it carries the voucher and its signature), a payment
 * header, or the secret.
 */

import { createHash } from "node:crypto";
import type { NextFunction, Request, RequestHandler, Response } from "express";

/** A route's price: whole USDC with up to 6 decimals, `"$0.002"` or `"0.002"`. */
export type Price = string | { price: string; description?: string };

/** `"METHOD /path"` (see the module docs for the path syntax) → price. */
export type Routes = Record<string, Price>;

export interface GatewayOptions {
  /** Where opentab serves the charge API (`opentab dev`, or `opentab proxy` with a secret): an http(s) URL, no query. */
  url: string;
  /** The charge API's shared secret (`OPENTAB_GATEWAY_SECRET`); missing or empty throws when the middleware is created. */
  secret: string;
  /** Injected for tests; the global `fetch` by default. */
  fetch?: typeof fetch;
  /** Where problems are reported (one line each, nothing secret in it); `console.error` by default. */
  log?: (line: string) => void;
  /** How a void that did not get through is retried (defaults: 200 ms, doubling up to 10 s, for 10 min). */
  voidRetry?: { initialDelayMs?: number; maxDelayMs?: number; deadlineMs?: number };
}

/** A handler that charges, with a way to wait for the voids it still has to deliver. */
export type PaymentHandler = RequestHandler & {
  /** Resolves once every void started so far is recorded or given up on. */
  drain(): Promise<void>;
};

type Segment = { kind: "literal"; value: string } | { kind: "param"; name: string } | { kind: "rest" };

export interface CompiledRoute {
  /** `METHOD /pattern`, as written (method upper-cased): the label the charge API records. */
  key: string;
  method: string;
  pattern: string;
  segments: Segment[];
  /** The pattern ends in `/` (only `strict routing` tells `/a/` from `/a`). */
  trailingSlash: boolean;
  /** Whole USDC, no `$`. */
  price: string;
}

/** How the app routes: Express's `case sensitive routing` and `strict routing` settings. */
export interface RoutingOptions {
  caseSensitive?: boolean;
  strict?: boolean;
}

// The same syntax as the gateway's (crates/gateway/src/pricing.rs), so the charge API takes every key.
const LITERAL = /^[\p{Alphabetic}\p{N}\-._~!$&'+,=@]+$/u;
const PARAM = /^(?::([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})$/;
const SYNTAX = `literal segments (letters, digits and - . _ ~ ! $ & ' + , = @), ":name" or "{name}" for one segment, and a trailing "*" for any rest`;

/** Parses one route pattern (`/v1/models/:id`); throws an error naming `route` if it is not in the syntax. */
function compilePattern(route: string, pattern: string): { segments: Segment[]; trailingSlash: boolean } {
  const bad = (why: string) => new Error(`route ${JSON.stringify(route)}: ${why}; a route path has ${SYNTAX}`);
  if (!pattern.startsWith("/")) throw bad("the path must start with /");
  if (pattern === "/") return { segments: [], trailingSlash: false };
  const trailingSlash = pattern.length > 1 && pattern.endsWith("/");
  const parts = pattern.slice(1, trailingSlash ? -1 : undefined).split("/");
  const segments = parts.map((part, i): Segment => {
    if (part === "") throw bad("empty segment (//)");
    if (part === "*") {
      if (i !== parts.length - 1 || trailingSlash) throw bad('"*" may only be the last segment');
      return { kind: "rest" };
    }
    const param = PARAM.exec(part);
    if (param) return { kind: "param", name: (param[1] ?? param[2])! };
    if (part === "." || part === "..") throw bad(`dot segment ${JSON.stringify(part)}`);
    if (!LITERAL.test(part)) throw bad(`segment ${JSON.stringify(part)} is neither a literal nor a parameter`);
    return { kind: "literal", value: part };
  });
  return { segments, trailingSlash };
}

/** Normalises a price to whole USDC without `$`; throws an error starting with `where` otherwise. */
function compilePrice(where: string, value: Price): string {
  const text: unknown = typeof value === "object" && value !== null ? value.price : value;
  if (typeof text !== "string") {
    throw new Error(`${where}: the price must be a string like "$0.002" or { price: "$0.002" }`);
  }
  const price = text.trim().replace(/^\$/, "");
  if (!/^\d+(\.\d{1,6})?$/.test(price)) {
    throw new Error(`${where}: price ${JSON.stringify(price)} is not USDC like "$0.002"`);
  }
  return price;
}

/** The compiled table, so each request is a cheap match. Throws on a malformed entry, naming it. */
export function compileRoutes(routes: Routes): CompiledRoute[] {
  if (typeof routes !== "object" || routes === null || Array.isArray(routes)) {
    throw new TypeError(`@opentab/express: the routes must be an object like { "POST /v1/chat": "$0.002" }`);
  }
  return Object.entries(routes).map(([key, value]) => {
    const match = /^([A-Za-z]+)\s+(\S+)$/.exec(key.trim());
    if (!match) throw new Error(`route ${JSON.stringify(key)} must look like "POST /v1/chat"`);
    const method = match[1]!.toUpperCase();
    const pattern = match[2]!;
    const price = compilePrice(`route ${JSON.stringify(key)}`, value);
    return { key: `${method} ${pattern}`, method, pattern, ...compilePattern(key, pattern), price };
  });
}

function decoded(part: string): string | undefined {
  if (!part.includes("%")) return undefined;
  try {
    return decodeURIComponent(part);
  } catch {
    return undefined;
  }
}

/** Case-insensitive equality that never misses a match JavaScript's `/…/i` (Express) would make. */
function sameIgnoringCase(a: string, b: string): boolean {
  return a === b || a.toUpperCase() === b.toUpperCase() || a.toLowerCase() === b.toLowerCase();
}

function literalMatches(literal: string, part: string, caseSensitive: boolean): boolean {
  const same = caseSensitive ? (a: string, b: string) => a === b : sameIgnoringCase;
  if (same(literal, part)) return true;
  const plain = decoded(part);
  return plain !== undefined && same(literal, plain);
}

function segmentsMatch(segments: Segment[], parts: string[], caseSensitive: boolean): boolean {
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!;
    if (segment.kind === "rest") return true;
    const part = parts[i];
    if (part === undefined) return false;
    if (segment.kind === "param" ? part === "" : !literalMatches(segment.value, part, caseSensitive)) return false;
  }
  return parts.length === segments.length;
}

/**
 * The route that prices `method path`, if any. `path` is the path as Express's router sees it
 * (`req.path`: raw, not decoded, no query); `routing` is the app's routing settings (Express's
 * defaults when omitted). HEAD is priced as GET.
 */
export function findRoute(
  routes: CompiledRoute[],
  method: string,
  path: string,
  routing: RoutingOptions = {},
): CompiledRoute | undefined {
  if (!path.startsWith("/")) return undefined;
  const verb = method.toUpperCase();
  let parts = path === "/" ? [] : path.slice(1).split("/");
  if (!routing.strict && parts.length > 0 && parts[parts.length - 1] === "") parts = parts.slice(0, -1);
  return routes.find((route) => {
    if (route.method !== verb && !(verb === "HEAD" && route.method === "GET")) return false;
    const segments: Segment[] =
      routing.strict && route.trailingSlash ? [...route.segments, { kind: "literal", value: "" }] : route.segments;
    return segmentsMatch(segments, parts, routing.caseSensitive === true);
  });
}

interface Paid {
  status: "paid";
  chargeId: string;
  paymentResponse: string;
}

/** A URL fit for a log line: no credentials, no query. */
function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    parsed.username = "";
    parsed.password = "";
    parsed.search = "";
    return parsed.toString().replace(/\/$/, "");
  } catch {
    return "<the configured url>";
  }
}

/** Text fit for a log line: anything long and token-like (base64, hex) is cut out. */
function scrub(text: string): string {
  return text.replace(/[A-Za-z0-9+/=_-]{40,}/g, "[redacted]").slice(0, 300);
}

function describeError(err: unknown): string {
  if (!(err instanceof Error)) return "unknown error";
  const cause = (err as { cause?: { code?: unknown; message?: unknown } }).cause;
  const detail = cause && typeof cause.code === "string" ? ` (${cause.code})` : "";
  return scrub(`${err.message}${detail}`);
}

/** A short, one-way name for a charge in log lines. */
function fingerprint(chargeId: string): string {
  return createHash("sha256").update(chargeId).digest("hex").slice(0, 12);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Checks the options when the middleware is created, so a missing secret or a malformed URL
 * stops the app at start-up instead of answering every priced call `500 gateway_misconfigured`
 * (or `503`). Only what can be known without the gateway is checked: a secret the gateway
 * does not know is still found out on the first call. The messages name the option and never
 * quote the secret.
 */
function checkOptions(options: GatewayOptions): void {
  const bad = (option: string, why: string) => new TypeError(`@opentab/express: ${option} ${why}`);
  if (typeof options !== "object" || options === null) {
    throw bad("options", "must be an object: { url, secret } of opentab's charge API");
  }
  const { url, secret, voidRetry } = options;
  if (typeof url !== "string" || url.trim() === "") {
    throw bad("options.url", "is missing: set it to where opentab serves the charge API (e.g. http://127.0.0.1:8402)");
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw bad("options.url", "is not a URL: expected the scheme, host and port, e.g. http://127.0.0.1:8402");
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw bad("options.url", `must be http: or https:, not ${JSON.stringify(parsed.protocol)}`);
  }
  if (parsed.username !== "" || parsed.password !== "") {
    throw bad("options.url", "must not carry credentials (user:password@): the charge API takes the secret in options.secret");
  }
  if (parsed.search !== "" || parsed.hash !== "") {
    throw bad("options.url", `must not have a query or fragment: ${JSON.stringify(redactUrl(url))}`);
  }
  if (typeof secret !== "string" || secret === "") {
    throw bad(
      "options.secret",
      "is missing or empty: set it to the charge API's secret (OPENTAB_GATEWAY_SECRET; `opentab dev` writes it to demo.json as gateway.secret)",
    );
  }
  if (secret.trim() !== secret) {
    throw bad("options.secret", "starts or ends with whitespace (a newline read from a file?): trim it");
  }
  // Bytes an HTTP header cannot carry: fetch would refuse every call.
  if (/[\u0000-\u001f\u007f]/.test(secret) || /[^\u0000-\u00ff]/.test(secret)) {
    throw bad("options.secret", "contains characters an HTTP header cannot carry (control or non-Latin-1 characters)");
  }
  if (options.fetch !== undefined && typeof options.fetch !== "function") throw bad("options.fetch", "must be a function");
  if (options.log !== undefined && typeof options.log !== "function") throw bad("options.log", "must be a function");
  if (voidRetry !== undefined) {
    if (typeof voidRetry !== "object" || voidRetry === null) throw bad("options.voidRetry", "must be an object");
    for (const key of ["initialDelayMs", "maxDelayMs", "deadlineMs"] as const) {
      const value = voidRetry[key];
      if (value !== undefined && !(typeof value === "number" && Number.isFinite(value) && value > 0)) {
        throw bad(`options.voidRetry.${key}`, `must be a positive number of milliseconds, not ${String(value)}`);
      }
    }
  }
}

/** What `paymentMiddleware` and `paid` share: talking to the charge API, voids and their retries. */
class Charger {
  private readonly fetchImpl: typeof fetch;
  private readonly base: string;
  private readonly where: string;
  private readonly log: (line: string) => void;
  private readonly retry: { initialDelayMs: number; maxDelayMs: number; deadlineMs: number };
  private readonly voids = new Set<Promise<void>>();

  constructor(private readonly options: GatewayOptions) {
    checkOptions(options);
    this.fetchImpl = options.fetch ?? fetch;
    this.base = options.url.replace(/\/$/, "");
    this.where = redactUrl(this.base);
    const log = options.log ?? ((line: string) => console.error(line));
    this.log = (line) => log(`@opentab/express: ${line}`);
    this.retry = {
      initialDelayMs: options.voidRetry?.initialDelayMs ?? 200,
      maxDelayMs: options.voidRetry?.maxDelayMs ?? 10_000,
      deadlineMs: options.voidRetry?.deadlineMs ?? 600_000,
    };
  }

  private post(path: string, body: unknown): Promise<globalThis.Response> {
    return this.fetchImpl(`${this.base}/gateway/v1/${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${this.options.secret}` },
      body: JSON.stringify(body),
    });
  }

  drain = async (): Promise<void> => {
    while (this.voids.size > 0) await Promise.all([...this.voids]);
  };

  /** Charges `label` at `price` for this request, then runs `next` (paid) or answers (not paid). */
  async charge(req: Request, res: Response, next: NextFunction, label: string, price: string): Promise<void> {
    const requestId = req.get("x-request-id");
    const path = req.originalUrl.startsWith("/") ? req.originalUrl : absolutePath(req.originalUrl);
    let answer: globalThis.Response;
    try {
      answer = await this.post("charge", {
        route: label,
        price,
        url: `${req.protocol}://${req.get("host") ?? "localhost"}${path}`,
        payment: req.get("payment-signature"),
        paymentV1: req.get("x-payment"),
        idempotencyKey: req.get("idempotency-key"),
        requestId,
      });
    } catch (err) {
      // Fail closed: never serve a priced route that could not be charged.
      this.log(`the gateway at ${this.where} did not answer a charge for ${label}: ${describeError(err)}`);
      res.status(503).json({ error: "unavailable", message: "payments cannot be checked right now; nothing was charged" });
      return;
    }

    if (answer.status === 400 || answer.status === 401) {
      // Our configuration is wrong (bad secret, bad price), not the client's payment.
      const refusal = (await answer.json().catch(() => ({}))) as { error?: unknown; message?: unknown };
      this.log(
        `the gateway refused the charge request for ${label} (HTTP ${answer.status} ${String(refusal.error)}): ${scrub(String(refusal.message))}`,
      );
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
    const name = `${label} (request ${scrub(requestId ?? "-")}, charge ${fingerprint(paid.chargeId)})`;
    // The status the handler answers decides, once: < 400 is served (receipt), >= 400 is voided.
    // It is taken when the status line is written (explicitly, or implicitly by the first write
    // or end), or, once the client has gone and Node writes nothing, when the handler writes or
    // ends its answer anyway: what counts is the status the handler gave, not who was listening.
    let decided = false;
    const decide = (statusCode: number) => {
      if (decided || !(statusCode >= 200)) return;
      decided = true;
      if (statusCode >= 400) this.startVoid(paid.chargeId, name);
      else if (!res.headersSent) res.setHeader("PAYMENT-RESPONSE", paid.paymentResponse);
    };
    const { writeHead, write, end } = res;
    res.writeHead = function (this: Response, statusCode: number, ...rest: unknown[]) {
      decide(statusCode);
      return (writeHead as (...args: unknown[]) => Response).apply(this, [statusCode, ...rest]);
    } as typeof res.writeHead;
    res.write = function (this: Response, ...args: unknown[]) {
      if (!this.headersSent) decide(this.statusCode);
      return (write as (...args: unknown[]) => boolean).apply(this, args);
    } as typeof res.write;
    res.end = function (this: Response, ...args: unknown[]) {
      if (!this.headersSent) decide(this.statusCode);
      return (end as (...args: unknown[]) => Response).apply(this, args);
    } as typeof res.end;
    next();
  }

  private startVoid(chargeId: string, name: string): void {
    const done = this.voidUntilRecorded(chargeId, name).finally(() => this.voids.delete(done));
    this.voids.add(done);
  }

  /** Voids the charge, retrying what did not get through until the gateway records it. */
  private async voidUntilRecorded(chargeId: string, name: string): Promise<void> {
    const deadline = Date.now() + this.retry.deadlineMs;
    let delay = this.retry.initialDelayMs;
    for (let attempt = 1; ; attempt++) {
      let problem: string;
      try {
        const answer = await this.post("void", { chargeId });
        // The body of a refusal may quote the charge id: only its status and code are logged.
        const code = String(((await answer.json().catch(() => ({}))) as { error?: unknown }).error ?? "");
        if (answer.ok) return;
        if (answer.status === 404) {
          this.log(`void of ${name}: the gateway holds no open charge (voided already, or older than its void window)`);
          return;
        }
        if (answer.status === 400 || answer.status === 401) {
          this.log(`void of ${name} refused (HTTP ${answer.status} ${scrub(code)}): check the gateway url and secret`);
          return;
        }
        problem = `HTTP ${answer.status} ${scrub(code)}`;
      } catch (err) {
        problem = describeError(err);
      }
      if (Date.now() + delay > deadline) {
        this.log(`void of ${name} gave up after ${attempt} attempts: ${problem}`);
        return;
      }
      this.log(`void of ${name} did not get through (attempt ${attempt}: ${problem}); retrying in ${delay} ms`);
      await sleep(delay);
      delay = Math.min(delay * 2, this.retry.maxDelayMs);
    }
  }
}

/** The path and query of an absolute-form request target (`GET http://host/v1/chat HTTP/1.1`). */
function absolutePath(target: string): string {
  try {
    const url = new URL(target);
    return `${url.pathname}${url.search}`;
  } catch {
    return "/";
  }
}

/** The middleware for a table of priced routes (see the module docs). */
export function paymentMiddleware(routes: Routes, gateway: GatewayOptions): PaymentHandler {
  const table = compileRoutes(routes);
  const charger = new Charger(gateway);
  const handler: RequestHandler = (req, res, next) => {
    const routing = { caseSensitive: req.app.enabled("case sensitive routing"), strict: req.app.enabled("strict routing") };
    const route = findRoute(table, req.method, req.path, routing);
    if (!route) return next();
    return charger.charge(req, res, next, route.key, route.price);
  };
  return Object.assign(handler, { drain: charger.drain });
}

/** A label in the route syntax for the Express route that is running (for the ledger). */
function routeLabel(req: Request): string {
  const route = req.route as { path?: unknown; methods?: Record<string, boolean> } | undefined;
  const method = req.method === "HEAD" && !route?.methods?.head ? "GET" : req.method.toUpperCase();
  const path = `${req.baseUrl}${typeof route?.path === "string" ? route.path : "/*"}`;
  const segments: string[] = [];
  for (const part of path.split("/").filter((p) => p !== "")) {
    if (part.startsWith("*") || part.startsWith("{*")) {
      segments.push("*");
      break;
    }
    segments.push(PARAM.test(part) || (LITERAL.test(part) && part !== "." && part !== "..") ? part : `:p${segments.length}`);
  }
  return `${/^[A-Z]+$/.test(method) ? method : "GET"} /${segments.join("/")}`;
}

/**
 * The per-route form: a handler factory sharing one connection to the gateway.
 * `const paid = gateway(options); app.post("/v1/chat", paid("0.002"), handler)`.
 */
export function gateway(options: GatewayOptions): ((price: Price) => PaymentHandler) & { drain(): Promise<void> } {
  const charger = new Charger(options);
  const factory = (price: Price): PaymentHandler => {
    const amount = compilePrice(`@opentab/express: paid(${JSON.stringify(price)})`, price);
    const handler: RequestHandler = (req, res, next) => charger.charge(req, res, next, routeLabel(req), amount);
    return Object.assign(handler, { drain: charger.drain });
  };
  return Object.assign(factory, { drain: charger.drain });
}

/**
 * Charges `price` whenever Express runs it: put it first in a route's handlers,
 * `app.post("/v1/chat", paid("0.002", options), handler)`. It runs exactly when the router runs
 * the route (HEAD on a GET route included), so it cannot disagree with the router.
 */
export function paid(price: Price, options: GatewayOptions): PaymentHandler {
  return gateway(options)(price);
}
