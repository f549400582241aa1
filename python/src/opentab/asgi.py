"""opentab's HTTP 402 gateway as ASGI middleware for Starlette and FastAPI, over opentab's
charge API (`POST {url}/gateway/v1/charge` and `/void`, `Authorization: Bearer <secret>`):
the same semantics as `@opentab/express`.

Build the `Gateway` (and any route table) at import time: a missing URL or secret, a bad route
or price raises `ConfigError` when the app starts, not a 500 per call::

    gateway = Gateway.from_env()    # OPENTAB_URL and OPENTAB_GATEWAY_SECRET

    # A table in front of the routes, in opentab's route syntax (`:id` and `{id}` alike):
    app.add_middleware(PaymentMiddleware, gateway=gateway,
                       routes=RouteTable({"POST /v1/chat": "0.002", "GET /v1/models/:id": "0.0001"}))

    # Or per route (FastAPI): charged exactly when the router runs that route. The middleware
    # (with or without a table) must be installed too: it decides charge-or-void on the answer.
    app.add_middleware(PaymentMiddleware, gateway=gateway)
    @app.post("/v1/chat", dependencies=[Depends(gateway.paid("0.002"))])
    async def chat(): ...
    # Starlette: Route("/v1/chat", gateway.paid("0.002").endpoint(chat), methods=["POST"])

For a priced call the middleware asks the charge API to charge it before the app runs. Unpaid or
refused calls get opentab's answer verbatim (`402` with `PAYMENT-REQUIRED`, `409` for a
duplicate payment, `503` when the gateway cannot charge); an unreachable gateway is a `503`, a
refused secret or price a `500 gateway_misconfigured` (logged): a priced handler never runs
unpaid.

**Voids mean "the API failed".** The status the app answers decides, when it sends the status
line: below 400 the answer gets the `PAYMENT-RESPONSE` receipt and the call is paid, even if the
client hangs up afterwards (it was served); 400 and above voids the charge, and so does an
exception raised before the status was sent, or an app that returns without answering. A void
that does not reach the gateway (network error, 5xx) is retried with capped exponential backoff
(200 ms doubling to 10 s) until the gateway records it or its ten-minute void window closes;
`await gateway.drain()` waits for voids in flight (call it on shutdown). Log lines (logger
`opentab`) name the route, the request id and a short hash of the charge, never the charge id
(it carries the voucher and its signature), a payment header or the secret.
"""

import asyncio
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Optional, Union
from urllib.parse import quote

import httpx
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from ._wire import PaymentResponse, decode_header
from .routes import ConfigError, Price, RouteTable, Routes, compile_price, label_of_path

__all__ = ["Gateway", "Paid", "PaymentMiddleware", "PaymentRefused", "VoidRetry"]

