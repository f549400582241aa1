"""The ASGI middleware (table and per-route forms, FastAPI and Starlette) charging through a
real `opentab dev`'s charge API: refuses unpaid calls with the gateway's 402, charges paid ones,
voids what the app failed (>= 400, an exception), keeps what it served (even to a client that
hung up), retries voids until recorded, and logs no secrets."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.applications import Starlette
from starlette.routing import Route

from opentab import (
    ConfigError,
    Gateway,
    OriginTrust,
    Payer,
    PaymentMiddleware,
    RouteTable,
    VoidRetry,
    decode_header,
    receipt_of,
)

from .conftest import Demo

ORIGIN = "http://testserver"
ROUTES = {
    "POST /v1/chat": "0.002",
    "GET /v1/models/:id": "$0.0001",
    "GET /v1/fail": "0.002",
    "GET /v1/boom": "0.002",
    "GET /v1/teapot": "0.002",
}


class Ran:
    def __init__(self) -> None:
        self.calls: list[str] = []


def fastapi_app(gateway: Gateway, ran: Ran, *, table: bool = True) -> FastAPI:
    app = FastAPI()
    if table:
        app.add_middleware(PaymentMiddleware, gateway=gateway, routes=RouteTable(ROUTES))
    else:
        app.add_middleware(PaymentMiddleware, gateway=gateway)
    deps = {} if table else {"dependencies": [Depends(gateway.paid("0.002"))]}

    @app.post("/v1/chat", **deps)
    async def chat() -> dict[str, str]:
        ran.calls.append("chat")
        return {"answer": "hello"}

    @app.get("/v1/models/{id}", **({} if table else {"dependencies": [Depends(gateway.paid("0.0001"))]}))
    async def model(id: str) -> dict[str, str]:
        ran.calls.append(f"model {id}")
        return {"id": id}

    @app.get("/v1/fail", **deps)
    async def fail() -> JSONResponse:
        ran.calls.append("fail")
        return JSONResponse({"error": "upstream broke"}, status_code=500)

    @app.get("/v1/boom", **deps)
    async def boom() -> None:
        ran.calls.append("boom")
        raise RuntimeError("the handler crashed")

    @app.get("/v1/teapot", **deps)
    async def teapot() -> None:
        ran.calls.append("teapot")
        raise HTTPException(418, "no")

    @app.get("/free")
    async def free() -> PlainTextResponse:
        ran.calls.append("free")
        return PlainTextResponse("free")

    return app


@pytest.fixture(scope="module")
def totals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mw") / "totals.json"


def payer_for(dev: Demo, totals: Path) -> Payer:
    return Payer(dev.session_key, "5", state_path=totals, trust=dev.trust(ORIGIN))


def gateway_for(dev: Demo, **kwargs: Any) -> Gateway:
    return Gateway(dev.gateway_url, dev.gateway_secret, **kwargs)


@pytest.fixture(params=["table", "per-route"])
def form(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def served_now(http: httpx.AsyncClient) -> int:
    """What the gateway has charged the key so far, read from a fresh paid call's receipt (less
    that call's price)."""
    res = await http.get(ORIGIN + "/v1/models/probe")
    assert res.status_code == 200, res.text
    return int(receipt_of(res)["receipt"]["served"]) - 100  # type: ignore[index]


@pytest.mark.anyio
async def test_unpaid_calls_get_the_gateways_402_and_never_run(dev: Demo, form: str) -> None:
    ran = Ran()
    app = fastapi_app(gateway_for(dev), ran, table=form == "table")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        res = await http.post(ORIGIN + "/v1/chat", json={})
        assert res.status_code == 402
        challenge = decode_header(res.headers["payment-required"])
        assert res.json() == challenge
        (accepted,) = challenge["accepts"]
        assert accepted["payTo"].lower() == dev.payee.lower()
        assert accepted["amount"] == "2000"
        assert accepted["network"] == dev.network
        assert accepted["extra"]["validator"].lower() == dev.validator.lower()
        assert (await http.get(ORIGIN + "/free")).status_code == 200
        # A forged payment is the gateway's refusal, verbatim.
        res = await http.post(ORIGIN + "/v1/chat", headers={"payment-signature": "bm90IGpzb24="})
        assert res.status_code == 402 and res.json()["error"] == "malformed_payment"
    assert ran.calls == ["free"]


