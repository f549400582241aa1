"""The x402 v2 HTTP transport as opentab speaks it: header names, base64 JSON headers, USDC
amounts (6 decimals, decimal strings on the wire, never floats)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any, TypedDict

PAYMENT_REQUIRED = "payment-required"
PAYMENT_SIGNATURE = "payment-signature"
PAYMENT_RESPONSE = "payment-response"
X_PAYMENT = "x-payment"

_USDC = re.compile(r"^\$?(\d+)(?:\.(\d{1,6}))?$")


class Eip712(TypedDict):
    name: str
    version: str


class Extra(TypedDict):
    validator: str
    eip712: Eip712


class Requirements(TypedDict):
    """One way to pay, an entry of a 402's `accepts`."""

    scheme: str
    network: str
    amount: str
    asset: str
    payTo: str
    maxTimeoutSeconds: int
    extra: Extra


class Receipt(TypedDict):
    sessionKey: str
    charged: str
    served: str
    remaining: str


class PaymentResponse(TypedDict):
    """The `PAYMENT-RESPONSE` receipt of a paid call (amounts in base units)."""

    success: bool
    payer: str
    network: str
    receipt: Receipt


def parse_usdc(text: str) -> int:
    """Whole USDC with up to 6 decimals (`"5"`, `"$0.002"`) in base units."""
    match = _USDC.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a USDC amount like '5' or '0.002'")
    return int(match.group(1)) * 1_000_000 + int((match.group(2) or "").ljust(6, "0"))


def amount_of(value: str | int) -> int:
    """An amount given as base units (`int`) or whole USDC (`str`)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an amount")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value
    return parse_usdc(value)


def encode_header(value: Any) -> str:
    return base64.b64encode(json.dumps(value, separators=(",", ":")).encode("utf-8")).decode("ascii")


def decode_header(value: str) -> Any:
    return json.loads(base64.b64decode(value, validate=False).decode("utf-8"))