Scope = MutableMapping[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SLOT = "opentab.payment"
_log = logging.getLogger("opentab")


@dataclass(frozen=True)
class VoidRetry:
    """How a void that did not get through is retried (seconds)."""

    initial_delay: float = 0.2
    max_delay: float = 10.0
    deadline: float = 600.0


@dataclass(frozen=True)
class _Charged:
    charge_id: str
    payment_response: str
    receipt: Optional[PaymentResponse]
    name: str


class _Answer:
    """The answer a refused or failed charge gives the client instead of running the app."""

    def __init__(self, status: int, body: bytes, payment_required: Optional[str] = None) -> None:
        self.status = status
        self.body = body
        self.payment_required = payment_required

    async def send(self, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        if self.payment_required:
            headers.append((b"payment-required", self.payment_required.encode("latin-1")))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


class PaymentRefused(Exception):
    """Raised by a per-route `Paid` dependency when the call was not paid; `PaymentMiddleware`
    answers it with opentab's answer (402/409/503) verbatim."""

    def __init__(self, answer: _Answer) -> None:
        super().__init__(f"payment refused (HTTP {answer.status})")
        self.answer = answer


class _Slot:
    """Per request: the charge taken for it, if any (set by the table or a dependency)."""

    __slots__ = ("charged",)

    def __init__(self) -> None:
        self.charged: Optional[_Charged] = None


def _scrub(text: str) -> str:
    """Text fit for a log line: anything long and token-like (base64, hex) is cut out."""
    return re.sub(r"[A-Za-z0-9+/=_-]{40,}", "[redacted]", text)[:300]


def _fingerprint(charge_id: str) -> str:
    return hashlib.sha256(charge_id.encode()).hexdigest()[:12]


def _header(scope: Scope, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _route_path(scope: Scope) -> str:
    """The path Starlette routes on (`starlette.routing.get_route_path`)."""
    path: str = scope["path"]
    root_path = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


def _request_url(scope: Scope) -> str:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, (bytes, bytearray)) else quote(scope.get("path", "/"))
    query = scope.get("query_string", b"")
    if query and "?" not in path:
        path += "?" + query.decode("latin-1")
    host = _header(scope, b"host") or "localhost"
    return f"{scope.get('scheme', 'http')}://{host}{path if path.startswith('/') else '/' + path}"


class Gateway:
    """A connection to opentab's charge API: `url` is where opentab serves it (`opentab dev`,
    or `opentab proxy` with `OPENTAB_GATEWAY_SECRET`), `secret` its shared secret. Raises
    `ConfigError` at once when either is missing or malformed."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float = 10.0,
        void_retry: VoidRetry = VoidRetry(),
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ConfigError("the opentab gateway url is missing (OPENTAB_URL)")
        try:
            parsed = httpx.URL(url.strip())
        except httpx.InvalidURL:
            raise ConfigError("the opentab gateway url is not a URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError("the opentab gateway url must be http(s)://host[:port]")
        if not isinstance(secret, str) or not secret.strip():
            raise ConfigError("the opentab gateway secret is missing (OPENTAB_GATEWAY_SECRET)")
        self._base = url.strip().rstrip("/")
        self._where = str(parsed.copy_with(username=None, password=None, query=None)).rstrip("/")
        self._secret = secret.strip()
        self._timeout = timeout
        self._retry = void_retry
        self._transport = transport
        self._clients: dict[int, httpx.AsyncClient] = {}
        self._voids: set[asyncio.Task[None]] = set()

    @classmethod
    def from_env(cls, url_var: str = "OPENTAB_URL", secret_var: str = "OPENTAB_GATEWAY_SECRET", **kwargs: Any) -> "Gateway":
        """A gateway from the environment; `ConfigError` naming the variable that is missing."""
        url, secret = os.environ.get(url_var), os.environ.get(secret_var)
        if not url:
            raise ConfigError(f"{url_var} is not set: where opentab serves its charge API")
        if not secret:
            raise ConfigError(f"{secret_var} is not set: the charge API's shared secret")
        return cls(url, secret, **kwargs)

    def __repr__(self) -> str:
        return f"Gateway({self._where})"

    def _client(self) -> httpx.AsyncClient:
        # httpx's connection pool belongs to one event loop: one client per loop.
        loop = id(asyncio.get_running_loop())
        client = self._clients.get(loop)
        if client is None:
            client = httpx.AsyncClient(timeout=self._timeout, transport=self._transport)
            self._clients = {loop: client}
        return client

    async def _post(self, path: str, body: Mapping[str, Any]) -> httpx.Response:
        return await self._client().post(
            f"{self._base}/gateway/v1/{path}",
            content=json.dumps(body),
            headers={"content-type": "application/json", "authorization": f"Bearer {self._secret}"},
        )

    def middleware(self, routes: Union[Routes, RouteTable, None] = None, *, case_sensitive: bool = True) -> Middleware:
        """`PaymentMiddleware` for `Starlette(middleware=[...])`, the table compiled now."""
        table = routes if isinstance(routes, RouteTable) or routes is None else RouteTable(routes, case_sensitive=case_sensitive)
        return Middleware(PaymentMiddleware, gateway=self, routes=table)

    def paid(self, price: Price, description: Optional[str] = None) -> "Paid":
        """The per-route form: a FastAPI dependency (`Depends(gateway.paid("0.002"))`) and a
        Starlette endpoint wrapper (`gateway.paid("0.002").endpoint(handler)`)."""
        return Paid(self, price, description)

    async def drain(self) -> None:
        """Waits until every void started so far is recorded or given up on."""
        while self._voids:
            await asyncio.gather(*list(self._voids), return_exceptions=True)

    async def aclose(self) -> None:
        """Drains the voids and closes the connection pool."""
        await self.drain()
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    async def charge(self, scope: Scope, label: str, price: str) -> Union[_Charged, _Answer]:
        """Charges `label` at `price` for the request in `scope`: the charge, or the answer to
        give instead."""
        request_id = _header(scope, b"x-request-id")
        body = {
            "route": label,
            "price": price,
            "url": _request_url(scope),
            "payment": _header(scope, b"payment-signature"),
            "paymentV1": _header(scope, b"x-payment"),
            "idempotencyKey": _header(scope, b"idempotency-key"),
            "requestId": request_id,
        }
        try:
            answer = await self._post("charge", {k: v for k, v in body.items() if v is not None})
        except httpx.HTTPError as err:
            # Fail closed: never serve a priced route that could not be charged.
            _log.error("the gateway at %s did not answer a charge for %s: %s", self._where, label, _scrub(type(err).__name__ + ": " + str(err)))
            return _Answer(503, b'{"error":"unavailable","message":"payments cannot be checked right now; nothing was charged"}')
        if answer.status_code in (400, 401):
            # Our configuration is wrong (secret, route or price), not the client's payment.
            try:
                refusal = answer.json()
            except ValueError:
                refusal = {}
            _log.error(
                "the gateway refused the charge request for %s (HTTP %d %s): %s",
                label, answer.status_code, refusal.get("error"), _scrub(str(refusal.get("message"))),
            )
            return _Answer(500, b'{"error":"gateway_misconfigured","message":"this API\'s payment setup is broken; nothing was charged"}')
        if answer.status_code != 200:
            # 402 / 409 / 503: opentab's answer, verbatim.
            return _Answer(answer.status_code, answer.content, answer.headers.get("payment-required"))
        try:
            paid = answer.json()
            charge_id, payment_response = paid["chargeId"], paid["paymentResponse"]
        except (ValueError, KeyError, TypeError):
            _log.error("the gateway's answer to a charge for %s is not the documented shape", label)
            return _Answer(503, b'{"error":"unavailable","message":"payments cannot be checked right now"}')
        name = f"{label} (request {_scrub(request_id or '-')}, charge {_fingerprint(charge_id)})"
        try:
            receipt: Optional[PaymentResponse] = decode_header(payment_response)
        except ValueError:
            receipt = None
        return _Charged(charge_id, payment_response, receipt, name)

    def start_void(self, charged: _Charged) -> None:
        task = asyncio.get_running_loop().create_task(self._void_until_recorded(charged))
        self._voids.add(task)
        task.add_done_callback(self._voids.discard)

    async def _void_until_recorded(self, charged: _Charged) -> None:
        deadline = time.monotonic() + self._retry.deadline
        delay = self._retry.initial_delay
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._post("void", {"chargeId": charged.charge_id})
                # A refusal's body may quote the charge id: only its status and code are logged.
                try:
                    code = str(answer.json().get("error", ""))
                except (ValueError, AttributeError):
                    code = ""
                if answer.is_success:
                    return
                if answer.status_code == 404:
                    _log.warning("void of %s: the gateway holds no open charge (voided already, or older than its void window)", charged.name)
                    return
                if answer.status_code in (400, 401):
                    _log.error("void of %s refused (HTTP %d %s): check the gateway url and secret", charged.name, answer.status_code, _scrub(code))
                    return
                problem = f"HTTP {answer.status_code} {_scrub(code)}"
            except httpx.HTTPError as err:
                problem = _scrub(type(err).__name__)
            if time.monotonic() + delay > deadline:
                _log.error("void of %s gave up after %d attempts: %s", charged.name, attempt, problem)
                return
            _log.warning("void of %s did not get through (attempt %d: %s); retrying in %.1f s", charged.name, attempt, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry.max_delay)


class PaymentMiddleware:
    """Pure ASGI middleware: charges the routes of `routes` (a `RouteTable` or a dict, see
    `opentab.routes`) before the app runs, and decides charge-or-void on the answer for those and
    for per-route `Paid` dependencies. `app.add_middleware(PaymentMiddleware, gateway=...,
    routes=RouteTable({...}))`."""

    def __init__(self, app: ASGIApp, gateway: Gateway, routes: Union[Routes, RouteTable, None] = None, *, case_sensitive: bool = True) -> None:
        if not isinstance(gateway, Gateway):
            raise ConfigError("PaymentMiddleware needs gateway=Gateway(url, secret)")
        self.app = app
        self.gateway = gateway
        self.table = routes if isinstance(routes, RouteTable) or routes is None else RouteTable(routes, case_sensitive=case_sensitive)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slot = _Slot()
        scope[_SLOT] = slot
        route = self.table.find(scope["method"], _route_path(scope)) if self.table else None
        if route is not None:
            outcome = await self.gateway.charge(scope, route.key, route.price)
            if isinstance(outcome, _Answer):
                await outcome.send(send)
                return
            slot.charged = outcome

        started = False
        decided = False

        def decide(status: Optional[int]) -> Optional[bytes]:
            """Once per charge: < 400 is served (the receipt to add), anything else voids it."""
            nonlocal decided
            charged = slot.charged
            if charged is None or decided:
                return None
            decided = True
            if status is not None and status < 400:
                return charged.payment_response.encode("latin-1")
            self.gateway.start_void(charged)
            return None

        async def send_deciding(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                receipt = decide(int(message["status"]))
                if receipt is not None:
                    message = {**message, "headers": [*message.get("headers", []), (b"payment-response", receipt)]}
            await send(message)

        try:
            await self.app(scope, receive, send_deciding)
        except PaymentRefused as refused:
            if started:
                raise
            await refused.answer.send(send)
            return
        except BaseException:
            # Raised before the status was sent: nothing was served.
            decide(None)
            raise
        # Returned without answering: nothing was served.
        decide(None)


class Paid:
    """A route's price, per route: a FastAPI dependency and a Starlette endpoint wrapper.
    `PaymentMiddleware` must be installed on the app (it relays refusals and voids failures)."""

    def __init__(self, gateway: Gateway, price: Price, description: Optional[str] = None) -> None:
        self.gateway = gateway
        self.price = compile_price(f"paid({price!r})", price)
        self.description = description

    async def __call__(self, request: Request) -> Optional[PaymentResponse]:
        slot = request.scope.get(_SLOT)
        if not isinstance(slot, _Slot):
            raise RuntimeError("opentab: a paid route runs without PaymentMiddleware: add it to the app")
        if slot.charged is not None:  # charged by the table already
            return slot.charged.receipt
        outcome = await self.gateway.charge(request.scope, self._label(request.scope), self.price)
        if isinstance(outcome, _Answer):
            raise PaymentRefused(outcome)
        slot.charged = outcome
        return outcome.receipt

    @staticmethod
    def _label(scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            endpoint = scope.get("endpoint")
            router = scope.get("router")
            for candidate in getattr(router, "routes", []) if router is not None else []:
                if getattr(candidate, "endpoint", None) is endpoint and isinstance(getattr(candidate, "path", None), str):
                    path = candidate.path
                    break
        method = scope.get("method", "GET")
        methods = getattr(route, "methods", None) or ()
        if method == "HEAD" and "HEAD" not in methods:
            method = "GET"
        return label_of_path(method, path if isinstance(path, str) else "/*")

    def endpoint(self, handler: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
        """A Starlette endpoint that charges, then runs `handler` (sync or async)."""

        @functools.wraps(handler)
        async def paid_endpoint(request: Request) -> Response:
            await self(request)
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            return result  # type: ignore[no-any-return]

        return paid_endpoint