@pytest.mark.anyio
async def test_paid_calls_are_charged_and_failures_voided(dev: Demo, totals: Path, form: str) -> None:
    ran = Ran()
    gateway = gateway_for(dev)
    app = fastapi_app(gateway, ran, table=form == "table")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with payer_for(dev, totals).async_client(transport=transport) as http:
        before = await served_now(http)
        res = await http.post(ORIGIN + "/v1/chat", json={})
        assert res.status_code == 200 and res.json() == {"answer": "hello"}
        receipt = receipt_of(res)
        assert receipt is not None and receipt["receipt"]["charged"] == "2000"
        assert int(receipt["receipt"]["served"]) == before + 100 + 2000

        for path, status in [("/v1/fail", 500), ("/v1/boom", 500), ("/v1/teapot", 418)]:
            res = await http.get(ORIGIN + path)
            assert res.status_code == status, path
            assert receipt_of(res) is None, path
        await gateway.drain()
        # The three failures were voided: only the probes and the chat were charged.
        assert await served_now(http) == before + 100 + 2000
        res = await http.get(ORIGIN + "/v1/models/gpt-4")
        assert res.status_code == 200 and receipt_of(res) is not None
    assert ran.calls == ["model probe", "chat", "fail", "boom", "teapot", "model probe", "model gpt-4"]
    await gateway.aclose()


