/**
 * Test helpers shared by the Express suites: a `PAYMENT-SIGNATURE` signed by `opentab dev`'s
 * demo session key, and raw HTTP requests that send a path byte for byte.
 */

import { request as httpRequest } from "node:http";
import { privateKeyToAccount } from "viem/accounts";
import { VOUCHER_TYPES, encodeHeader, type PaymentRequired } from "@opentab/client";
import type { Dev } from "../../client/test/dev.ts";

/** The `PAYMENT-SIGNATURE` for a cumulative `total` (base units), signed by the demo session key. */
export async function payment(dev: Dev, accepted: PaymentRequired["accepts"][number], total: bigint): Promise<string> {
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

export interface RawAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** Sends `method path` to 127.0.0.1:`port` with `path` exactly as given (no URL normalisation). */
export function raw(port: number, method: string, path: string, headers: Record<string, string> = {}): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: "127.0.0.1", port, method, path, headers: { "content-type": "application/json", ...headers }, agent: false },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => (body += chunk));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(method === "GET" || method === "HEAD" ? undefined : "{}");
  });
}
