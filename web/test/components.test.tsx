import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { useState } from "react";
import useSWR, { SWRConfig } from "swr";
import { afterEach, describe, expect, it, vi } from "vitest";
import { CreateKey, validateCreate, type CreateForm } from "@/components/CreateKey";
import { guardianText } from "@/components/TabsPanel";
import { KeyActions } from "@/components/KeyActions";
import { KeyCard } from "@/components/KeyList";
import { MessageLine, type Message } from "@/components/Message";
import { ApiError, fetcher, retryAfterSeconds, type KeyView, type Tabs } from "@/lib/api";
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
    // Only the tabs were read (for the empty-tab hint): nothing was sent.
    expect(fetchSpy.mock.calls.filter(([url]) => url !== "/api/tabs")).toEqual([]);
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

describe("a tab with too little for opentab to relay", () => {
  const servicePayee = key.payee;
  const detail =
    "opentab relays key creations and unfreezes for owners whose tab holds at least 1 USDC free; yours holds 0.5 USDC: " +
    `deposit to your tab with ${servicePayee} first`;
  const tabsHolding = (available: string, balance = available): Tabs => ({
    owner: key.owner,
    validator: "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512",
    usdc: "0x5fbdb2315678afecb367f032d93f642f64180aa3",
    chainId: 31337,
    grace: 86_400,
    payee: servicePayee,
    guardian: null,
    ruleGuardian: null,
    tabs: [
      {
        payee: servicePayee,
        balance,
        available,
        pendingWithdrawal: balance === available ? null : String(BigInt(balance) - BigInt(available)),
        withdrawalReadyAt: balance === available ? null : now + 3_600,
        keys: [],
      },
    ],
  });
  const problem = (status: number, body: object, headers: Record<string, string> = {}) =>
    new Response(JSON.stringify({ status, ...body }), { status, headers: { "content-type": "application/problem+json", ...headers } });
  const typedData = {
    domain: { name: "SessionKeyValidator", version: "1", chainId: 31337, verifyingContract: "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512" },
    types: { Unfreeze: [{ name: "nonce", type: "uint256" }] },
    primaryType: "Unfreeze",
    message: { nonce: "7", deadline: now + 600 },
  };
  /** The API as `routes` has it (`METHOD path` → answer); anything else is a test failure. */
  function serve(routes: Record<string, () => Response>) {
    const fetchSpy = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
      const route = `${init?.method ?? "GET"} ${String(input)}`;
      const answer = routes[route];
      if (!answer) throw new Error(`unexpected request ${route}`);
      return answer();
    });
    vi.stubGlobal("fetch", fetchSpy);
    return fetchSpy;
  }
  const signer = (): Wallet => ({
    kind: "dev",
    address: key.owner,
    signMessage: vi.fn(),
    signTypedData: vi.fn(async () => `0x${"1".repeat(130)}` as const),
    clients: vi.fn(),
  });
  const createKey = async (wallet: Wallet) => {
    const user = userEvent.setup();
    fresh(<CreateKey wallet={async () => wallet} onDone={() => undefined} onCancel={() => undefined} />);
    await user.type(screen.getByLabelText("Spend limit (USDC)"), "2");
    await user.click(screen.getByRole("button", { name: "Create key" }));
  };

  it("create: the server's 402 tab_unfunded shows its detail and a link to this service's tab's deposit form", async () => {
    // The tab holds 0.5 USDC: nothing is said up front (the UI does not know the minimum); the server refuses.
    const fetchSpy = serve({
      "GET /api/tabs": () => Response.json(tabsHolding("500000")),
      "POST /api/session-keys/prepare": () => Response.json({ sessionKey: key.address, privateKey: null, typedData }),
      "POST /api/session-keys": () => problem(402, { code: "tab_unfunded", detail }),
    });
    const wallet = signer();
    await createKey(wallet);
    const failure = await screen.findByTestId("create-failure");
    expect(failure).toHaveTextContent("The key was not created");
    expect(failure).toHaveTextContent(detail);
    expect(within(failure).getByRole("link", { name: "Deposit to this tab" })).toHaveAttribute("href", `#/deposit/${servicePayee}`);
    expect(screen.queryByTestId("create-tab-empty")).toBeNull();
    expect(wallet.signTypedData).toHaveBeenCalledOnce();
    // The refusal reloads the tabs, so what the form says next is current.
    await waitFor(() => expect(fetchSpy.mock.calls.filter(([url]) => url === "/api/tabs")).toHaveLength(2));
  });

  it("create: a tab with nothing free is flagged up front with the deposit link, and the form still asks the server", async () => {
    // 2 USDC deposited, all of it asked back: nothing free.
    serve({
      "GET /api/tabs": () => Response.json(tabsHolding("0", "2000000")),
      "POST /api/session-keys/prepare": () => Response.json({ sessionKey: key.address, privateKey: null, typedData }),
      "POST /api/session-keys": () => problem(402, { code: "tab_unfunded", detail }),
    });
    const user = userEvent.setup();
    fresh(<CreateKey wallet={async () => signer()} onDone={() => undefined} onCancel={() => undefined} />);
    const hint = await screen.findByTestId("create-tab-empty");
    expect(hint).toHaveTextContent("Your tab with this service holds 0 USDC");
    expect(hint).toHaveTextContent("deposit to it first");
    expect(within(hint).getByRole("link", { name: "Deposit to this tab" })).toHaveAttribute("href", `#/deposit/${servicePayee}`);
    expect(screen.getByRole("button", { name: "Create key" })).toBeEnabled();
    // Submitted anyway: the server's answer replaces the hint (one deposit link, not two).
    await user.type(screen.getByLabelText("Spend limit (USDC)"), "2");
    await user.click(screen.getByRole("button", { name: "Create key" }));
    expect(await screen.findByTestId("create-failure")).toHaveTextContent(detail);
    expect(screen.queryByTestId("create-tab-empty")).toBeNull();
    expect(screen.getAllByRole("link", { name: "Deposit to this tab" })).toHaveLength(1);
  });

  it("create: a funded tab gets no hint", async () => {
    serve({ "GET /api/tabs": () => Response.json(tabsHolding("1000000")) });
    // Beside the form, what the page has of the tabs: once they are in, the form has them too.
    function Loaded() {
      const { data } = useSWR<Tabs>("/api/tabs", fetcher);
      return data ? <p data-testid="tabs-loaded" /> : null;
    }
    fresh(
      <>
        <Loaded />
        <CreateKey wallet={async () => signer()} onDone={() => undefined} onCancel={() => undefined} />
      </>,
    );
    await screen.findByTestId("tabs-loaded");
    expect(screen.queryByTestId("create-tab-empty")).toBeNull();
  });

  it("unfreeze: refused with tab_unfunded, the key goes back to frozen and the message shows the detail and the deposit link", async () => {
    const frozen: KeyView = { ...key, status: "frozen", frozenAt: now - 60 };
    const path = `/api/session-keys/${frozen.address}`;
    serve({
      [`GET ${path}/unfreeze`]: () => Response.json(typedData),
      [`POST ${path}/unfreeze`]: () => problem(402, { code: "tab_unfunded", detail }),
      "GET /api/session-keys": () => Response.json([frozen]),
      [`GET ${path}`]: () => Response.json(frozen),
    });
    const messages: Message[] = [];
    function Page() {
      const [message, setMessage] = useState<Message | null>(null);
      const { data } = useSWR<KeyView>(path, () => new Promise<KeyView>(() => undefined), { revalidateOnMount: false });
      return (
        <>
          <p data-testid="shown">{data?.status}</p>
          {message && <MessageLine message={message} onDismiss={() => setMessage(null)} />}
          <KeyActions
            keyView={frozen}
            wallet={async () => signer()}
            onDeleted={() => undefined}
            onMessage={(m) => (messages.push(m), setMessage(m))}
            servicePayee={servicePayee}
          />
        </>
      );
    }
    const user = userEvent.setup();
    render(
      <SWRConfig value={{ provider: () => new Map([[path, { data: frozen }]]) }}>
        <Page />
      </SWRConfig>,
    );
    await user.click(screen.getByRole("button", { name: "Unfreeze" }));
    await user.click(within(screen.getByRole("dialog")).getByRole("button", { name: "Unfreeze" }));
    const line = await screen.findByTestId("message");
    expect(line).toHaveTextContent(`Could not unfreeze the key: ${detail}`);
    const link = within(line).getByRole("link", { name: "Deposit to this tab" });
    expect(link).toHaveAttribute("href", `#/deposit/${servicePayee}`);
    expect(messages).toEqual([{ kind: "error", text: `Could not unfreeze the key: ${detail}`, depositTo: servicePayee }]);
    expect(screen.getByTestId("shown")).toHaveTextContent("frozen");
    // Following the link clears the message (the deposit form takes over).
    link.addEventListener("click", (e) => e.preventDefault());
    await user.click(link);
    expect(screen.queryByTestId("message")).toBeNull();
  });

  it("other refusals of an action get no deposit link", async () => {
    const frozen: KeyView = { ...key, status: "frozen", frozenAt: now - 60 };
    const path = `/api/session-keys/${frozen.address}`;
    serve({
      [`GET ${path}/unfreeze`]: () => Response.json(typedData),
      [`POST ${path}/unfreeze`]: () => problem(503, { code: "chain_unavailable", detail: "the chain cannot be reached" }),
      "GET /api/session-keys": () => Response.json([frozen]),
      [`GET ${path}`]: () => Response.json(frozen),
    });
    const messages: Message[] = [];
    const user = userEvent.setup();
    fresh(<KeyActions keyView={frozen} wallet={async () => signer()} onDeleted={() => undefined} onMessage={(m) => messages.push(m)} servicePayee={servicePayee} />);
    await user.click(screen.getByRole("button", { name: "Unfreeze" }));
    await user.click(within(screen.getByRole("dialog")).getByRole("button", { name: "Unfreeze" }));
    await waitFor(() => expect(messages).toEqual([{ kind: "error", text: "Could not unfreeze the key: the chain cannot be reached" }]));
  });
});

