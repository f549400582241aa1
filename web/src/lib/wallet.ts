/**
 * Who signs: an injected wallet (EIP-1193, e.g. a browser extension) through viem, or in
 * `opentab dev` only, the built-in dev wallet (the demo owner, whose development key the dev
 * server hands out). Sign-in is EIP-4361 (SIWE) with a server nonce.
 */

import { createWalletClient, custom, getAddress, type Address, type EIP1193Provider, type Hex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { api, type TypedData } from "./api";

export interface Wallet {
  kind: "dev" | "injected";
  address: Address;
  signMessage(text: string): Promise<Hex>;
  signTypedData(typed: TypedData): Promise<Hex>;
}

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

/** The dev wallet, if this is `opentab dev` (404 elsewhere). */
export async function devWallet(): Promise<Wallet | null> {
  let key: { privateKey: Hex };
  try {
    key = await api<{ privateKey: Hex }>("/api/dev/wallet");
  } catch {
    return null;
  }
  const account = privateKeyToAccount(key.privateKey);
  return {
    kind: "dev",
    address: account.address,
    signMessage: (text) => account.signMessage({ message: text }),
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    signTypedData: (typed) => account.signTypedData(toViemTypedData(typed) as any),
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
  };
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
