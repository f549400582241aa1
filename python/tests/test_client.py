"""The paying client against a real `opentab dev` (its demo API), and hostile 402s (served by
httpx mock transports standing in for other servers) refused with typed errors, nothing signed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from opentab import (
    CapExceededError,
    OriginTrust,
    Payer,
    PaymentError,
    UnpayableError,
    UntrustedPaymentError,
    decode_header,
    encode_header,
    receipt_of,
    refusal_of,
)

from .conftest import Demo

PRICE = 2000  # the demo route: 0.002 USDC


@pytest.fixture(scope="module")
def totals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One totals file for every payer of the module's demo key: the gateway counts what the
    key served across tests, so every payer of it must continue the same total."""
    return tmp_path_factory.mktemp("client") / "totals.json"


def chat_url(dev: Demo) -> str:
    return dev.url + dev.route["path"]


def test_pays_the_demo_api_with_cumulative_vouchers(dev: Demo, totals: Path) -> None:
    payer = Payer(dev.session_key, "5", state_path=totals, trust=dev.trust())
    assert payer.address.lower() == dev.session_address.lower()
    start = payer.signed_total(dev.payee)
    with payer.client() as http:
        for i in range(1, 4):
            res = http.post(chat_url(dev), json=dev.route["exampleBody"])
            assert res.status_code == 200, res.text
            receipt = receipt_of(res)
            assert receipt is not None and receipt["success"] is True
            assert receipt["receipt"]["charged"] == str(PRICE)
            assert int(receipt["receipt"]["served"]) == start + i * PRICE
            assert receipt["payer"].lower() == dev.owner.lower()
    assert payer.signed_total(dev.payee) == start + 3 * PRICE
    saved = json.loads(totals.read_text())
    slot = f"{payer.address.lower()}->{dev.payee.lower()}"
    assert saved["totals"][slot] == str(start + 3 * PRICE)


def test_a_restarted_payer_continues_from_the_file(dev: Demo, totals: Path) -> None:
    before = json.loads(totals.read_text()) if totals.exists() else {}
    payer = Payer(dev.session_key, "5", state_path=totals, trust=dev.trust())
    start = payer.signed_total(dev.payee)
    assert before == {} or start > 0
    with payer.client() as http:
        res = http.post(chat_url(dev), json=dev.route["exampleBody"])
    assert res.status_code == 200
    assert int(receipt_of(res)["receipt"]["served"]) == start + PRICE  # type: ignore[index]


@pytest.mark.anyio
async def test_the_async_client_pays_too(dev: Demo, totals: Path) -> None:
    payer = Payer(dev.session_key, "5", state_path=totals, trust=dev.trust())
    start = payer.signed_total(dev.payee)
    async with payer.async_client() as http:
        res = await http.post(chat_url(dev), json=dev.route["exampleBody"])
        assert res.status_code == 200, res.text
        assert int(receipt_of(res)["receipt"]["served"]) == start + PRICE  # type: ignore[index]
    assert payer.signed_total(dev.payee) == start + PRICE


def test_a_counter_behind_the_gateway_is_refused_voucher_too_low(dev: Demo, tmp_path: Path) -> None:
    # A payer that forgot its total signs too little: the gateway's refusal reaches the caller.
    payer = Payer(dev.session_key, "5", state_path=tmp_path / "forgot.json", trust=dev.trust())
    with payer.client() as http:
        res = http.post(chat_url(dev), json=dev.route["exampleBody"])
    assert res.status_code == 402
    assert refusal_of(res) is not None and refusal_of(res)[0] == "voucher_too_low"  # type: ignore[index]


def test_unpriced_and_unpaid_calls_pass_through(dev: Demo) -> None:
    payer = Payer(dev.session_key, "5", trust=dev.trust())
    with payer.client() as http:
        assert http.get(dev.url + "/healthz").status_code == 200
    assert payer.signed_total(dev.payee) == 0


# --- hostile 402s ------------------------------------------------------------------------------

KEY = "0x" + "42" * 32
PAYEE = "0x" + "ab" * 20
VALIDATOR = "0x" + "cd" * 20
ORIGIN = "https://api.example.com"


def offer(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scheme": "session",
        "network": "eip155:31337",
        "amount": "2000",
        "asset": "0x" + "ef" * 20,
        "payTo": PAYEE,
        "maxTimeoutSeconds": 60,
        "extra": {"validator": VALIDATOR, "eip712": {"name": "opentab", "version": "1"}},
    }
    base.update(changes)
    return base


