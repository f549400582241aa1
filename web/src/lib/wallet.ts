/**
 * Who signs: an injected wallet (EIP-1193, e.g. a browser extension) through viem, or in
 * `opentab dev` only, the built-in dev wallet (the demo owner, whose development key the dev
 * server hands out, with the dev chain's RPC URL). Sign-in is EIP-4361 (SIWE) with a server
 * nonce. Both can also send the owner's own transactions (deposits and withdrawals).
 */

import {
  BaseError,
  createPublicClient,
  createWalletClient,
  custom,
  defineChain,
  getAddress,
  http,
  UserRejectedRequestError,
  type Account,
  type Address,
  type Chain,
  type EIP1193Provider,
  type Hex,
  type PublicClient,
  type Transport,
  type WalletClient,
} from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { api, type TypedData } from "./api";

/** What sends the owner's transactions on one chain: who, where, and the clients to do it with. */
export interface TxClients {
  /** The owner: a local account (dev wallet) or the injected wallet's address. */
  account: Account | Address;
  chain: Chain;
  wallet: WalletClient<Transport, Chain>;
  public: PublicClient;
}

export interface Wallet {
  kind: "dev" | "injected";
  address: Address;
  signMessage(text: string): Promise<Hex>;
  signTypedData(typed: TypedData): Promise<Hex>;
  /** Clients for sending transactions on `chainId`; an injected wallet on another chain is asked to switch. */
  clients(chainId: number): Promise<TxClients>;
}

/** The dev server's answer: its development key and where its chain (anvil) listens. */
interface DevKey {
  privateKey: Hex;
  rpcUrl?: string;
}

/** A chain viem can name, for whatever `chainId` opentab is on. */
export function chainFor(chainId: number, rpcUrl?: string): Chain {
  return defineChain({
    id: chainId,
    name: `chain ${chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: rpcUrl ? [rpcUrl] : [] } },
  });
}

/** Receipts are polled this often (anvil mines at once; a real chain takes a few seconds). */
const POLLING_MS = 1_000;

declare global {
  interface Window {
    ethereum?: EIP1193Provider;
  }
}

/** The API's typed data as viem takes it: no `EIP712Domain` type, integers as bigint. */
export function toViemTypedData(typed: TypedData) {
  const types = Object.fromEntries(Object.entries(typed.types).filter(([name]) => name !== "EIP712Domain"));
  const fields = types[typed.primaryType] ?? [];
  const message = Object.fromEntries(
    Object.entries(typed.message).map(([name, value]) => {
      const type = fields.find((f) => f.name === name)?.type ?? "";
      return [name, /^u?int\d*$/.test(type) ? BigInt(value as string | number) : value];
    }),
  );
  return { domain: typed.domain, types, primaryType: typed.primaryType, message };
}

async function devKey(): Promise<DevKey | null> {
  try {
    return await api<DevKey>("/api/dev/wallet");
  } catch {
    return null;
  }
}

/** The dev wallet, if this is `opentab dev` (404 elsewhere). */
export async function devWallet(): Promise<Wallet | null> {
  const key = await devKey();
  if (!key) return null;
  const account = privateKeyToAccount(key.privateKey);
  return {
    kind: "dev",
    address: account.address,
    signMessage: (text) => account.signMessage({ message: text }),
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    signTypedData: (typed) => account.signTypedData(toViemTypedData(typed) as any),
    clients: async (chainId) => {
      if (!key.rpcUrl) throw new Error("This dev server does not say where its chain is (no rpcUrl from /api/dev/wallet).");
      const chain = chainFor(chainId, key.rpcUrl);
      const transport = http(key.rpcUrl);
      return {
        account,
        chain,
        wallet: createWalletClient({ account, chain, transport, pollingInterval: POLLING_MS }),
        public: createPublicClient({ chain, transport, pollingInterval: POLLING_MS }),
      };
    },
  };
}

/** The injected wallet, after asking it for an account. */
export async function injectedWallet(): Promise<Wallet> {
  const provider = window.ethereum;
  if (!provider) throw new Error("No wallet found in this browser. Install one (e.g. MetaMask), or use opentab dev's dev wallet.");
  const client = createWalletClient({ transport: custom(provider) });
  const [address] = await client.requestAddresses();
  if (!address) throw new Error("The wallet shared no account.");
  return {
    kind: "injected",
    address: getAddress(address),
    signMessage: (text) => client.signMessage({ account: address, message: text }),
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    signTypedData: (typed) => client.signTypedData({ account: address, ...(toViemTypedData(typed) as any) }),
    clients: async (chainId) => {
      await switchTo(client, chainId);
      const chain = chainFor(chainId);
      const transport = custom(provider);
      return {
        account: getAddress(address),
        chain,
        wallet: createWalletClient({ account: address, chain, transport, pollingInterval: POLLING_MS }),
        public: createPublicClient({ chain, transport, pollingInterval: POLLING_MS }),
      };
    },
  };
}

/** Whether the user said no in their wallet (EIP-1193 code 4001), however deep viem wrapped it. */
export function isUserRejection(err: unknown): boolean {
  if (err instanceof BaseError) {
    return Boolean(err.walk((e) => e instanceof UserRejectedRequestError || (e as { code?: unknown }).code === 4001));
  }
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === 4001;
}

/** Asks the injected wallet to move to `chainId` if it is elsewhere, and checks it did. */
async function switchTo(client: WalletClient, chainId: number): Promise<void> {
  const current = await client.getChainId();
  if (current === chainId) return;
  try {
    await client.switchChain({ id: chainId });
  } catch (err) {
    throw new Error(
      isUserRejection(err)
        ? `You declined to switch your wallet to chain ${chainId}; opentab's contracts are there.`
        : `Your wallet is on chain ${current} and could not switch to chain ${chainId}: add that network to it and try again.`,
    );
  }
  const now = await client.getChainId();
  if (now !== chainId) throw new Error(`Your wallet is still on chain ${now}; switch it to chain ${chainId} and try again.`);
}

