"""Pay opentab-gated APIs from httpx with a session key.

`Payer` holds the session key, the spending cap, the signed totals and the trust settings;
`PayingTransport` / `AsyncPayingTransport` wrap an httpx transport so that every request of a
`httpx.Client` / `httpx.AsyncClient` answers `402 Payment Required` (x402 v2, scheme
`session`) by signing the next cumulative voucher and retrying once::

    payer = Payer(private_key, cap="5", state_path="totals.json", trust={
        "http://127.0.0.1:8402": OriginTrust(pay_to="0xPayee…", networks="eip155:31337",
                                             validators="0xValidator…", max_price="0.01"),
    })
    with payer.client() as http:             # or payer.async_client()
        res = http.post("http://127.0.0.1:8402/v1/chat/completions", json={...})
        print(res.status_code, receipt_of(res))

**It signs only what it meant to** (the same rules as `@opentab/client` and the Rust client).
A 402 is answered only when it comes from a trusted origin (scheme, host and port of the URL
that answered) and asks for a payee (`payTo`), a network (`eip155:<chainId>`) and a validator
(`extra.validator`) trusted for that origin, at no more than the per-call maximum (the
origin's `max_price`, else the payer's `max_price`, default 0.1 USDC). Anything else raises an
`UntrustedPaymentError` whose `code` says why (`untrusted_origin`, `untrusted_payee`,
`untrusted_network`, `untrusted_validator`, `price_above_max`); the cap raises
`CapExceededError` (`cap_exceeded`), a 402 it cannot use `UnpayableError` (`unpayable`).
Nothing is signed or counted then. Without `trust` the payer trusts on first use: the first 402
it pays pins that origin, payee, network and validator (kept in `state_path`) and every other
is refused.

A 402 reached through a redirect away from the origin that was asked is refused, and the paid
retry is sent by the transport itself, below httpx's redirect handling: a redirect answering
it goes back to the caller's client, which follows it (if it follows redirects) with the
original request, without the voucher.

The signed total per (session key, payee) is written to `state_path` (atomically, before the
voucher leaves) in the same JSON shape as the TypeScript client's file. Request bodies must be
replayable (bytes, str, JSON, form data: anything httpx holds in memory); a streaming body
cannot be paid for (`UnpayableError`), since a paid call is sent twice.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from ._eip712 import Domain, SessionKey
from ._wire import (
    PAYMENT_REQUIRED,
    PAYMENT_RESPONSE,
    PAYMENT_SIGNATURE,
    PaymentResponse,
    Requirements,
    amount_of,
    decode_header,
    encode_header,
)

__all__ = [
    "DEFAULT_MAX_PRICE",
    "AsyncPayingTransport",
    "CapExceededError",
    "OriginTrust",
    "Payer",
    "PayingTransport",
    "PaymentError",
    "UnpayableError",
    "UntrustedPaymentError",
    "origin_of",
    "receipt_of",
    "refusal_of",
]

#: The default per-call maximum: 0.1 USDC, in base units.
DEFAULT_MAX_PRICE = 100_000

PaymentErrorCode = Literal[
    "untrusted_origin",
    "untrusted_payee",
    "untrusted_network",
    "untrusted_validator",
    "price_above_max",
    "cap_exceeded",
    "unpayable",
]
UntrustedCode = Literal[
    "untrusted_origin", "untrusted_payee", "untrusted_network", "untrusted_validator", "price_above_max"
]

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_NETWORK = re.compile(r"^eip155:\d{1,15}$")
_AMOUNT = re.compile(r"^\d{1,78}$")
# Where the transport keeps the origin a request was first sent to; httpx copies a request's
# extensions into the requests it builds to follow redirects.
_FIRST_ORIGIN = "opentab.origin"


class PaymentError(Exception):
    """The client refused to pay a 402; nothing was signed. `code` says why."""

    def __init__(self, code: PaymentErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: PaymentErrorCode = code


class UntrustedPaymentError(PaymentError):
    """The 402 asked for something this client does not trust; nothing was signed."""

    def __init__(self, code: UntrustedCode, message: str, origin: str, requirements: Mapping[str, Any] | None) -> None:
        super().__init__(code, f"refusing to pay {origin}: {message}")
        #: The origin that answered 402.
        self.origin = origin
        #: What it asked for.
        self.requirements = requirements


class CapExceededError(PaymentError):
    """Paying would take the signed total past the cap; nothing was signed."""

    def __init__(self, price: int, total: int, cap: int) -> None:
        super().__init__(
            "cap_exceeded",
            f"paying {price} would bring the signed total to {total}, past the cap of {cap} (base units)",
        )
        self.price, self.total, self.cap = price, total, cap


class UnpayableError(PaymentError):
    """The 402 offered nothing this client can pay (or the request cannot be sent twice)."""

    def __init__(self, message: str) -> None:
        super().__init__("unpayable", f"the 402 offers no usable `session` payment: {message}")


@dataclass(frozen=True)
class OriginTrust:
    """What one origin may ask this client to pay."""

    #: The payees (`payTo`) it may ask to be paid.
    pay_to: str | Sequence[str]
    #: The networks it may name, CAIP-2 `eip155:<chainId>`.
    networks: str | Sequence[str]
    #: The validator contracts (`extra.validator`) it may name.
    validators: str | Sequence[str]
    #: The most one call may cost: whole USDC (`"0.01"`) or base units (`int`); the payer's
    #: `max_price` without it.
    max_price: str | int | None = None


@dataclass(frozen=True)
class _Trusted:
    pay_to: frozenset[str]
    networks: frozenset[str]
    validators: frozenset[str]
    max_price: int


@dataclass(frozen=True)
class _Pin:
    origin: str
    payTo: str
    network: str
    validator: str


def origin_of(url: httpx.URL | str) -> str:
    """`scheme://host[:port]` of a URL, as browsers spell an origin (default ports left out)."""
    parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{str(url)!r} is not a URL like 'https://api.example.com'")
    host = parsed.host.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parsed.scheme}://{host}" + (f":{parsed.port}" if parsed.port is not None else "")


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _compile_trust(trust: Mapping[str, OriginTrust], max_price: int) -> dict[str, _Trusted]:
    compiled: dict[str, _Trusted] = {}
    for key, entry in trust.items():
        where = f"trust[{key!r}]"
        try:
            origin = origin_of(key)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        pay_to, networks, validators = _as_list(entry.pay_to), _as_list(entry.networks), _as_list(entry.validators)
        for name, values in (("pay_to", pay_to), ("validators", validators)):
            if not values:
                raise ValueError(f"{where}.{name} must name at least one address")
            for value in values:
                if not isinstance(value, str) or not _ADDRESS.match(value):
                    raise ValueError(f"{where}.{name}: {value!r} is not an address")
        if not networks:
            raise ValueError(f"{where}.networks must name at least one network")
        for network in networks:
            if not isinstance(network, str) or not _NETWORK.match(network):
                raise ValueError(f"{where}.networks: {network!r} is not eip155:<chainId>")
        compiled[origin] = _Trusted(
            pay_to=frozenset(a.lower() for a in pay_to),
            networks=frozenset(networks),
            validators=frozenset(a.lower() for a in validators),
            max_price=max_price if entry.max_price is None else amount_of(entry.max_price),
        )
    return compiled


class _State:
    """Signed totals per (session key, payee) and the first-use pin, written before each
    voucher leaves (the same file shape as `@opentab/client`'s `statePath`)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._totals: dict[str, int] = {}
        self.pin: _Pin | None = None
        if path is not None and path.exists():
            saved = json.loads(path.read_text("utf-8"))
            if not isinstance(saved, dict):
                raise ValueError(f"{path} does not hold opentab client state")
            # Older files of the TypeScript client hold the totals alone, as a flat object.
            totals: dict[str, Any] = saved["totals"] if isinstance(saved.get("totals"), dict) else saved
            for slot, total in totals.items():
                if isinstance(total, str) and total.isdigit():
                    self._totals[slot] = int(total)
            pinned = saved.get("pinned")
            if isinstance(pinned, dict):
                try:
                    self.pin = _Pin(**{k: str(pinned[k]) for k in ("origin", "payTo", "network", "validator")})
                except KeyError:
                    raise ValueError(f"{path}: the pinned origin is incomplete") from None

    def get(self, slot: str) -> int:
        return self._totals.get(slot, 0)

    def reserve(self, slot: str, price: int, cap: int, pin: _Pin | None, check: Any) -> int:
        """Under the lock: re-runs `check()` (the pin may have been set meanwhile), raises the
        total and sets the pin, and writes both down before returning."""
        with self._lock:
            check()
            total = self.get(slot) + price
            if total > cap:
                raise CapExceededError(price, total, cap)
            previous_pin = self.pin
            self._totals[slot] = total
            if pin is not None and self.pin is None:
                self.pin = pin
            try:
                self._save()
            except BaseException:
                self._totals[slot] = total - price
                self.pin = previous_pin
                raise
            return total

    def _save(self) -> None:
        if self._path is None:
            return
        state: dict[str, Any] = {"totals": {k: str(v) for k, v in self._totals.items()}}
        if self.pin is not None:
            state["pinned"] = self.pin.__dict__
        directory = self._path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(state, out, indent=2)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _malformed(offer: Any) -> UnpayableError | None:
    if not isinstance(offer, dict):
        return UnpayableError("an entry of accepts is not an object")
    extra = offer.get("extra")
    if not isinstance(offer.get("amount"), str) or not _AMOUNT.match(offer["amount"]):
        return UnpayableError(f"amount {offer.get('amount')!r} is not base units")
    if not isinstance(offer.get("network"), str) or not _NETWORK.match(offer["network"]):
        return UnpayableError(f"network {offer.get('network')!r} is not eip155:<chainId>")
    if not isinstance(offer.get("payTo"), str) or not _ADDRESS.match(offer["payTo"]):
        return UnpayableError(f"payTo {offer.get('payTo')!r} is not an address")
    if not isinstance(extra, dict) or not isinstance(extra.get("validator"), str) or not _ADDRESS.match(extra["validator"]):
        return UnpayableError(f"extra.validator {extra.get('validator') if isinstance(extra, dict) else None!r} is not an address")
    eip712 = extra.get("eip712")
    if not isinstance(eip712, dict) or not isinstance(eip712.get("name"), str) or not isinstance(eip712.get("version"), str):
        return UnpayableError("extra.eip712 lacks a name and version")
    return None


class Payer:
    """A session key that pays opentab's 402s: the cap, the signed totals and whom it trusts.

    - `private_key`: the session key (`0x…` hex or 32 bytes).
    - `cap`: the most it will ever sign per payee, all calls together: whole USDC (`"5"`) or base
      units (`int`).
    - `state_path`: a JSON file keeping the signed totals (and the first-use pin) across
      restarts; in memory only without it.
    - `trust`: origins (`"https://api.example.com"`) allowed to ask for payment, each with what
      it may ask for; without it, the first origin that asks is pinned.
    - `max_price`: the most one call may cost for origins without their own (default 0.1 USDC).

    Share one `Payer` between the clients of one process; two processes must not share a
    `state_path`.
    """

    def __init__(
        self,
        private_key: str | bytes,
        cap: str | int,
        *,
        state_path: str | os.PathLike[str] | None = None,
        trust: Mapping[str, OriginTrust] | None = None,
        max_price: str | int = DEFAULT_MAX_PRICE,
    ) -> None:
        self._key = SessionKey(private_key)
        self._cap = amount_of(cap)
        self._max_price = amount_of(max_price)
        self._configured = trust is not None
        self._trust = _compile_trust(trust or {}, self._max_price)
        self._state = _State(Path(state_path) if state_path is not None else None)

    @property
    def address(self) -> str:
        """The session key's address (EIP-55)."""
        return self._key.address

    def _slot(self, payee: str) -> str:
        return f"{self._key.address.lower()}->{payee.lower()}"

    def signed_total(self, payee: str) -> int:
        """Everything this key has signed for `payee` so far, in base units."""
        return self._state.get(self._slot(payee))

    def client(self, **kwargs: Any) -> httpx.Client:
        """An `httpx.Client` that pays (keyword arguments go to `httpx.Client`; `transport`
        is wrapped)."""
        inner = kwargs.pop("transport", None) or httpx.HTTPTransport()
        return httpx.Client(transport=PayingTransport(self, inner), **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An `httpx.AsyncClient` that pays (keyword arguments go to `httpx.AsyncClient`)."""
        inner = kwargs.pop("transport", None) or httpx.AsyncHTTPTransport()
        return httpx.AsyncClient(transport=AsyncPayingTransport(self, inner), **kwargs)

    def _refusal(self, origin: str, offer: Mapping[str, Any]) -> PaymentError | None:
        def refuse(code: UntrustedCode, message: str) -> UntrustedPaymentError:
            return UntrustedPaymentError(code, message, origin, offer)

        pay_to = offer["payTo"].lower()
        network = offer["network"]
        validator = offer["extra"]["validator"].lower()
        trusted = self._trust.get(origin)
        if self._configured:
            if trusted is None:
                return refuse("untrusted_origin", "this origin is not in the client's trust settings")
            if pay_to not in trusted.pay_to:
                return refuse("untrusted_payee", f"payee {offer['payTo']} is not trusted for this origin")
            if network not in trusted.networks:
                return refuse("untrusted_network", f"network {network} is not trusted for this origin")
            if validator not in trusted.validators:
                return refuse("untrusted_validator", f"validator {offer['extra']['validator']} is not trusted for this origin")
        elif (pin := self._state.pin) is not None:
            if pin.origin != origin:
                return refuse("untrusted_origin", f"this client pays only {pin.origin}, the first origin it paid (configure trust for more)")
            if pin.payTo != pay_to:
                return refuse("untrusted_payee", f"payee {offer['payTo']} is not {pin.payTo}, the one pinned at first use")
            if pin.network != network:
                return refuse("untrusted_network", f"network {network} is not {pin.network}, the one pinned at first use")
            if pin.validator != validator:
                return refuse("untrusted_validator", f"validator {offer['extra']['validator']} is not {pin.validator}, the one pinned at first use")
        limit = trusted.max_price if trusted is not None else self._max_price
        if int(offer["amount"]) > limit:
            return refuse("price_above_max", f"price {offer['amount']} is above the per-call maximum of {limit} (base units)")
        return None

    def pay(self, asked: str, answered: str, header: str | None, body: bytes, replayable: bool = True) -> str:
        """The `PAYMENT-SIGNATURE` value answering a 402 that `answered` (an origin) gave to a
        request first sent to `asked`; raises a `PaymentError` (nothing signed) when it may not
        be paid. The transports call this; it is public for other HTTP stacks."""
        try:
            challenge = decode_header(header) if header else json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise UnpayableError("the 402 carries no PAYMENT-REQUIRED JSON") from None
        accepts = challenge.get("accepts") if isinstance(challenge, dict) else None
        offers = [a for a in accepts if isinstance(a, dict) and a.get("scheme") == "session"] if isinstance(accepts, list) else []
        if not offers:
            raise UnpayableError('no entry with scheme "session"')
        if answered != asked:
            raise UntrustedPaymentError("untrusted_origin", f"the 402 came from a redirect away from {asked}", answered, offers[0])

        chosen: dict[str, Any] | None = None
        problem: PaymentError | None = None
        for offer in offers:
            why = _malformed(offer) or self._refusal(answered, offer)
            if why is None:
                chosen = offer
                break
            problem = problem or why
        if chosen is None:
            assert problem is not None
            raise problem
        if not replayable:
            raise UnpayableError("the request body is a stream and cannot be sent again with a voucher")
        accepted: Requirements = chosen  # type: ignore[assignment]

        pin = None
        if not self._configured:
            pin = _Pin(answered, accepted["payTo"].lower(), accepted["network"], accepted["extra"]["validator"].lower())

        def still_trusted() -> None:
            # A concurrent call may have pinned another origin since the check above.
            if (why := self._refusal(answered, accepted)) is not None:
                raise why

        total = self._state.reserve(self._slot(accepted["payTo"]), int(accepted["amount"]), self._cap, pin, still_trusted)
        domain = Domain(
            name=accepted["extra"]["eip712"]["name"],
            version=accepted["extra"]["eip712"]["version"],
            chain_id=int(accepted["network"][len("eip155:"):]),
            verifying_contract=accepted["extra"]["validator"],
        )
        signature = self._key.sign_voucher(domain, accepted["payTo"], total)
        return encode_header(
            {
                "x402Version": 2,
                "accepted": accepted,
                "payload": {"sessionKey": self._key.address, "cumulativeAmount": str(total), "signature": signature},
            }
        )

    def __repr__(self) -> str:
        return f"Payer({self._key.address})"


def _first_origin(request: httpx.Request) -> str:
    origin = request.extensions.get(_FIRST_ORIGIN)
    if not isinstance(origin, str):
        origin = origin_of(request.url)
        request.extensions[_FIRST_ORIGIN] = origin
    return origin


def _with_payment(request: httpx.Request, payment: str) -> httpx.Request:
    headers = request.headers.copy()
    headers[PAYMENT_SIGNATURE] = payment
    return httpx.Request(request.method, request.url, headers=headers, stream=request.stream, extensions=request.extensions)


class PayingTransport(httpx.BaseTransport):
    """An httpx transport that pays 402s with `payer` and sends everything through `transport`
    (a plain `httpx.HTTPTransport()` by default)."""

    def __init__(self, payer: Payer, transport: httpx.BaseTransport | None = None) -> None:
        self.payer = payer
        self._inner = transport or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        asked = _first_origin(request)
        replayable = isinstance(request.stream, httpx.ByteStream)
        response = self._inner.handle_request(request)
        if response.status_code != 402:
            return response
        try:
            body = response.read()
        finally:
            response.close()
        payment = self.payer.pay(asked, origin_of(request.url), response.headers.get(PAYMENT_REQUIRED), body, replayable)
        return self._inner.handle_request(_with_payment(request, payment))

    def close(self) -> None:
        self._inner.close()


class AsyncPayingTransport(httpx.AsyncBaseTransport):
    """The `httpx.AsyncClient` twin of `PayingTransport`."""

    def __init__(self, payer: Payer, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.payer = payer
        self._inner = transport or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        asked = _first_origin(request)
        replayable = isinstance(request.stream, httpx.ByteStream)
        response = await self._inner.handle_async_request(request)
        if response.status_code != 402:
            return response
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        payment = self.payer.pay(asked, origin_of(request.url), response.headers.get(PAYMENT_REQUIRED), body, replayable)
        return await self._inner.handle_async_request(_with_payment(request, payment))

    async def aclose(self) -> None:
        await self._inner.aclose()


def receipt_of(response: httpx.Response) -> PaymentResponse | None:
    """The `PAYMENT-RESPONSE` receipt of a paid call, if it was paid for."""
    value = response.headers.get(PAYMENT_RESPONSE)
    if not value:
        return None
    receipt: PaymentResponse = decode_header(value)
    return receipt


def refusal_of(response: httpx.Response) -> tuple[str, str] | None:
    """`(error, message)` of a gateway's refusal (a 402 with an `error`, a 409, a 503)."""
    if response.status_code not in (402, 409, 503):
        return None
    value = response.headers.get(PAYMENT_REQUIRED)
    try:
        body = decode_header(value) if value else response.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return None
    return body["error"], str(body.get("message", ""))
