import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { useState } from "react";
import { SWRConfig } from "swr";
import { afterEach, describe, expect, it, vi } from "vitest";
import { KeyDetailView } from "@/components/KeyDetailView";
import { MessageLine, type Message } from "@/components/Message";
import { DecisionPanel } from "@/components/RuleDecision";
import { RuleSettingsCard, parseRoutes } from "@/components/RuleSettings";
import type { KeyDetail, KeyView, RuleAlert, RuleSettings, RulesView } from "@/lib/api";
import { parseUsdc } from "@/lib/format";
import { changeDetailText, freezingAlert, settingPhrase, sourceOf, wouldNotFireText } from "@/lib/rules";
import type { Wallet } from "@/lib/wallet";

const now = Math.floor(Date.now() / 1000);

const frozen: KeyView = {
  address: "0xbee561ccf43deda33c4a5cdbabb245b2b9fa1b77",
  owner: "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
  payee: "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
  status: "frozen",
  limit: "50000000",
  validAfter: now - 60,
  validUntil: now + 7 * 86_400,
  frozenAt: now - 30,
  revokedAt: null,
  deletedAt: null,
  usage: { served: "8000", settled: "0", pending: "8000", remaining: "49992000", percentUsed: 0 },
  createdAt: now - 3_600,
  lastActivityAt: now - 30,
};
const path = `/api/session-keys/${frozen.address}`;

const rateAlert: RuleAlert = {
  rule: "rate",
  mode: "enforce",
  reason: "4 calls in the last minute, more than 3",
  froze: true,
  firedAt: now - 30,
  recoveredAt: null,
  inputs: { charge: "2000", callsBefore: 3, servedBefore: "6000", callsLastMinute: 4, limit: "50000000", servedAfter: 8000, route: "POST /v1/chat/completions" },
  threshold: { setting: "callsPerMinute", value: 3 },
  wouldNotFire: { setting: "callsPerMinute", value: 4 },
};

const seed: RuleSettings = {
  spikeMultiple: 10,
  spikeMode: "enforce",
  spikeByRoute: false,
  spikeIgnoreRoutes: [],
  spikeIgnoreUpTo: "0",
  callsPerMinute: 100,
  rateMode: "enforce",
  lowBalancePercent: 10,
  lowBalanceMode: "enforce",
};
const rulesView = (over: Partial<RulesView> = {}): RulesView => ({
  effective: { ...seed, spikeMultiple: 20, lowBalancePercent: 5 },
  seed,
  owner: { lowBalancePercent: 5 },
  key: { spikeMultiple: 20 },
  history: [{ at: now - 600, actor: frozen.owner, action: "key_rules_set", detail: '{"spikeMultiple":20}' }],
  ...over,
});

const problem = (status: number, body: object) =>
  new Response(JSON.stringify({ status, ...body }), { status, headers: { "content-type": "application/problem+json" } });

/** The API as `routes` has it (`METHOD path` → answer); anything else is a test failure. */
function serve(routes: Record<string, (init?: RequestInit) => Response>) {
  const fetchSpy = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const route = `${init?.method ?? "GET"} ${String(input)}`;
    const answer = routes[route];
    if (!answer) throw new Error(`unexpected request ${route}`);
    return answer(init);
  });
  vi.stubGlobal("fetch", fetchSpy);
  return fetchSpy;
}
const bodiesOf = (spy: ReturnType<typeof serve>, route: string) =>
  spy.mock.calls.filter(([url, init]) => `${init?.method ?? "GET"} ${String(url)}` === route).map(([, init]) => JSON.parse(String(init?.body)));

/** A page with the message line, as App has it. */
function WithMessages({ children }: { children: (onMessage: (m: Message) => void) => React.ReactNode }) {
  const [message, setMessage] = useState<Message | null>(null);
  return (
    <>
      {message && <MessageLine message={message} onDismiss={() => setMessage(null)} />}
      {children(setMessage)}
    </>
  );
}
const fresh = (ui: React.ReactNode) => render(<SWRConfig value={{ provider: () => new Map(), dedupingInterval: 0 }}>{ui}</SWRConfig>);

