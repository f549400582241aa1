import { Badge } from "@/components/ui/badge";
import type { KeyStatus } from "@/lib/api";

const LOOK: Record<KeyStatus, { label: string; variant: "success" | "secondary" | "destructive" | "warning" | "outline" }> = {
  active: { label: "active", variant: "success" },
  pending: { label: "pending", variant: "outline" },
  not_yet_valid: { label: "not yet valid", variant: "outline" },
  frozen: { label: "frozen", variant: "warning" },
  expired: { label: "expired", variant: "secondary" },
  revoked: { label: "revoked", variant: "destructive" },
};

export function StatusBadge({ status }: { status: KeyStatus }) {
  const look = LOOK[status] ?? { label: status, variant: "outline" as const };
  return (
    <Badge variant={look.variant} data-testid="status">
      {look.label}
    </Badge>
  );
}
