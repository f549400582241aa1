"""opentab — pay-per-call USDC billing over HTTP 402, for Python.

- `opentab.client`: a paying client for httpx (`Payer`, `PayingTransport`,
  `AsyncPayingTransport`): answers opentab's 402s with the next cumulative voucher of a session
  key, only for the origins, payees, networks and validators it trusts.
- `opentab.asgi`: ASGI middleware for Starlette and FastAPI over opentab's charge API
  (`Gateway`, `PaymentMiddleware`, `Gateway.paid` per route).
- `opentab.routes`: opentab's route syntax, matched the way Starlette routes (`RouteTable`).
"""

from ._eip712 import Domain, SessionKey, voucher_digest
from ._wire import PaymentResponse, Requirements, decode_header, encode_header, parse_usdc
from .asgi import Gateway, Paid, PaymentMiddleware, PaymentRefused, VoidRetry
from .client import (
    DEFAULT_MAX_PRICE,
    AsyncPayingTransport,
    CapExceededError,
    OriginTrust,
    Payer,
    PayingTransport,
    PaymentError,
    UnpayableError,
    UntrustedPaymentError,
    origin_of,
    receipt_of,
    refusal_of,
)
from .routes import ConfigError, PricedRoute, RouteTable

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_PRICE",
    "AsyncPayingTransport",
    "CapExceededError",
    "ConfigError",
    "Domain",
    "Gateway",
    "OriginTrust",
    "Paid",
    "Payer",
    "PayingTransport",
    "PaymentError",
    "PaymentMiddleware",
    "PaymentRefused",
    "PaymentResponse",
    "PricedRoute",
    "Requirements",
    "RouteTable",
    "SessionKey",
    "UnpayableError",
    "UntrustedPaymentError",
    "VoidRetry",
    "decode_header",
    "encode_header",
    "origin_of",
    "parse_usdc",
    "receipt_of",
    "refusal_of",
    "voucher_digest",
]