afterEach(() => vi.unstubAllGlobals());

describe("the decision: why a key was frozen", () => {
  it("words the setting in force and the one that would not have fired, for people", () => {
    expect(wouldNotFireText({ setting: "callsPerMinute", value: 4 })).toBe("A limit of 4 calls a minute would not have fired.");
    expect(wouldNotFireText({ setting: "callsPerMinute", value: 1 })).toBe("A limit of 1 call a minute would not have fired.");
    expect(wouldNotFireText({ setting: "spikeMultiple", value: 27 })).toBe("A spike multiple of 27× would not have fired.");
    expect(wouldNotFireText({ setting: "lowBalancePercent", value: 4 })).toBe("A low-balance threshold of 4% would not have fired.");
    expect(wouldNotFireText({ setting: "spikeIgnoreUpTo", value: "50000" })).toBe("Ignoring charges up to 0.05 USDC would not have fired.");
    // A spike against an average of zero: no multiple would have let it through.
    expect(wouldNotFireText(null, { setting: "spikeMultiple", value: 10 })).toBe("No spike multiple would have kept it from firing.");
    expect(settingPhrase({ setting: "spikeMultiple", value: 10 })).toBe("a spike multiple of 10×");
  });

  it("finds the open alert that froze a frozen key, and none for a key that is not frozen", () => {
    const older: RuleAlert = { ...rateAlert, rule: "spike", firedAt: now - 900, recoveredAt: now - 800 };
    const lowBalance: RuleAlert = { ...rateAlert, rule: "low_balance", froze: false, firedAt: now - 10 };
    const detail: KeyDetail = { ...frozen, settlements: [], alerts: [lowBalance, rateAlert, older] };
    expect(freezingAlert(detail)).toBe(rateAlert);
    expect(freezingAlert({ ...detail, status: "active" })).toBeUndefined();
    expect(freezingAlert({ ...detail, alerts: [older] })).toBeUndefined();
  });

  it("shows the rule, what it saw, the setting in force and what would not have fired", () => {
    fresh(<DecisionPanel keyView={frozen} alert={rateAlert} wallet={() => Promise.reject(new Error("unused"))} onMessage={() => undefined} />);
    const panel = screen.getByRole("region", { name: "Why this key was frozen" });
    expect(within(panel).getByTestId("decision-rule")).toHaveTextContent("Too many calls in a minute");
    expect(panel).toHaveTextContent("4 calls in the last minute, more than 3");
    expect(within(panel).getByTestId("seen-callsLastMinute")).toHaveTextContent("4");
    expect(within(panel).getByTestId("seen-charge")).toHaveTextContent("0.002 USDC");
    expect(within(panel).getByTestId("seen-servedAfter")).toHaveTextContent("0.008 USDC");
    expect(within(panel).getByTestId("seen-route")).toHaveTextContent("POST /v1/chat/completions");
    expect(within(panel).queryByTestId("seen-average")).toBeNull();
    expect(within(panel).getByTestId("decision-threshold")).toHaveTextContent("In force: a limit of 3 calls a minute.");
    expect(within(panel).getByTestId("decision-would-not-fire")).toHaveTextContent("A limit of 4 calls a minute would not have fired.");
    expect(within(panel).getByRole("button", { name: "Unfreeze and switch the rate rule to shadow" })).toBeEnabled();
  });

  it("unfreezes with shadowRule after a confirmation that says what happens", async () => {
    const typedData = {
      domain: { name: "SessionKeyValidator", version: "1", chainId: 31337, verifyingContract: "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512" },
      types: { Unfreeze: [{ name: "nonce", type: "uint256" }] },
      primaryType: "Unfreeze",
      message: { nonce: "7", deadline: now + 600 },
    };
    const unfrozen = { ...frozen, status: "active", frozenAt: null };
    const spy = serve({
      [`GET ${path}/unfreeze`]: () => Response.json(typedData),
      [`POST ${path}/unfreeze`]: () => Response.json({ key: unfrozen, txHash: `0x${"a".repeat(64)}`, txStatus: "mined" }),
      "GET /api/session-keys": () => Response.json([unfrozen]),
      [`GET ${path}`]: () => Response.json({ ...unfrozen, settlements: [], alerts: [] }),
    });
    const signature = `0x${"1".repeat(130)}` as const;
    const wallet: Wallet = { kind: "dev", address: frozen.owner, signMessage: vi.fn(), signTypedData: vi.fn(async () => signature), clients: vi.fn() };
    const user = userEvent.setup();
    fresh(
      <WithMessages>
        {(onMessage) => <DecisionPanel keyView={frozen} alert={rateAlert} wallet={async () => wallet} onMessage={onMessage} />}
      </WithMessages>,
    );
    await user.click(screen.getByRole("button", { name: "Unfreeze and switch the rate rule to shadow" }));
    const dialog = screen.getByRole("dialog", { name: "Unfreeze and switch the rate rule to shadow?" });
    expect(dialog).toHaveTextContent("The key is unfrozen");
    expect(dialog).toHaveTextContent("the rate rule only alerts for this key");
    expect(dialog).toHaveTextContent("recorded");
    await user.click(within(dialog).getByRole("button", { name: "Unfreeze and switch to shadow" }));
    expect(await screen.findByTestId("message")).toHaveTextContent("Key unfrozen (transaction mined). The rate rule now only alerts for this key.");
    expect(bodiesOf(spy, `POST ${path}/unfreeze`)).toEqual([{ nonce: "7", deadline: now + 600, signature, shadowRule: "rate" }]);
  });

  it("puts what each alert saw and the setting in force in the alerts list", async () => {
    const spike: RuleAlert = {
      rule: "spike",
      mode: "shadow",
      reason: "a charge of 1 USDC is more than 10× the key's average of 0 USDC",
      froze: false,
      firedAt: now - 900,
      recoveredAt: now - 800,
      inputs: { charge: "1000000", average: "0" },
      threshold: { setting: "spikeMultiple", value: 10 },
      wouldNotFire: null,
    };
    const active: KeyDetail = { ...frozen, status: "active", frozenAt: null, settlements: [], alerts: [spike] };
    serve({
      "GET /api/tabs": () => new Response("{}", { status: 401 }),
      [`GET ${path}`]: () => Response.json(active),
      [`GET ${path}/rules`]: () => Response.json(rulesView()),
    });
    fresh(<KeyDetailView address={frozen.address} wallet={() => Promise.reject(new Error("unused"))} onBack={() => undefined} onMessage={() => undefined} />);
    const entry = await screen.findByTestId("alert");
    const numbers = within(entry).getByTestId("alert-numbers");
    expect(numbers).toHaveTextContent("This charge:1 USDC");
    expect(numbers).toHaveTextContent("Average charge:0 USDC");
    expect(numbers).toHaveTextContent("In force: a spike multiple of 10×. No spike multiple would have kept it from firing.");
    // Not frozen: no decision panel.
    expect(screen.queryByRole("region", { name: "Why this key was frozen" })).toBeNull();
  });
});

