"""Shared fixtures: a real `opentab dev` per test module (anvil, SQLite, the gateway, its demo
API and its charge API), uvicorn servers on free ports, and raw HTTP for byte-exact requests.

The binary is `$OPENTAB_BIN`, else the workspace's debug build (`cargo build -p opentab`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("OPENTAB_BIN", REPO / "target" / "debug" / "opentab"))


@dataclass(frozen=True)
class Demo:
    """What `opentab dev` writes to demo.json."""

    url: str
    route: dict[str, Any]
    session_key: str
    session_address: str
    owner: str
    payee: str
    validator: str
    usdc: str
    chain_id: int
    gateway_url: str
    gateway_secret: str
    data_dir: Path

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"

    def trust(self, origin: str | None = None, max_price: str = "0.01") -> dict[str, Any]:
        from opentab import OriginTrust

        return {
            origin or self.url: OriginTrust(
                pay_to=self.payee, networks=self.network, validators=self.validator, max_price=max_price
            )
        }


@contextmanager
def run_dev() -> Iterator[Demo]:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: build it with `cargo build -p opentab` (or set OPENTAB_BIN)")
    data_dir = Path(tempfile.mkdtemp(prefix="opentab-py-"))
    log = open(data_dir.parent / f"{data_dir.name}.log", "w+b")
    child = subprocess.Popen(
        [str(BINARY), "dev", "--port", "0", "--anvil-port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 120
        for raw in child.stdout:
            if raw.startswith(b"ready"):
                break
            if time.monotonic() > deadline:
                break
        else:
            log.seek(0)
            pytest.fail(f"opentab dev exited with {child.wait()} before it was ready:\n{log.read().decode(errors='replace')[-3000:]}")
        # Keep reading its stdout so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in child.stdout], daemon=True).start()  # type: ignore[union-attr]
        demo = json.loads((data_dir / "demo.json").read_text())
        yield Demo(
            url=demo["url"],
            route=demo["routes"][0],
            session_key=demo["sessionKey"]["privateKey"],
            session_address=demo["sessionKey"]["address"],
            owner=demo["owner"],
            payee=demo["payee"],
            validator=demo["validator"],
            usdc=demo["usdc"],
            chain_id=demo["chainId"],
            gateway_url=demo["gateway"]["url"],
            gateway_secret=demo["gateway"]["secret"],
            data_dir=data_dir,
        )
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()
        subprocess.run(["rm", "-rf", str(data_dir), f"{data_dir}.log"], check=False)


@pytest.fixture(scope="module")
def dev() -> Iterator[Demo]:
    with run_dev() as demo:
        yield demo


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Server:
    """A uvicorn server in a thread of its own, on a free port of 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.loop: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def run(self, coro: Any, timeout: float = 60) -> Any:
        """Runs a coroutine on the server's event loop (e.g. `gateway.drain()`)."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


def raw(port: int, method: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Sends `METHOD target HTTP/1.1` byte for byte (no client-side normalisation) and returns
    the status, the headers (lower-case names) and the body."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", "Content-Length: 0"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return status, parsed, body
