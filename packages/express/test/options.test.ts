/**
 * The middleware checks its options when it is created: a missing or empty secret, a bad
 * gateway URL, a bad price or route syntax throws at start-up with a message naming the option
 * (before: the app started, then every priced call got `500 gateway_misconfigured` or `503`).
 * No gateway is needed: nothing here reaches the network.
 */

import { describe, expect, it } from "vitest";
import { gateway, paid, paymentMiddleware, type GatewayOptions } from "../src/index.ts";

const url = "http://127.0.0.1:8402";
const secret = "dev-secret-0123456789";
const routes = { "POST /v1/chat": "$0.002" };

/** Every way to create the middleware, so each check holds for all of them. */
const makers: [string, (options: GatewayOptions) => unknown][] = [
  ["paymentMiddleware(routes, options)", (options) => paymentMiddleware(routes, options)],
  ["gateway(options)", (options) => gateway(options)],
  ["paid(price, options)", (options) => paid("$0.002", options)],
];

describe("options checked at creation", () => {
  it("accepts good options, a path prefix and https included", () => {
    for (const [name, make] of makers) {
      expect(() => make({ url, secret }), name).not.toThrow();
      expect(() => make({ url: "https://gw.example.com/opentab/", secret, voidRetry: { initialDelayMs: 50 } }), name).not.toThrow();
    }
  });

  it("refuses a missing, empty or unusable secret, naming options.secret and never quoting it", () => {
    const env: Record<string, string | undefined> = {};
    const cases: [unknown, RegExp][] = [
      [undefined, /options\.secret is missing or empty/],
      [env.OPENTAB_GATEWAY_SECRET, /options\.secret is missing or empty.*OPENTAB_GATEWAY_SECRET/],
      ["", /options\.secret is missing or empty/],
      [42, /options\.secret is missing or empty/],
      [`${secret}\n`, /options\.secret starts or ends with whitespace/],
      [` ${secret}`, /options\.secret starts or ends with whitespace/],
      ["   ", /options\.secret starts or ends with whitespace/],
      [`${secret.slice(0, 5)}\r\nx-injected: 1`, /options\.secret contains characters an HTTP header cannot carry/],
      [`${secret}€`, /options\.secret contains characters an HTTP header cannot carry/],
    ];
    for (const [name, make] of makers) {
      for (const [value, message] of cases) {
        let thrown: unknown;
        try {
          make({ url, secret: value as string });
        } catch (err) {
          thrown = err;
        }
        expect(thrown, `${name} with secret ${JSON.stringify(value)}`).toBeInstanceOf(TypeError);
        expect((thrown as Error).message, name).toMatch(message);
        expect((thrown as Error).message).not.toContain(secret.slice(0, 5));
      }
    }
  });

  it("refuses a missing or bad gateway URL, naming options.url", () => {
    const cases: [unknown, RegExp][] = [
      [undefined, /options\.url is missing/],
      ["", /options\.url is missing/],
      ["127.0.0.1:8402", /options\.url is not a URL/],
      ["not a url", /options\.url is not a URL/],
      ["localhost:8402", /options\.url must be http: or https:, not "localhost:"/],
      ["ftp://127.0.0.1:8402", /options\.url must be http: or https:/],
      ["http://user:pass@127.0.0.1:8402", /options\.url must not carry credentials/],
      ["http://127.0.0.1:8402/?x=1", /options\.url must not have a query or fragment/],
      ["http://127.0.0.1:8402/#top", /options\.url must not have a query or fragment/],
    ];
    for (const [name, make] of makers) {
      for (const [value, message] of cases) {
        expect(() => make({ url: value as string, secret }), `${name} with url ${JSON.stringify(value)}`).toThrow(message);
      }
      expect(() => make({ url: "http://user:hunter2@127.0.0.1:8402", secret })).not.toThrow(/hunter2/);
    }
  });

  it("refuses options that are not an object, and bad fetch, log or voidRetry values", () => {
    for (const [name, make] of makers) {
      expect(() => make(undefined as unknown as GatewayOptions), name).toThrow(/options must be an object/);
      expect(() => make({ url, secret, fetch: "fetch" as unknown as typeof fetch }), name).toThrow(/options\.fetch must be a function/);
      expect(() => make({ url, secret, log: true as unknown as () => void }), name).toThrow(/options\.log must be a function/);
      expect(() => make({ url, secret, voidRetry: { maxDelayMs: -1 } }), name).toThrow(
        /options\.voidRetry\.maxDelayMs must be a positive number/,
      );
      expect(() => make({ url, secret, voidRetry: { deadlineMs: Number.NaN } }), name).toThrow(/options\.voidRetry\.deadlineMs/);
    }
  });

  it("refuses a bad route table, route syntax or price, naming the route", () => {
    const options = { url, secret };
    expect(() => paymentMiddleware(undefined as unknown as Record<string, string>, options)).toThrow(/routes must be an object/);
    expect(() => paymentMiddleware({ "POST /v1/<id>": "1" }, options)).toThrow(/route "POST \/v1\/<id>"/);
    expect(() => paymentMiddleware({ "chat": "1" }, options)).toThrow(/route "chat" must look like "POST \/v1\/chat"/);
    expect(() => paymentMiddleware({ "POST /v1/chat": "cheap" }, options)).toThrow(/route "POST \/v1\/chat": price "cheap" is not USDC/);
    expect(() => paymentMiddleware({ "POST /v1/chat": "0.0000001" }, options)).toThrow(/is not USDC/);
    expect(() => paymentMiddleware({ "POST /v1/chat": 0.002 as unknown as string }, options)).toThrow(
      /route "POST \/v1\/chat": the price must be a string/,
    );
    expect(() => paymentMiddleware({ "POST /v1/chat": {} as { price: string } }, options)).toThrow(/the price must be a string/);
    const priced = gateway(options);
    expect(() => priced("free")).toThrow(/paid\("free"\).*is not USDC/);
    expect(() => paid("$-1", options)).toThrow(/is not USDC/);
  });

  it("stops an app whose secret is not set at start-up, not on its first call", () => {
    delete process.env.OPENTAB_TEST_UNSET_SECRET;
    const start = () => paymentMiddleware(routes, { url, secret: process.env.OPENTAB_TEST_UNSET_SECRET! });
    expect(start).toThrow("@opentab/express: options.secret is missing or empty");
  });
});