describe("the rule settings form", () => {
  it("shows what is in force and where it comes from", async () => {
    serve({ [`GET ${path}/rules`]: () => Response.json(rulesView()) });
    fresh(<RuleSettingsCard address={frozen.address} onMessage={() => undefined} />);
    expect(await screen.findByTestId("effective-spikeMultiple")).toHaveTextContent("In force: 20×from key");
    expect(screen.getByTestId("effective-lowBalancePercent")).toHaveTextContent("In force: 5%from your defaults");
    expect(screen.getByTestId("effective-callsPerMinute")).toHaveTextContent("In force: 100from seed");
    // Inherited fields show the inherited value, disabled; overridden ones are editable.
    expect(screen.getByLabelText("Calls per minute")).toBeDisabled();
    expect(screen.getByLabelText("Calls per minute")).toHaveValue("100");
    expect(screen.getByRole("checkbox", { name: "Inherit calls per minute" })).toBeChecked();
    expect(screen.getByLabelText("Spike multiple")).toBeEnabled();
    expect(screen.getByLabelText("Spike multiple")).toHaveValue("20");
    expect(screen.getByLabelText("Low-balance percent")).toHaveValue("5");
    // The history, newest first, for people.
    expect(screen.getByTestId("rule-change")).toHaveTextContent("key rules set");
    expect(screen.getByTestId("rule-change")).toHaveTextContent("spike multiple 20×");
  });

  it("sends only the overridden fields, in the API's terms, and says it saved", async () => {
    const saved = rulesView({
      key: { spikeMultiple: 20, callsPerMinute: 3, rateMode: "enforce", spikeIgnoreUpTo: "50000", spikeIgnoreRoutes: ["POST /v1/images", "GET /v1/x"] },
    });
    const spy = serve({
      [`GET ${path}/rules`]: () => Response.json(rulesView()),
      [`PUT ${path}/rules`]: () => Response.json(saved),
    });
    const user = userEvent.setup();
    fresh(<WithMessages>{(onMessage) => <RuleSettingsCard address={frozen.address} onMessage={onMessage} />}</WithMessages>);
    await user.click(await screen.findByRole("checkbox", { name: "Inherit calls per minute" }));
    await user.clear(screen.getByLabelText("Calls per minute"));
    await user.type(screen.getByLabelText("Calls per minute"), "3");
    await user.click(screen.getByRole("checkbox", { name: "Inherit rate mode" }));
    await user.selectOptions(screen.getByLabelText("Rate mode"), "enforce");
    await user.click(screen.getByRole("checkbox", { name: "Inherit ignore charges up to" }));
    await user.clear(screen.getByLabelText("Ignore charges up to (USDC)"));
    await user.type(screen.getByLabelText("Ignore charges up to (USDC)"), "0.05");
    await user.click(screen.getByRole("checkbox", { name: "Inherit routes the spike rule ignores" }));
    await user.type(screen.getByLabelText("Routes the spike rule ignores"), "POST /v1/images, GET  /v1/x{enter}");
    // Overridden, then left to inherit again: not sent.
    await user.click(screen.getByRole("checkbox", { name: "Inherit low-balance mode" }));
    await user.selectOptions(screen.getByLabelText("Low-balance mode"), "off");
    await user.click(screen.getByRole("checkbox", { name: "Inherit low-balance mode" }));
    expect(screen.getByLabelText("Low-balance mode")).toHaveValue("enforce");
    await user.click(screen.getByRole("button", { name: "Save rule settings" }));
    await waitFor(() => expect(bodiesOf(spy, `PUT ${path}/rules`)).toHaveLength(1));
    // The key's existing override stays; everything else inherits (absent, not null).
    expect(bodiesOf(spy, `PUT ${path}/rules`)[0]).toEqual({
      spikeMultiple: 20,
      spikeIgnoreRoutes: ["POST /v1/images", "GET /v1/x"],
      spikeIgnoreUpTo: "50000",
      callsPerMinute: 3,
      rateMode: "enforce",
    });
    expect(await screen.findByTestId("message")).toHaveTextContent(
      "Rule settings saved: this key overrides spike multiple, routes the spike rule ignores, ignore charges up to, calls per minute, rate mode.",
    );
    await waitFor(() => expect(screen.getByTestId("effective-callsPerMinute")).toHaveTextContent("from key"));
  });

  it("offers a rate fitted to the key's busiest minute, and uses it on request", async () => {
    const spy = serve({
      [`GET ${path}/rules`]: () => Response.json({ ...rulesView(), suggestion: { callsPerMinute: 60, busiestMinute: 40 } }),
      [`PUT ${path}/rules`]: () => Response.json(rulesView({ key: { spikeMultiple: 20, callsPerMinute: 60 } })),
    });
    const user = userEvent.setup();
    fresh(<RuleSettingsCard address={frozen.address} onMessage={() => undefined} />);
    expect(await screen.findByTestId("rate-suggestion")).toHaveTextContent(
      "Suggested: 60, half as many again as this key's busiest minute in the last 24 hours (40 calls).",
    );
    await user.click(screen.getByRole("button", { name: "Use 60" }));
    expect(screen.getByRole("checkbox", { name: "Inherit calls per minute" })).not.toBeChecked();
    expect(screen.getByLabelText("Calls per minute")).toHaveValue("60");
    await user.click(screen.getByRole("button", { name: "Save rule settings" }));
    await waitFor(() => expect(bodiesOf(spy, `PUT ${path}/rules`)).toEqual([{ spikeMultiple: 20, callsPerMinute: 60 }]));
  });

  it("suggests nothing for a key with no recent traffic", async () => {
    serve({ [`GET ${path}/rules`]: () => Response.json(rulesView()) });
    fresh(<RuleSettingsCard address={frozen.address} onMessage={() => undefined} />);
    await screen.findByTestId("effective-callsPerMinute");
    expect(screen.queryByTestId("rate-suggestion")).toBeNull();
  });

  it("checks the fields first and sends nothing while one is wrong", async () => {
    const spy = serve({ [`GET ${path}/rules`]: () => Response.json(rulesView()) });
    const user = userEvent.setup();
    fresh(<RuleSettingsCard address={frozen.address} onMessage={() => undefined} />);
    await user.click(await screen.findByRole("checkbox", { name: "Inherit calls per minute" }));
    await user.clear(screen.getByLabelText("Calls per minute"));
    await user.type(screen.getByLabelText("Calls per minute"), "2.5");
    await user.click(screen.getByRole("button", { name: "Save rule settings" }));
    expect(screen.getByLabelText("Calls per minute")).toHaveAttribute("aria-invalid", "true");
    expect(screen.getByText("Enter a whole number of calls, like 100.")).toBeInTheDocument();
    expect(spy.mock.calls.filter(([, init]) => init?.method === "PUT")).toEqual([]);
  });

  it("shows the server's detail when it refuses with a 400, and marks the field it names", async () => {
    const detail = "callsPerMinute must be between 1 and 100000";
    serve({
      [`GET ${path}/rules`]: () => Response.json(rulesView()),
      [`PUT ${path}/rules`]: () => problem(400, { code: "invalid_rules", detail, field: "callsPerMinute" }),
    });
    const messages: Message[] = [];
    const user = userEvent.setup();
    fresh(<RuleSettingsCard address={frozen.address} onMessage={(m) => messages.push(m)} />);
    await user.click(await screen.findByRole("checkbox", { name: "Inherit calls per minute" }));
    await user.clear(screen.getByLabelText("Calls per minute"));
    await user.type(screen.getByLabelText("Calls per minute"), "999999");
    await user.click(screen.getByRole("button", { name: "Save rule settings" }));
    const failure = await screen.findByTestId("rules-failure");
    expect(failure).toHaveTextContent("The rule settings were not saved");
    expect(failure).toHaveTextContent(detail);
    expect(screen.getByLabelText("Calls per minute")).toHaveAttribute("aria-invalid", "true");
    expect(screen.getByLabelText("Calls per minute")).toHaveValue("999999");
    expect(messages).toEqual([]);
  });
});

describe("rule helpers", () => {
  it("reads routes one per line or comma separated", () => {
    expect(parseRoutes("POST /v1/images\n GET /v1/x ,\n\n")).toEqual(["POST /v1/images", "GET /v1/x"]);
    expect(parseRoutes("")).toEqual([]);
  });

  it("take a key's override over the owner's, over the seed's (null inherits)", () => {
    const view = { owner: { callsPerMinute: 50, rateMode: null }, key: { callsPerMinute: 3 } };
    expect(sourceOf(view, "callsPerMinute")).toBe("key");
    expect(sourceOf({ ...view, key: {} }, "callsPerMinute")).toBe("owner");
    expect(sourceOf(view, "rateMode")).toBe("seed");
  });

  it("parse a zero threshold where one may be zero", () => {
    expect(parseUsdc("0", { allowZero: true })).toEqual({ ok: true, value: 0n });
    expect(parseUsdc("0")).toMatchObject({ ok: false });
  });

  it("say what an audited change set", () => {
    expect(changeDetailText('{"rateMode":"shadow","callsPerMinute":null,"reason":"unfreeze"}')).toBe(
      "rate mode shadow, calls per minute inherited, reason unfreeze",
    );
    expect(changeDetailText("not json")).toBe("not json");
  });
});
