"""The route table: opentab's one route syntax (refused otherwise, naming the route) and
matching that agrees with Starlette's router."""

from __future__ import annotations

import pytest
from starlette.routing import Match, Route

from opentab import ConfigError, RouteTable
from opentab.routes import label_of_path


@pytest.mark.parametrize(
    "key",
    [
        "GET /v1/models/<id>",
        "GET /v1/models/[id]",
        "GET /v1/models/{id:int}",
        "GET /v1/*/x",
        "GET /v1//x",
        "GET /v1/./x",
        "GET /v1/../x",
        "GET /v1/a%20b",
        "GET /v1/a;b",
        "GET v1/x",
        "/v1/x",
        "GET /v1/file.:ext",
        "GET /v1/{id",
    ],
)
def test_anything_outside_the_syntax_is_refused_naming_the_route(key: str) -> None:
    with pytest.raises(ConfigError, match="route"):
        RouteTable({key: "0.001"})


@pytest.mark.parametrize("price", ["free", "0.0000001", "-1", "1e3", ""])
def test_bad_prices_are_refused(price: str) -> None:
    with pytest.raises(ConfigError, match="price"):
        RouteTable({"GET /x": price})


def test_both_parameter_spellings_and_prices() -> None:
    table = RouteTable({"GET /v1/models/:id": "$0.0001", "post /v1/files/{name}": {"price": "0.01", "description": "upload"}})
    models, files = table.routes
    assert (models.key, models.price) == ("GET /v1/models/:id", "0.0001")
    assert (files.key, files.price, files.description) == ("POST /v1/files/{name}", "0.01", "upload")
    assert table.find("GET", "/v1/models/gpt-4") is models
    assert table.find("HEAD", "/v1/models/gpt-4") is models
    assert table.find("POST", "/v1/files/report.pdf") is files
    assert table.find("post", "/v1/files/report.pdf") is files
    assert table.find("GET", "/v1/files/report.pdf") is None
    assert table.find("GET", "/v1/models/") is None
    assert table.find("GET", "/v1/models/a/b") is None


def test_a_final_star_is_any_rest() -> None:
    table = RouteTable({"GET /files/*": "0.001"})
    for path in ["/files", "/files/", "/files/a", "/files/a/b/c"]:
        assert table.find("GET", path) is not None, path
    assert table.find("GET", "/filesx") is None


@pytest.mark.parametrize(
    "path",
    ["/v1/chat", "/v1/chat/", "/V1/chat", "/v1/chat\n", "/v1/chat\n\n", "/v1/chat/x", "/v1/chat.", "//v1/chat", "/v1//chat"],
)
def test_literal_routes_match_exactly_what_starlette_matches(path: str) -> None:
    route = Route("/v1/chat", lambda r: None, methods=["POST"])
    starlette, _ = route.matches({"type": "http", "path": path, "method": "POST"})
    assert (RouteTable({"POST /v1/chat": "0.002"}).find("POST", path) is not None) == (starlette is Match.FULL), repr(path)


@pytest.mark.parametrize(
    "path",
    ["/v1/models/gpt-4", "/v1/models/..", "/v1/models/.", "/v1/models/a/b", "/v1/models/", "/v1/models/x\n", "/V1/models/x", "/v1/models/ä"],
)
def test_parameters_match_exactly_what_starlette_matches(path: str) -> None:
    route = Route("/v1/models/{id}", lambda r: None, methods=["GET"])
    for method in ("GET", "HEAD"):
        starlette, _ = route.matches({"type": "http", "path": path, "method": method})
        assert (RouteTable({"GET /v1/models/:id": "0.002"}).find(method, path) is not None) == (starlette is Match.FULL), repr(path)


def test_case_insensitive_tables_price_more() -> None:
    table = RouteTable({"POST /v1/chat": "0.002"}, case_sensitive=False)
    assert table.find("POST", "/V1/CHAT") is not None


def test_labels_of_starlette_paths_are_in_the_route_syntax() -> None:
    assert label_of_path("post", "/v1/chat") == "POST /v1/chat"
    assert label_of_path("GET", "/v1/models/{id:int}") == "GET /v1/models/{id}"
    assert label_of_path("GET", "/files/{rest:path}") == "GET /files/*"
    assert label_of_path("GET", "/v1/file.{ext}") == "GET /v1/:p1"
    assert label_of_path("GET", "/") == "GET /"