@pytest.mark.anyio
async def test_head_is_priced_as_get(dev: Demo) -> None:
    ran = Ran()
    app = Starlette(routes=[Route("/v1/report", lambda r: PlainTextResponse("report"), methods=["GET"])])
    app.add_middleware(PaymentMiddleware, gateway=gateway_for(dev), routes=RouteTable({"GET /v1/report": "0.001"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        assert (await http.head(ORIGIN + "/v1/report")).status_code == 402
        assert (await http.get(ORIGIN + "/v1/report")).status_code == 402
    assert ran.calls == []


@pytest.mark.anyio
async def test_a_client_that_hangs_up_after_the_status_still_pays(dev: Demo, totals: Path) -> None:
    gateway = gateway_for(dev)
    app = fastapi_app(gateway, Ran())
    payer = payer_for(dev, totals)
    async with payer.async_client(transport=httpx.ASGITransport(app=app)) as http:
        before = await served_now(http)
        # Drive the middleware by hand: a paid request whose client is gone once the status
        # line is out (the body's send raises, as a server's does for a closed connection).
        probe = await http.post(ORIGIN + "/v1/chat", json={})
        assert probe.status_code == 200
        payment = payer.pay(ORIGIN, ORIGIN, None, _challenge_of(dev), True)

        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body":
                raise OSError("connection reset by peer")

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/chat", "raw_path": b"/v1/chat", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), (b"payment-signature", payment.encode())],
            "client": ("127.0.0.1", 1), "server": ("testserver", 80),
        }
        with pytest.raises(OSError):
            await app(scope, receive, send)
        assert sent[0]["status"] == 200
        assert any(k == b"payment-response" for k, _ in sent[0]["headers"])
        await gateway.drain()
        assert await served_now(http) == before + 100 + 2000 + 2000
    await gateway.aclose()


def _challenge_of(dev: Demo) -> bytes:
    import json

    return json.dumps({
        "x402Version": 2,
        "accepts": [{
            "scheme": "session", "network": dev.network, "amount": "2000", "asset": dev.usdc, "payTo": dev.payee,
            "maxTimeoutSeconds": 60, "extra": {"validator": dev.validator, "eip712": {"name": "opentab", "version": "1"}},
        }],
    }).encode()


class FlakyVoids(httpx.AsyncBaseTransport):
    """Lets charges through; the first `failures` voids fail as if the network dropped them."""

    def __init__(self, failures: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.failures = failures
        self.voids = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/void"):
            self.voids += 1
            if self.voids <= self.failures:
                raise httpx.ConnectError("simulated network failure", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.anyio
async def test_voids_are_retried_until_recorded_and_logs_hold_no_secrets(
    dev: Demo, totals: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FlakyVoids(failures=2)
    gateway = gateway_for(dev, transport=flaky, void_retry=VoidRetry(initial_delay=0.05, max_delay=0.2, deadline=30))
    app = fastapi_app(gateway, Ran())
    caplog.set_level(logging.DEBUG, logger="opentab")
    async with payer_for(dev, totals).async_client(transport=httpx.ASGITransport(app=app)) as http:
        before = await served_now(http)
        res = await http.get(ORIGIN + "/v1/fail", headers={"x-request-id": "req-42"})
        assert res.status_code == 500
        await gateway.drain()
        assert flaky.voids == 3
        assert await served_now(http) == before + 100
        # Voiding again is refused by the gateway (recorded once): nothing else changes.
    text = caplog.text
    assert "did not get through" in text and "req-42" in text
    assert "chg_" not in text and dev.gateway_secret not in text
    for record in caplog.records:
        assert "payment-signature" not in record.getMessage().lower()
    await gateway.aclose()


@pytest.mark.anyio
async def test_an_unreachable_gateway_fails_closed(dev: Demo) -> None:
    ran = Ran()
    app = fastapi_app(Gateway("http://127.0.0.1:9", dev.gateway_secret), ran)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        res = await http.post(ORIGIN + "/v1/chat", json={})
    assert res.status_code == 503 and res.json()["error"] == "unavailable"
    assert ran.calls == []


@pytest.mark.anyio
async def test_a_wrong_secret_is_a_500_never_a_free_call(dev: Demo, caplog: pytest.LogCaptureFixture) -> None:
    ran = Ran()
    app = fastapi_app(Gateway(dev.gateway_url, "gws_wrong"), ran)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        res = await http.post(ORIGIN + "/v1/chat", json={})
    assert res.status_code == 500 and res.json()["error"] == "gateway_misconfigured"
    assert ran.calls == []
    assert "gws_wrong" not in caplog.text


@pytest.mark.anyio
async def test_the_starlette_per_route_form(dev: Demo, totals: Path) -> None:
    gateway = gateway_for(dev)
    ran = Ran()

    async def chat(request: Any) -> PlainTextResponse:
        ran.calls.append("chat")
        return PlainTextResponse("hello")

    def fail(request: Any) -> PlainTextResponse:
        ran.calls.append("fail")
        return PlainTextResponse("broken", status_code=502)

    app = Starlette(
        routes=[
            Route("/v1/chat", gateway.paid("0.002").endpoint(chat), methods=["POST"]),
            Route("/v1/fail/{id:int}", gateway.paid("0.002").endpoint(fail), methods=["GET"]),
        ],
        middleware=[gateway.middleware()],
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        assert (await http.post(ORIGIN + "/v1/chat")).status_code == 402
        assert (await http.head(ORIGIN + "/v1/fail/1")).status_code == 402
    assert ran.calls == []
    async with payer_for(dev, totals).async_client(transport=httpx.ASGITransport(app=app)) as http:
        res = await http.post(ORIGIN + "/v1/chat")
        assert res.status_code == 200 and receipt_of(res) is not None
        res = await http.get(ORIGIN + "/v1/fail/7")
        assert res.status_code == 502 and receipt_of(res) is None
    await gateway.drain()
    assert ran.calls == ["chat", "fail"]
    await gateway.aclose()


def test_configuration_is_checked_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="secret"):
        Gateway("http://127.0.0.1:8402", "")
    with pytest.raises(ConfigError, match="url"):
        Gateway("", "s3cret")
    with pytest.raises(ConfigError):
        Gateway("ftp://127.0.0.1", "s3cret")
    monkeypatch.delenv("OPENTAB_URL", raising=False)
    monkeypatch.setenv("OPENTAB_GATEWAY_SECRET", "s3cret")
    with pytest.raises(ConfigError, match="OPENTAB_URL"):
        Gateway.from_env()
    monkeypatch.setenv("OPENTAB_URL", "http://127.0.0.1:8402")
    monkeypatch.delenv("OPENTAB_GATEWAY_SECRET")
    with pytest.raises(ConfigError, match="OPENTAB_GATEWAY_SECRET"):
        Gateway.from_env()
    gateway = Gateway("http://127.0.0.1:8402", "s3cret")
    assert "s3cret" not in repr(gateway)
    with pytest.raises(ConfigError, match="price"):
        gateway.paid("free")
    with pytest.raises(ConfigError, match="<id>"):
        gateway.middleware({"GET /v1/models/<id>": "0.001"})
    with pytest.raises(ConfigError):
        PaymentMiddleware(FastAPI(), gateway=None)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_an_idempotency_key_is_charged_once(dev: Demo, totals: Path) -> None:
    ran = Ran()
    gateway = gateway_for(dev)
    app = fastapi_app(gateway, ran)
    async with payer_for(dev, totals).async_client(transport=httpx.ASGITransport(app=app)) as http:
        before = await served_now(http)
        first = await http.post(ORIGIN + "/v1/chat", json={}, headers={"idempotency-key": "py-idem-1"})
        again = await http.post(ORIGIN + "/v1/chat", json={}, headers={"idempotency-key": "py-idem-1"})
        assert first.status_code == 200
        assert again.status_code == 409 and again.json()["error"] == "duplicate_payment"
        assert await served_now(http) == before + 100 + 2000
    assert ran.calls.count("chat") == 1
    await gateway.aclose()


@pytest.mark.anyio
async def test_a_table_on_a_mounted_app_names_the_mounted_paths(dev: Demo) -> None:
    from starlette.routing import Mount

    ran = Ran()

    async def chat(request: Any) -> PlainTextResponse:
        ran.calls.append("chat")
        return PlainTextResponse("hello")

    gateway = gateway_for(dev)
    api = Starlette(routes=[Route("/v1/chat", chat, methods=["POST"])], middleware=[gateway.middleware({"POST /v1/chat": "0.002"})])
    app = Starlette(routes=[Mount("/api", app=api)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        assert (await http.post(ORIGIN + "/api/v1/chat")).status_code == 402
        assert (await http.post(ORIGIN + "/api/v1/%63hat")).status_code == 402
    assert ran.calls == []
    await gateway.aclose()