describe("a rate limit (429 rate_limited)", () => {
  it("says when to try again, from Retry-After, where the error shows (the create form)", async () => {
    vi.stubGlobal(
      "fetch",
      vi.fn(async (input: RequestInfo | URL) =>
        String(input) === "/api/tabs"
          ? new Response("{}", { status: 401 })
          : new Response(JSON.stringify({ code: "rate_limited", detail: "too many relayed actions just now; try again in 17 s", status: 429 }), {
              status: 429,
              headers: { "content-type": "application/problem+json", "retry-after": "17" },
            }),
      ),
    );
    const user = userEvent.setup();
    fresh(<CreateKey wallet={() => Promise.reject(new Error("unused"))} onDone={() => undefined} onCancel={() => undefined} />);
    await user.type(screen.getByLabelText("Spend limit (USDC)"), "2");
    await user.click(screen.getByRole("button", { name: "Create key" }));
    const failure = await screen.findByTestId("create-failure");
    expect(failure).toHaveTextContent("Too many requests just now; try again in 17 s.");
    expect(within(failure).queryByRole("link")).toBeNull();
  });

  it("reads Retry-After as seconds or an HTTP date, and keeps the server's detail", () => {
    const at = Date.parse("2026-11-25T12:00:00Z");
    expect(retryAfterSeconds("17")).toBe(17);
    expect(retryAfterSeconds(" 0 ")).toBe(0);
    expect(retryAfterSeconds("Wed, 25 Nov 2026 12:00:42 GMT", at)).toBe(42);
    expect(retryAfterSeconds("Wed, 25 Nov 2026 11:59:00 GMT", at)).toBe(0);
    expect(retryAfterSeconds(null)).toBeUndefined();
    expect(retryAfterSeconds("soon")).toBeUndefined();
    const limited = new ApiError(429, "rate_limited", "too many sign-ins just now; try again in 5 s", undefined, 5);
    expect(limited.message).toBe("Too many requests just now; try again in 5 s.");
    expect(limited.detail).toBe("too many sign-ins just now; try again in 5 s");
    expect(new ApiError(429, "rate_limited", "x").message).toBe("Too many requests just now; try again in a moment.");
    // Other 429s (the daily relay quota) say what the server says.
    expect(new ApiError(429, "relay_quota_exceeded", "opentab relayed 50 transactions", undefined, 60).message).toBe("opentab relayed 50 transactions");
  });
});
