import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Abi } from "viem";
import { formatAbiItem } from "viem/utils";
import { describe, expect, it } from "vitest";
import { erc20Abi, validatorAbi } from "@/lib/contracts";

const artifacts = join(dirname(fileURLToPath(import.meta.url)), "../../contracts/artifacts");
const artifact = (name: string) => (JSON.parse(readFileSync(join(artifacts, `${name}.json`), "utf8")) as { abi: Abi }).abi;

/** `function deposit(address,uint256)`, `error ZeroAmount()`: what a selector is made of, and what it returns. */
const signatures = (abi: Abi) =>
  new Set(
    abi
      .filter((i) => i.type === "function" || i.type === "error")
      .map((i) => `${i.type} ${formatAbiItem(i)}` + ("outputs" in i ? ` -> (${i.outputs.map((o) => o.type).join(",")})` : "")),
  );

describe("the UI's contract fragments", () => {
  const validator = signatures(artifact("SessionKeyValidator"));
  const usdc = signatures(artifact("TestUSDC"));

  it("match the compiled contracts", () => {
    for (const item of signatures(validatorAbi)) expect(validator.has(item) || usdc.has(item), item).toBe(true);
    for (const item of signatures(erc20Abi)) expect(usdc.has(item), item).toBe(true);
  });

  it("know every error the validator and USDC revert with, so a revert decodes to its name", () => {
    const known = signatures(validatorAbi);
    const errors = [...validator, ...usdc].filter((i) => i.startsWith("error "));
    expect(errors).toContain("error WithdrawalNotReady(uint48)");
    for (const item of errors) expect(known.has(item), item).toBe(true);
  });
});
