/**
 * A browser wallet for tests: an EIP-1193 provider backed by a private key and a chain's
 * JSON-RPC, as an extension like MetaMask would be (without its prompts). It shares the account,
 * signs messages and typed data, signs and sends transactions, and passes reads to the chain.
 * `installWallet` puts it in a Playwright context as `window.ethereum`; the signing stays in
 * Node (`exposeFunction`), the page only sees `request()`.
 */

import type { BrowserContext } from "playwright-core";
import { createWalletClient, defineChain, http, numberToHex, type Address, type Hex } from "viem";
import { privateKeyToAccount } from "viem/accounts";

export interface TestWallet {
  address: Address;
  /** Every method the page asked for, in order. */
  calls: string[];
  /** Hashes of the transactions the page had the wallet send. */
  sent: Hex[];
  request(args: { method: string; params?: unknown[] }): Promise<unknown>;
}

interface RpcError {
  code: number;
  message: string;
  data?: unknown;
}

/** What `eth_signTypedData_v4` hands over (JSON: integers may be strings), as viem signs it. */
function typedDataOf(json: string) {
  const typed = JSON.parse(json) as {
    domain: Record<string, unknown>;
    types: Record<string, { name: string; type: string }[]>;
    primaryType: string;
    message: Record<string, unknown>;
  };
  const { EIP712Domain: _, ...types } = typed.types;
  const ints = (fields: { name: string; type: string }[] | undefined, values: Record<string, unknown>) =>
    Object.fromEntries(
      Object.entries(values).map(([name, value]) => {
        const type = fields?.find((f) => f.name === name)?.type ?? "";
        return [name, /^u?int\d*$/.test(type) ? BigInt(value as string | number) : value];
      }),
    );
  const domain = { ...typed.domain, ...(typed.domain.chainId !== undefined ? { chainId: Number(typed.domain.chainId) } : {}) };
  return { domain, types, primaryType: typed.primaryType, message: ints(types[typed.primaryType], typed.message) };
}

export function testWallet(privateKey: Hex, rpcUrl: string, chainId: number): TestWallet {
  const account = privateKeyToAccount(privateKey);
  const chain = defineChain({
    id: chainId,
    name: `chain ${chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
  const client = createWalletClient({ account, chain, transport: http(rpcUrl) });
  const calls: string[] = [];
  const sent: Hex[] = [];
  let id = 0;

  const rpc = async (method: string, params: unknown[]) => {
    const res = await fetch(rpcUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params }),
    });
    const body = (await res.json()) as { result?: unknown; error?: RpcError };
    if (body.error) throw body.error;
    return body.result;
  };

  const request = async ({ method, params = [] }: { method: string; params?: unknown[] }): Promise<unknown> => {
    calls.push(method);
    switch (method) {
      case "eth_requestAccounts":
      case "eth_accounts":
        return [account.address];
      case "eth_chainId":
        return numberToHex(chainId);
      case "wallet_switchEthereumChain": {
        const wanted = Number((params[0] as { chainId: string }).chainId);
        if (wanted !== chainId) throw { code: 4902, message: `Unrecognized chain ID ${wanted}` } satisfies RpcError;
        return null;
      }
      case "personal_sign":
        return account.signMessage({ message: { raw: params[0] as Hex } });
      case "eth_signTypedData_v4":
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        return account.signTypedData(typedDataOf(params[1] as string) as any);
      case "eth_sendTransaction": {
        const tx = params[0] as { from?: Address; to?: Address; data?: Hex; value?: Hex; gas?: Hex };
        if (tx.from && tx.from.toLowerCase() !== account.address.toLowerCase()) {
          throw { code: 4100, message: `not this wallet's account: ${tx.from}` } satisfies RpcError;
        }
        const hash = await client.sendTransaction({
          to: tx.to,
          data: tx.data,
          value: tx.value ? BigInt(tx.value) : undefined,
          gas: tx.gas ? BigInt(tx.gas) : undefined,
        });
        sent.push(hash);
        return hash;
      }
      default:
        return rpc(method, params);
    }
  };
  return { address: account.address, calls, sent, request };
}

/** Gives every page of `context` the wallet as `window.ethereum` (before the page's own scripts run). */
export async function installWallet(context: BrowserContext, wallet: TestWallet): Promise<void> {
  await context.exposeFunction("__testWallet", async (payload: string) => {
    try {
      return JSON.stringify({ result: await wallet.request(JSON.parse(payload) as { method: string; params?: unknown[] }) });
    } catch (err) {
      const e = err as Partial<RpcError> & { shortMessage?: string };
      return JSON.stringify({ error: { code: e.code ?? -32603, message: e.shortMessage ?? e.message ?? String(err), data: e.data } });
    }
  });
  await context.addInitScript(() => {
    const call = (payload: string) => (window as unknown as { __testWallet: (p: string) => Promise<string> }).__testWallet(payload);
    (window as unknown as { ethereum: unknown }).ethereum = {
      async request({ method, params }: { method: string; params?: unknown[] }) {
        const out = JSON.parse(await call(JSON.stringify({ method, params }))) as { result?: unknown; error?: RpcError };
        if (out.error) throw Object.assign(new Error(out.error.message), { code: out.error.code, data: out.error.data });
        return out.result;
      },
      on() {},
      removeListener() {},
    };
  });
}
