/** Amounts and times for people. Amounts stay bigint base units (6 decimals) until shown. */

const UNITS = 1_000_000n;

/** `12500000` → `12.5`. */
export function usdc(baseUnits: string | bigint | number): string {
  const value = BigInt(baseUnits);
  const whole = value / UNITS;
  const frac = (value % UNITS).toString().padStart(6, "0").replace(/0+$/, "");
  return frac ? `${whole}.${frac}` : whole.toString();
}

/** Parses what a person typed (`25`, `0.5`, `$1.25`) into base units, or says what is wrong.
 * Zero is refused unless `allowZero` (a threshold may be 0; a limit may not). */
export function parseUsdc(
  text: string,
  { allowZero = false }: { allowZero?: boolean } = {},
): { ok: true; value: bigint } | { ok: false; error: string } {
  const trimmed = text.trim().replace(/^\$/, "");
  if (trimmed === "") return { ok: false, error: "Enter an amount in USDC, like 25 or 0.5." };
  const match = /^(\d+)(?:\.(\d+))?$/.exec(trimmed);
  if (!match) return { ok: false, error: "Use digits and at most one decimal point, like 25 or 0.5." };
  if ((match[2] ?? "").length > 6) return { ok: false, error: "USDC has 6 decimals at most." };
  const value = BigInt(match[1]!) * UNITS + BigInt((match[2] ?? "").padEnd(6, "0"));
  if (value === 0n && !allowZero) return { ok: false, error: "The amount must be more than zero." };
  return { ok: true, value };
}

/** An amount the API sent as base units (a decimal string or a number) for people: `0.002 USDC`.
 * Anything that is not a whole number of base units is shown as it came. */
export function usdcAmount(baseUnits: string | number): string {
  try {
    return `${usdc(typeof baseUnits === "number" ? BigInt(baseUnits) : baseUnits.trim())} USDC`;
  } catch {
    return String(baseUnits);
  }
}

/** `in 6d 23h`, `3m ago`, `just now`. */
export function relative(at: number, now: number = Date.now() / 1000): string {
  const delta = Math.round(at - now);
  const span = Math.abs(delta);
  if (span < 45) return "just now";
  const units: [number, string][] = [
    [86_400, "d"],
    [3_600, "h"],
    [60, "m"],
  ];
  const parts: string[] = [];
  let rest = span;
  for (const [size, name] of units) {
    if (rest >= size && parts.length < 2) {
      parts.push(`${Math.floor(rest / size)}${name}`);
      rest %= size;
    }
  }
  const text = parts.join(" ") || `${span}s`;
  return delta >= 0 ? `in ${text}` : `${text} ago`;
}

/** `2026-11-24 22:31 UTC`. */
export function utc(at: number): string {
  return new Date(at * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

/** `0x1234…abcd`. */
export function short(hex: string): string {
  return hex.length > 12 ? `${hex.slice(0, 6)}…${hex.slice(-4)}` : hex;
}

/** A countdown for a person: `1d 2h`, `3h 05m`, `4m 09s`, `12s`, `1d`, `15m` (0 and below: `0s`). */
export function countdown(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds));
  const pad = (n: number) => n.toString().padStart(2, "0");
  const two = (big: string, small: number, smallText: string) => (small === 0 ? big : `${big} ${smallText}`);
  if (s >= 86_400) {
    const h = Math.floor((s % 86_400) / 3_600);
    return two(`${Math.floor(s / 86_400)}d`, h, `${h}h`);
  }
  if (s >= 3_600) {
    const m = Math.floor((s % 3_600) / 60);
    return two(`${Math.floor(s / 3_600)}h`, m, `${pad(m)}m`);
  }
  if (s >= 60) return two(`${Math.floor(s / 60)}m`, s % 60, `${pad(s % 60)}s`);
  return `${s}s`;
}
