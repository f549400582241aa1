import { describe, expect, it } from "vitest";
import { countdown, parseUsdc, relative, short, usdc } from "@/lib/format";
import { siweMessage, toViemTypedData } from "@/lib/wallet";

describe("amounts", () => {
  it("show base units as USDC without float rounding", () => {
    expect(usdc("12500000")).toBe("12.5");
    expect(usdc("2000")).toBe("0.002");
    expect(usdc("18446744073709551615")).toBe("18446744073709.551615");
  });

  it("parse what people type, or say what is wrong", () => {
    expect(parseUsdc("$1.25")).toEqual({ ok: true, value: 1_250_000n });
    expect(parseUsdc("")).toMatchObject({ ok: false, error: expect.stringContaining("Enter an amount") });
    expect(parseUsdc("1.0000001")).toMatchObject({ ok: false, error: expect.stringContaining("6 decimals") });
    expect(parseUsdc("0")).toMatchObject({ ok: false, error: expect.stringContaining("more than zero") });
    expect(parseUsdc("1e3")).toMatchObject({ ok: false });
  });
});

describe("times and names", () => {
  it("count down to the second, dropping a zero second part", () => {
    expect(countdown(86_400)).toBe("1d");
    expect(countdown(86_400 + 2 * 3_600 + 59)).toBe("1d 2h");
    expect(countdown(3 * 3_600 + 5 * 60 + 1)).toBe("3h 05m");
    expect(countdown(15 * 60)).toBe("15m");
    expect(countdown(4 * 60 + 9)).toBe("4m 09s");
    expect(countdown(11.2)).toBe("12s");
    expect(countdown(-5)).toBe("0s");
  });

  it("read relative to now", () => {
    expect(relative(1_000 + 7 * 86_400 - 3_600, 1_000)).toBe("in 6d 23h");
    expect(relative(1_000 - 180, 1_000)).toBe("3m ago");
    expect(relative(1_010, 1_000)).toBe("just now");
    expect(short("0x70997970C51812dc3A010C7d01b50e0d17dc79C8")).toBe("0x7099…79C8");
  });
});

describe("signing", () => {
  it("composes the sign-in message exactly as opentab verifies it", () => {
    const text = siweMessage({
      domain: "127.0.0.1:8402",
      uri: "http://127.0.0.1:8402",
      address: "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
      chainId: 31337,
      nonce: "n0nce123",
      issuedAt: 1_764_000_000,
      expiresAt: 1_764_000_600,
    });
    expect(text).toBe(
      "127.0.0.1:8402 wants you to sign in with your Ethereum account:\n" +
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8\n\n" +
        "Sign in to opentab to manage your session keys.\n\n" +
        "URI: http://127.0.0.1:8402\nVersion: 1\nChain ID: 31337\nNonce: n0nce123\n" +
        "Issued At: 2025-11-24T16:00:00Z\nExpiration Time: 2025-11-24T16:10:00Z",
    );
  });

  it("hands viem typed data without EIP712Domain and with bigint integers", () => {
    const typed = toViemTypedData({
      domain: { name: "opentab", version: "1", chainId: 31337, verifyingContract: "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512" },
      types: {
        EIP712Domain: [{ name: "name", type: "string" }],
        FreezeSessionKey: [
          { name: "sessionKey", type: "address" },
          { name: "nonce", type: "uint256" },
          { name: "deadline", type: "uint256" },
        ],
      },
      primaryType: "FreezeSessionKey",
      message: { sessionKey: "0x00000000000000000000000000000000000000aa", nonce: "7", deadline: 1_800_000_000 },
    });
    expect(Object.keys(typed.types)).toEqual(["FreezeSessionKey"]);
    expect(typed.message).toEqual({ sessionKey: "0x00000000000000000000000000000000000000aa", nonce: 7n, deadline: 1_800_000_000n });
  });
});
