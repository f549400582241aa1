"""Priced routes in opentab's one route syntax, matched the way Starlette routes.

A route is `"METHOD /path"`; a path segment is a literal (letters, digits and
`- . _ ~ ! $ & ' + , = @`), a parameter written `:id` or `{id}` (the same thing, the whole
segment), or a final `*` for any rest (zero or more segments). Anything else (`<id>`,
`{id:int}`, `[id]`, `*` mid-path, `%`, `;`, `//`, `.`/`..` segments) is refused when the table is
compiled, with an error naming the route: the same syntax the gateway, the proxy, the charge
API and the Express middleware take.

**What a route prices is what Starlette would route to the handler** (FastAPI routes the same
way). Starlette matches the percent-decoded path the server hands it (`scope["path"]`, less any
`root_path`), case-sensitively, with a regular expression: a parameter is `[^/]+` (so `.`, `..`
and a decoded `%2F`'s pieces are ordinary characters to it), a trailing slash is significant
(`redirect_slashes` answers `/v1/chat/` with a redirect, which runs no handler and is not
charged), and a GET route answers HEAD. The table compiles each route to the same regular
expression and matches it against the same string, so `/v1/%63hat` (decoded `/v1/chat`) and
`/v1%2Fchat` (decoded `/v1/chat` too) are priced, exactly because Starlette serves them. Methods
compare case-insensitively (a superset of Starlette, which would answer 405), HEAD is priced as
GET. `case_sensitive=False` makes literals compare case-insensitively too, for an app whose
routing does; it only ever prices more.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

from ._wire import parse_usdc

__all__ = ["ConfigError", "PricedRoute", "RouteTable", "compile_price", "Price", "Routes"]

#: A price in whole USDC (`"0.002"` or `"$0.002"`), or `{"price": ..., "description": ...}`.
Price = Union[str, Mapping[str, str]]
#: `"METHOD /path"` → price.
Routes = Mapping[str, Price]

_PARAM = re.compile(r"^(?::([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})$")
_LITERAL_PUNCT = set("-._~!$&'+,=@")
_METHOD = re.compile(r"^([A-Za-z]+)\s+(\S+)$")
_SYNTAX = (
    "literal segments (letters, digits and - . _ ~ ! $ & ' + , = @), ':name' or '{name}' for one "
    "segment, and a trailing '*' for any rest"
)


class ConfigError(ValueError):
    """A configuration the SDK refuses when it is built (a route, a price, the gateway URL or secret)."""


def _literal(segment: str) -> bool:
    return segment != "" and all(c.isalpha() or c.isnumeric() or c in _LITERAL_PUNCT for c in segment)


def compile_price(where: str, value: Price) -> str:
    """A price as the charge API takes it: whole USDC, no `$`."""
    raw = value.get("price") if isinstance(value, Mapping) else value
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: price {raw!r} is not USDC like '$0.002'")
    price = raw.strip().removeprefix("$")
    if not re.fullmatch(r"\d+(\.\d{1,6})?", price):
        raise ConfigError(f"{where}: price {price!r} is not USDC like '$0.002'")
    parse_usdc(price)
    return price


@dataclass(frozen=True)
class PricedRoute:
    """One compiled route."""

    #: `METHOD /pattern` as written (method upper-cased): the label the charge API records.
    key: str
    method: str
    pattern: str
    #: Whole USDC, no `$`.
    price: str
    description: str | None
    regex: re.Pattern[str]

    def matches(self, method: str, path: str) -> bool:
        verb = method.upper()
        if verb != self.method and not (verb == "HEAD" and self.method == "GET"):
            return False
        # `match` with a `$`-terminated pattern, exactly as Starlette's Route.matches does.
        return self.regex.match(path) is not None


def _compile_pattern(route: str, pattern: str, flags: int) -> re.Pattern[str]:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"route {route!r}: {why}; a route path has {_SYNTAX}")

    if not pattern.startswith("/"):
        raise bad("the path must start with /")
    if pattern == "/":
        return re.compile(r"^/$", flags)
    trailing = pattern.endswith("/")
    parts = pattern[1 : -1 if trailing else None].split("/")
    regex = "^"
    for i, part in enumerate(parts):
        if part == "":
            raise bad("empty segment (//)")
        if part == "*":
            if i != len(parts) - 1 or trailing:
                raise bad("'*' may only be the last segment")
            # Zero or more segments: Starlette's `{rest:path}` (`/.*`), and the bare prefix.
            return re.compile(regex + r"(?:/.*)?$", flags)
        if _PARAM.match(part):
            regex += "/[^/]+"
            continue
        if part in (".", ".."):
            raise bad(f"dot segment {part!r}")
        if not _literal(part):
            raise bad(f"segment {part!r} is neither a literal nor a parameter")
        regex += "/" + re.escape(part)
    return re.compile(regex + ("/" if trailing else "") + "$", flags)


class RouteTable:
    """A compiled table of priced routes; raises `ConfigError` naming the first bad entry."""

    def __init__(self, routes: Routes, *, case_sensitive: bool = True) -> None:
        flags = 0 if case_sensitive else re.IGNORECASE
        self.case_sensitive = case_sensitive
        self.routes: list[PricedRoute] = []
        for key, value in routes.items():
            match = _METHOD.match(key.strip()) if isinstance(key, str) else None
            if not match:
                raise ConfigError(f"route {key!r} must look like 'POST /v1/chat'")
            method, pattern = match.group(1).upper(), match.group(2)
            description = value.get("description") if isinstance(value, Mapping) else None
            self.routes.append(
                PricedRoute(
                    key=f"{method} {pattern}",
                    method=method,
                    pattern=pattern,
                    price=compile_price(f"route {key!r}", value),
                    description=description,
                    regex=_compile_pattern(key, pattern, flags),
                )
            )

    def find(self, method: str, path: str) -> PricedRoute | None:
        """The route that prices `method path`, `path` being the decoded path Starlette routes on."""
        for route in self.routes:
            if route.matches(method, path):
                return route
        return None

    def __len__(self) -> int:
        return len(self.routes)


_STARLETTE_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?\}$")


def label_of_path(method: str, path: str) -> str:
    """A charge-API label in the route syntax for a Starlette route path (`/files/{p:path}` is
    `/files/*`, `{id:int}` is `{id}`, anything else a numbered parameter)."""
    verb = method.upper() if re.fullmatch(r"[A-Za-z]+", method) else "GET"
    segments: list[str] = []
    for part in [p for p in path.split("/") if p != ""]:
        param = _STARLETTE_PARAM.match(part)
        if param and param.group(2) == "path":
            segments.append("*")
            break
        if param:
            segments.append("{" + param.group(1) + "}")
        elif _literal(part) and part not in (".", ".."):
            segments.append(part)
        else:
            segments.append(f":p{len(segments)}")
    return f"{verb} /" + "/".join(segments)