class Hostile:
    """A mock server answering 402 with `offers` (or `challenge`), 200 to a paid retry;
    records every payment header it was sent."""

    def __init__(self, *offers: dict[str, Any], redirect_to: str | None = None) -> None:
        self.offers = list(offers)
        self.redirect_to = redirect_to
        self.payments: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.redirect_to and request.url.path == "/start":
            return httpx.Response(307, headers={"location": self.redirect_to})
        payment = request.headers.get("payment-signature")
        if payment:
            self.payments.append(payment)
            return httpx.Response(200, text="served")
        challenge = {"x402Version": 2, "resource": {"url": str(request.url), "description": "", "mimeType": ""}, "accepts": self.offers}
        return httpx.Response(402, headers={"payment-required": encode_header(challenge)}, json=challenge)


def trusted(max_price: str = "0.01") -> dict[str, OriginTrust]:
    return {ORIGIN: OriginTrust(pay_to=PAYEE, networks="eip155:31337", validators=VALIDATOR, max_price=max_price)}


@pytest.mark.parametrize(
    ("hostile_offer", "code"),
    [
        (offer(payTo="0x" + "99" * 20), "untrusted_payee"),
        (offer(amount="50000000"), "price_above_max"),
        (offer(amount="10001"), "price_above_max"),
        (offer(network="eip155:137"), "untrusted_network"),
        (offer(extra={"validator": "0x" + "98" * 20, "eip712": {"name": "opentab", "version": "1"}}), "untrusted_validator"),
    ],
)
def test_hostile_402s_are_refused_with_typed_errors(tmp_path: Path, hostile_offer: dict[str, Any], code: str) -> None:
    state = tmp_path / "state.json"
    payer = Payer(KEY, "5", state_path=state, trust=trusted())
    server = Hostile(hostile_offer)
    with payer.client(transport=httpx.MockTransport(server)) as http, pytest.raises(UntrustedPaymentError) as refused:
        http.get(ORIGIN + "/v1/chat")
    assert refused.value.code == code
    assert refused.value.origin == ORIGIN
    assert server.payments == []
    assert payer.signed_total(hostile_offer["payTo"]) == 0
    assert not state.exists()


def test_an_untrusted_origin_is_refused(tmp_path: Path) -> None:
    payer = Payer(KEY, "5", trust=trusted())
    server = Hostile(offer())
    with payer.client(transport=httpx.MockTransport(server)) as http, pytest.raises(UntrustedPaymentError) as refused:
        http.get("https://evil.example.com/v1/chat")
    assert refused.value.code == "untrusted_origin"
    assert server.payments == []


@pytest.mark.anyio
async def test_the_async_client_refuses_the_same_way() -> None:
    payer = Payer(KEY, "5", trust=trusted())
    server = Hostile(offer(payTo="0x" + "99" * 20))
    async with payer.async_client(transport=httpx.MockTransport(server)) as http:
        with pytest.raises(UntrustedPaymentError) as refused:
            await http.get(ORIGIN + "/v1/chat")
    assert refused.value.code == "untrusted_payee"
    assert server.payments == []


def test_a_trusted_offer_among_hostile_ones_is_the_one_paid() -> None:
    payer = Payer(KEY, "5", trust=trusted())
    server = Hostile(offer(payTo="0x" + "99" * 20), offer())
    with payer.client(transport=httpx.MockTransport(server)) as http:
        assert http.get(ORIGIN + "/v1/chat").status_code == 200
    payment = decode_header(server.payments[0])
    assert payment["accepted"]["payTo"] == PAYEE
    assert payment["payload"]["cumulativeAmount"] == "2000"
    assert payer.signed_total(PAYEE) == 2000


