"""Run by test_wheel.py with the Python of a fresh virtualenv holding only the built wheel,
FastAPI and uvicorn: a small FastAPI app priced with opentab's middleware, served by uvicorn,
and one call paid for with opentab's client. Prints what happened as one JSON line.
Environment: OPENTAB_URL, OPENTAB_GATEWAY_SECRET, DEMO_KEY, DEMO_PAYEE, DEMO_NETWORK,
DEMO_VALIDATOR, STATE_PATH."""

import asyncio
import json
import os
import socket
import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI

import opentab
from opentab import Gateway, OriginTrust, Payer, PaymentMiddleware, RouteTable, receipt_of

gateway = Gateway.from_env()
app = FastAPI()
app.add_middleware(PaymentMiddleware, gateway=gateway, routes=RouteTable({"POST /v1/chat": "0.002"}))


@app.post("/v1/chat")
async def chat() -> dict:
    return {"answer": "hello from a wheel"}


sock = socket.socket()
sock.bind(("127.0.0.1", 0))
port = sock.getsockname()[1]
server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
thread.start()
while not server.started:
    time.sleep(0.02)

origin = f"http://127.0.0.1:{port}"
payer = Payer(
    os.environ["DEMO_KEY"],
    "1",
    state_path=os.environ["STATE_PATH"],
    trust={origin: OriginTrust(pay_to=os.environ["DEMO_PAYEE"], networks=os.environ["DEMO_NETWORK"], validators=os.environ["DEMO_VALIDATOR"])},
)
with payer.client() as http:
    unpaid = httpx.post(origin + "/v1/chat")
    paid = http.post(origin + "/v1/chat")
server.should_exit = True
thread.join(10)
print(json.dumps({
    "module": opentab.__file__,
    "typed": os.path.exists(os.path.join(os.path.dirname(opentab.__file__), "py.typed")),
    "unpaid": unpaid.status_code,
    "paid": paid.status_code,
    "body": paid.json(),
    "receipt": receipt_of(paid),
}))
