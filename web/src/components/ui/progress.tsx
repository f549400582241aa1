import * as React from "react";
import { cn } from "@/lib/utils";

/** A progress bar of one or more stacked segments (percent of the whole each). */
function Progress({
  segments,
  label,
  className,
  ...props
}: React.ComponentProps<"div"> & { segments: { value: number; className?: string; title?: string }[]; label: string }) {
  const total = Math.min(100, segments.reduce((sum, s) => sum + s.value, 0));
  return (
    <div
      role="progressbar"
      aria-label={label}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={Math.round(total * 100) / 100}
      data-slot="progress"
      className={cn("bg-secondary relative flex h-2.5 w-full overflow-hidden rounded-full", className)}
      {...props}
    >
      {segments.map((s, i) => (
        <div
          key={i}
          title={s.title}
          className={cn("h-full transition-all", s.className ?? "bg-primary")}
          style={{ width: `${Math.max(0, Math.min(100, s.value))}%` }}
        />
      ))}
    </div>
  );
}

export { Progress };
