import { useEffect, useState } from "react";

/** Reads the latest block; whatever has `getBlock` (a viem public client). */
export interface BlockReader {
  getBlock(args: { blockTag: "latest" }): Promise<{ number: bigint | null; timestamp: bigint }>;
}

/**
 * The chain's clock, in unix seconds, ticking every second: a withdrawal opens by block
 * timestamps, not by this computer's clock (and a dev chain's clock can be moved forward).
 * The latest block is read every `everyMs` (and when `refresh` changes); how far the chain is
 * ahead of this computer is kept until a newer block says otherwise. An idle chain's latest
 * block is old, so the chain is never taken to be behind the computer's clock. Without a
 * reader (or while it fails), the computer's clock.
 */
export function useChainTime(
  reader: (() => Promise<BlockReader | null>) | null,
  refresh?: unknown,
  everyMs = 3_000,
): { now: number; source: "chain" | "clock" } {
  const [offset, setOffset] = useState<{ seconds: number; block: bigint | null } | null>(null);
  const [now, setNow] = useState(() => Date.now() / 1000);

  useEffect(() => {
    const tick = setInterval(() => setNow(Date.now() / 1000), 1_000);
    return () => clearInterval(tick);
  }, []);

  useEffect(() => {
    if (!reader) return;
    let stopped = false;
    let client: BlockReader | null | undefined;
    const sample = async () => {
      try {
        client ??= await reader();
        if (!client || stopped) return;
        const block = await client.getBlock({ blockTag: "latest" });
        if (stopped) return;
        const seconds = Math.max(0, Number(block.timestamp) - Date.now() / 1000);
        // The same block read again later looks further behind; the first reading was closer.
        setOffset((prev) => (prev && prev.block !== null && prev.block === block.number ? prev : { seconds, block: block.number }));
        setNow(Date.now() / 1000);
      } catch {
        // keep the last reading; the computer's clock if there is none
      }
    };
    void sample();
    const poll = setInterval(() => void sample(), everyMs);
    return () => {
      stopped = true;
      clearInterval(poll);
    };
  }, [reader, refresh, everyMs]);

  return offset ? { now: now + offset.seconds, source: "chain" } : { now, source: "clock" };
}