def test_trust_on_first_use_pins_one_origin_payee_network_and_validator(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    payer = Payer(KEY, "5", state_path=state)
    first = Hostile(offer())
    with payer.client(transport=httpx.MockTransport(first)) as http:
        assert http.get(ORIGIN + "/v1/chat").status_code == 200
    assert json.loads(state.read_text())["pinned"]["origin"] == ORIGIN

    # A restarted payer keeps the pin.
    again = Payer(KEY, "5", state_path=state)
    for url, hostile_offer, code in [
        ("https://other.example.com/v1/chat", offer(), "untrusted_origin"),
        (ORIGIN + "/v1/chat", offer(payTo="0x" + "99" * 20), "untrusted_payee"),
        (ORIGIN + "/v1/chat", offer(network="eip155:1"), "untrusted_network"),
        (ORIGIN + "/v1/chat", offer(extra={"validator": "0x" + "98" * 20, "eip712": {"name": "x", "version": "1"}}), "untrusted_validator"),
        (ORIGIN + "/v1/chat", offer(amount="1000000"), "price_above_max"),
    ]:
        server = Hostile(hostile_offer)
        with again.client(transport=httpx.MockTransport(server)) as http, pytest.raises(UntrustedPaymentError) as refused:
            http.get(url)
        assert refused.value.code == code, url
        assert server.payments == []
    assert again.signed_total(PAYEE) == 2000


def test_a_402_reached_through_a_redirect_to_another_origin_is_refused() -> None:
    payer = Payer(KEY, "5")  # trust on first use: the redirect must not get pinned
    server = Hostile(offer(), redirect_to="https://evil.example.com/pay")
    with payer.client(transport=httpx.MockTransport(server), follow_redirects=True) as http, pytest.raises(UntrustedPaymentError) as refused:
        http.get(ORIGIN + "/start")
    assert refused.value.code == "untrusted_origin"
    assert server.payments == []


def test_a_redirect_answering_the_paid_retry_does_not_carry_the_voucher() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("payment-signature")))
        if request.url.path == "/v1/chat":
            if request.headers.get("payment-signature"):
                return httpx.Response(302, headers={"location": "https://elsewhere.example.com/x"})
            return Hostile(offer())(request)
        return httpx.Response(200)

    payer = Payer(KEY, "5", trust=trusted())
    with payer.client(transport=httpx.MockTransport(handler), follow_redirects=True) as http:
        assert http.get(ORIGIN + "/v1/chat").status_code == 200
    assert seen[-1] == ("https://elsewhere.example.com/x", None)


def test_the_cap_bounds_everything_signed(tmp_path: Path) -> None:
    payer = Payer(KEY, "0.005", trust=trusted())
    server = Hostile(offer())
    with payer.client(transport=httpx.MockTransport(server)) as http:
        assert http.get(ORIGIN + "/a").status_code == 200
        assert http.get(ORIGIN + "/b").status_code == 200
        with pytest.raises(CapExceededError) as refused:
            http.get(ORIGIN + "/c")
    assert refused.value.code == "cap_exceeded"
    assert len(server.payments) == 2
    assert payer.signed_total(PAYEE) == 4000


def test_unusable_402s_are_unpayable() -> None:
    payer = Payer(KEY, "5", trust=trusted())
    for hostile_offer in [offer(scheme="exact"), offer(amount="-1"), offer(network="solana:1"), offer(extra={})]:
        server = Hostile(hostile_offer)
        with payer.client(transport=httpx.MockTransport(server)) as http, pytest.raises(PaymentError) as refused:
            http.get(ORIGIN + "/v1/chat")
        assert refused.value.code == "unpayable", hostile_offer
        assert server.payments == []


def test_a_streaming_body_is_not_sent_twice() -> None:
    payer = Payer(KEY, "5", trust=trusted())
    server = Hostile(offer())

    def body() -> Any:
        yield b"chunk"

    with payer.client(transport=httpx.MockTransport(server)) as http, pytest.raises(UnpayableError):
        http.post(ORIGIN + "/v1/chat", content=body())
    assert payer.signed_total(PAYEE) == 0


def test_trust_settings_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="pay_to"):
        Payer(KEY, "5", trust={ORIGIN: OriginTrust(pay_to="nobody", networks="eip155:1", validators=VALIDATOR)})
    with pytest.raises(ValueError, match="networks"):
        Payer(KEY, "5", trust={ORIGIN: OriginTrust(pay_to=PAYEE, networks="1", validators=VALIDATOR)})
    with pytest.raises(ValueError):
        Payer(KEY, "5", trust={"not a url": OriginTrust(pay_to=PAYEE, networks="eip155:1", validators=VALIDATOR)})
    with pytest.raises(ValueError):
        Payer(KEY, "five")


def test_one_payer_serves_many_threads(dev: Demo, totals: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    payer = Payer(dev.session_key, "5", state_path=totals, trust=dev.trust())
    start = payer.signed_total(dev.payee)
    with payer.client() as http, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: http.post(chat_url(dev), json=dev.route["exampleBody"]), range(8)))
    assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers if r.status_code != 200]
    assert payer.signed_total(dev.payee) == start + 8 * PRICE
    served = sorted(int(receipt_of(r)["receipt"]["served"]) for r in answers)  # type: ignore[index]
    assert served == [start + i * PRICE for i in range(1, 9)]