/**
 * Something that reads `chainId`'s latest block without asking the user anything: the dev
 * chain's RPC in `opentab dev`, else the injected wallet if it is on that chain; null when
 * neither can (callers then go by the computer's clock).
 */
export async function chainReader(chainId: number): Promise<PublicClient | null> {
  const key = await devKey();
  if (key?.rpcUrl) return createPublicClient({ chain: chainFor(chainId, key.rpcUrl), transport: http(key.rpcUrl) });
  const provider = typeof window !== "undefined" ? window.ethereum : undefined;
  if (!provider) return null;
  const client = createPublicClient({ chain: chainFor(chainId), transport: custom(provider) });
  try {
    return (await client.getChainId()) === chainId ? client : null;
  } catch {
    return null;
  }
}

/** The EIP-4361 message opentab verifies (same text as the Rust CLI composes). */
export function siweMessage(o: {
  domain: string;
  uri: string;
  address: Address;
  chainId: number;
  nonce: string;
  issuedAt: number;
  expiresAt: number;
}): string {
  const iso = (t: number) => new Date(t * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
  return (
    `${o.domain} wants you to sign in with your Ethereum account:\n${getAddress(o.address)}\n\n` +
    `Sign in to opentab to manage your session keys.\n\nURI: ${o.uri}\nVersion: 1\n` +
    `Chain ID: ${o.chainId}\nNonce: ${o.nonce}\nIssued At: ${iso(o.issuedAt)}\nExpiration Time: ${iso(o.expiresAt)}`
  );
}

/** Signs in: nonce, message, signature, session cookie. */
export async function signIn(wallet: Wallet): Promise<void> {
  const nonce = await api<{ nonce: string; domain: string; chainId: number }>("/api/auth/nonce");
  const now = Math.floor(Date.now() / 1000);
  const message = siweMessage({
    domain: nonce.domain,
    uri: window.location.origin,
    address: wallet.address,
    chainId: nonce.chainId,
    nonce: nonce.nonce,
    issuedAt: now,
    expiresAt: now + 600,
  });
  const signature = await wallet.signMessage(message);
  await api("/api/auth/login", { method: "POST", json: { message, signature } });
}
