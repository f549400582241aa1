import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import useSWR, { SWRConfig } from "swr";
import { afterEach, describe, expect, it, vi } from "vitest";
import { CreateKey, validateCreate, type CreateForm } from "@/components/CreateKey";
import { guardianText } from "@/components/TabsPanel";
import { KeyActions } from "@/components/KeyActions";
import { KeyCard } from "@/components/KeyList";
import type { KeyView } from "@/lib/api";
import type { Wallet } from "@/lib/wallet";

const now = Math.floor(Date.now() / 1000);

const key: KeyView = {
  address: "0xbee561ccf43deda33c4a5cdbabb245b2b9fa1b77",
  owner: "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
  payee: "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
  status: "active",
  limit: "5000000",
  validAfter: now - 60,
  validUntil: now + 7 * 86_400 + 30, // reads "in 7d" for the next 30 s
  frozenAt: null,
  revokedAt: null,
  deletedAt: null,
  usage: { served: "2000000", settled: "1500000", pending: "500000", remaining: "3000000", percentUsed: 40 },
  createdAt: now - 3_600,
  lastActivityAt: now - 120,
};

const fresh = (ui: React.ReactNode) => render(<SWRConfig value={{ provider: () => new Map(), dedupingInterval: 0 }}>{ui}</SWRConfig>);

afterEach(() => vi.unstubAllGlobals());

describe("KeyCard", () => {
  it("shows status, usage split into settled and pending, remaining, expiry and last activity", () => {
    fresh(<ul><KeyCard keyView={key} onOpen={() => undefined} /></ul>);
    expect(screen.getByTestId("status")).toHaveTextContent("active");
    const bar = screen.getByRole("progressbar", { name: "Used 2 of 5 USDC" });
    expect(bar).toHaveAttribute("aria-valuenow", "40");
    expect(screen.getByTestId("remaining")).toHaveTextContent("3 USDC");
    expect(screen.getByText(/settled 1.5/)).toBeInTheDocument();
    expect(screen.getByText("in 7d")).toBeInTheDocument();
    expect(screen.getByText("2m ago")).toBeInTheDocument();
  });
});

describe("the create form", () => {
  const form: CreateForm = { limit: "25", expiry: "7d", customExpiry: "", validAfter: "", source: "generate", address: "" };

  it("turns valid input into the API's terms", () => {
    const { request, errors } = validateCreate(form, 1_000);
    expect(errors).toEqual({});
    expect(request).toEqual({ limit: 25_000_000n, validUntil: 1_000 + 7 * 86_400, validAfter: undefined });
  });

  it("names each field that is wrong", () => {
    const { errors, request } = validateCreate(
      { ...form, limit: "abc", expiry: "custom", customExpiry: "2000-01-01T00:00", source: "address", address: "0x12" },
      now,
    );
    expect(request).toBeUndefined();
    expect(errors.limit).toMatch(/digits/);
    expect(errors.customExpiry).toMatch(/future/);
    expect(errors.address).toMatch(/40 hex/);
  });

  it("shows the messages beside their fields, marked invalid, and sends nothing", async () => {
    const fetchSpy = vi.fn();
    vi.stubGlobal("fetch", fetchSpy);
    const user = userEvent.setup();
    fresh(<CreateKey wallet={() => Promise.reject(new Error("unused"))} onDone={() => undefined} onCancel={() => undefined} />);
    await user.click(screen.getByRole("radio", { name: /paste its address/ }));
    await user.type(screen.getByLabelText("Session key address"), "0x0000000000000000000000000000000000000000");
    await user.click(screen.getByRole("button", { name: "Create key" }));
    expect(screen.getByLabelText("Spend limit (USDC)")).toHaveAttribute("aria-invalid", "true");
    expect(screen.getByText(/Enter an amount/)).toBeInTheDocument();
    expect(screen.getByText("The zero address cannot sign.")).toBeInTheDocument();
    expect(fetchSpy).not.toHaveBeenCalled();
  });
});

describe("key actions", () => {
  it("confirm first, show the change at once, and roll back with the reason if refused", async () => {
    // The server refuses to prepare the freeze, a moment later.
    let refuse: () => void = () => undefined;
    vi.stubGlobal(
      "fetch",
      vi.fn(
        () =>
          new Promise<Response>((resolve) => {
            refuse = () =>
              resolve(
                new Response(JSON.stringify({ code: "chain_unavailable", detail: "the chain cannot be reached" }), {
                  status: 503,
                  headers: { "content-type": "application/problem+json" },
                }),
              );
          }),
      ),
    );
    const wallet: Wallet = { kind: "dev", address: key.owner, signMessage: vi.fn(), signTypedData: vi.fn(), clients: vi.fn() };
    const messages: string[] = [];
    const path = `/api/session-keys/${key.address}`;
    // What the rest of the page shows: the key as the SWR cache has it.
    function Shown() {
      const { data } = useSWR<KeyView>(path, () => new Promise<KeyView>(() => undefined), { revalidateOnMount: false });
      return <p data-testid="shown">{data?.status}</p>;
    }
    const user = userEvent.setup();
    render(
      <SWRConfig value={{ provider: () => new Map([[path, { data: key }]]) }}>
        <Shown />
        <KeyActions keyView={key} wallet={async () => wallet} onDeleted={() => undefined} onMessage={(m) => messages.push(`${m.kind}: ${m.text}`)} />
      </SWRConfig>,
    );
    expect(screen.getByTestId("shown")).toHaveTextContent("active");
    await user.click(screen.getByRole("button", { name: "Freeze" }));
    const dialog = screen.getByRole("dialog");
    expect(within(dialog).getByText("Freeze this key?")).toBeInTheDocument();
    await user.click(within(dialog).getByRole("button", { name: "Freeze" }));
    await waitFor(() => expect(screen.getByTestId("shown")).toHaveTextContent("frozen"));
    refuse();
    await waitFor(() => expect(messages).toEqual(["error: Could not freeze the key: the chain cannot be reached"]));
    expect(screen.getByTestId("shown")).toHaveTextContent("active");
    expect(wallet.signTypedData).not.toHaveBeenCalled();
  });
});

describe("the tabs' guardian", () => {
  const rules = "0x90f79bf6eb2c4f870365e785982e1f101e93b906";
  it("says whether the rule engine can freeze on-chain, and how to let it", () => {
    // Addresses compare case-insensitively (checksummed or not).
    expect(guardianText({ guardian: "0x90F79bf6EB2c4f870365E785982E1f101E93b906", ruleGuardian: rules })).toContain("frozen on-chain too");
    expect(guardianText({ guardian: null, ruleGuardian: rules })).toContain("opentab tab guardian");
    expect(guardianText({ guardian: "0x1111111111111111111111111111111111111111", ruleGuardian: rules })).toMatch(/^0x1111.*may freeze/);
    expect(guardianText({ guardian: null, ruleGuardian: null })).toBe("none");
  });
});
