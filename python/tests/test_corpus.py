"""The bypass corpus (testdata/routes/bypass-corpus.json) against the ASGI middleware, charging
through a real `opentab dev`: Starlette and FastAPI apps, served by uvicorn, route the corpus's
routes to handlers that record that they ran; every variant is sent unpaid, byte for byte, and
must be charged (402) or refused (400/404/405, or Starlette's trailing-slash redirect, which runs
no handler), its handler never run. Each app is run with the table in front and with the
per-route form. The same app without the middleware shows which variants Starlette really
routes to a handler: each of those must be a 402, so the corpus tests the pricing, not a 404."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from opentab import Gateway, PaymentMiddleware, RouteTable

from .conftest import REPO, Demo, Server, raw

CORPUS = json.loads((REPO / "testdata" / "routes" / "bypass-corpus.json").read_text())
# Spellings past the corpus that Starlette's router has its own opinion on: a decoded newline
# before the end (`$` matches before a final "\n"), and a parameter that is a dot segment.
EXTRA = [
    {"method": "POST", "path": "/v1/chat%0A", "targets": "POST /v1/chat", "class": "encoded newline"},
    {"method": "GET", "path": "/v1/models/gpt-4%0A", "targets": "GET /v1/models/:id", "class": "param + encoded newline"},
    {"method": "GET", "path": "/v1/models/..", "targets": "GET /v1/models/:id", "class": "param is a dot segment"},
    {"method": "GET", "path": "/../report", "targets": "GET /:tenant/report", "class": "leading param: dot-dot"},
    {"method": "post", "path": "/v1/chat", "targets": "POST /v1/chat", "class": "lower-case method"},
]
VARIANTS: list[dict[str, str]] = CORPUS["variants"] + EXTRA


def starlette_path(pattern: str) -> str:
    """A corpus route's path as Starlette writes it (`:id` is `{id}`, `*` is `{rest:path}`)."""
    path = re.sub(r":([A-Za-z_][A-Za-z0-9_]*)", r"{\1}", pattern)
    return re.sub(r"/\*$", "/{rest:path}", path)


def label(v: dict[str, str]) -> str:
    return f"{v['method']} {v['path']} ({v['class']})"


def build(framework: str, form: str, gateway: Gateway | None, ran: list[str]) -> Any:
    def handler_for(key: str) -> Callable[..., Any]:
        async def handler(request: Request) -> PlainTextResponse:
            ran.append(key)
            return PlainTextResponse("served")

        return handler

    if framework == "starlette":
        routes = []
        for key, price in CORPUS["routes"].items():
            method, pattern = key.split(" ")
            endpoint = handler_for(key)
            if form == "per-route":
                assert gateway is not None
                endpoint = gateway.paid(price).endpoint(endpoint)
            routes.append(Route(starlette_path(pattern), endpoint, methods=[method]))
        app: Any = Starlette(routes=routes)
    else:
        app = FastAPI()
        for key, price in CORPUS["routes"].items():
            method, pattern = key.split(" ")
            deps = [Depends(gateway.paid(price))] if form == "per-route" and gateway is not None else []
            app.add_api_route(starlette_path(pattern), handler_for(key), methods=[method], dependencies=deps)
    if form == "table":
        assert gateway is not None
        app.add_middleware(PaymentMiddleware, gateway=gateway, routes=RouteTable(CORPUS["routes"]))
    elif form == "per-route":
        assert gateway is not None
        app.add_middleware(PaymentMiddleware, gateway=gateway)
    return app


def routed_by(framework: str) -> set[int]:
    """The variants (by index) the unguarded app serves from a priced handler."""
    ran: list[str] = []
    routed = set()
    with Server(build(framework, "none", None, ran)) as server:
        for i, variant in enumerate(VARIANTS):
            before = len(ran)
            raw(server.port, variant["method"], variant["path"])
            if len(ran) > before:
                routed.add(i)
    return routed


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
@pytest.mark.parametrize("form", ["table", "per-route"])
def test_every_variant_is_charged_or_refused_never_served_free(dev: Demo, framework: str, form: str) -> None:
    routed = routed_by(framework)
    # The exact spellings are routed, so the corpus exercises real handlers.
    for i, variant in enumerate(VARIANTS):
        if variant["class"] == "exact":
            assert i in routed, label(variant)

    ran: list[str] = []
    gateway = Gateway(dev.gateway_url, dev.gateway_secret)
    with Server(build(framework, form, gateway, ran)) as server:
        for i, variant in enumerate(VARIANTS):
            before = len(ran)
            status, headers, _ = raw(server.port, variant["method"], variant["path"])
            assert len(ran) == before, f"{label(variant)} ran its handler unpaid"
            allowed = {402, 400, 404, 405} | ({307} if variant["path"].endswith("/") else set())
            assert status in allowed, f"{label(variant)} answered {status}"
            if i in routed:
                assert status == 402, f"{label(variant)} is routed by {framework}"
            if status == 402:
                assert "payment-required" in headers, label(variant)
        server.run(gateway.aclose())
    assert ran == []
