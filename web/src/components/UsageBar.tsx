import { Progress } from "@/components/ui/progress";
import type { KeyView } from "@/lib/api";
import { usdc } from "@/lib/format";

/** Served of the limit, split into settled (on-chain) and pending (served, not settled yet). */
export function UsageBar({ keyView }: { keyView: KeyView }) {
  const limit = Number(BigInt(keyView.limit));
  const pct = (units: string) => (limit > 0 ? (Number(BigInt(units)) / limit) * 100 : 0);
  const { served, settled, pending } = keyView.usage;
  return (
    <div className="grid gap-1.5">
      <Progress
        label={`Used ${usdc(served)} of ${usdc(keyView.limit)} USDC`}
        segments={[
          { value: pct(settled), className: "bg-primary", title: `settled ${usdc(settled)} USDC` },
          { value: pct(pending), className: "bg-primary/40", title: `pending ${usdc(pending)} USDC` },
        ]}
      />
      <div className="text-muted-foreground flex flex-wrap justify-between gap-x-3 text-xs">
        <span data-testid="served">
          {usdc(served)} / {usdc(keyView.limit)} USDC used ({keyView.usage.percentUsed}%)
        </span>
        <span>
          <span className="bg-primary mr-1 inline-block size-2 rounded-full" aria-hidden />
          settled {usdc(settled)} · <span className="bg-primary/40 mr-1 inline-block size-2 rounded-full" aria-hidden />
          pending {usdc(pending)}
        </span>
      </div>
    </div>
  );
}
