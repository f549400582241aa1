"""A Starlette API with the bypass corpus's routes, routed by Starlette itself (it matches the
percent-decoded path; GET routes answer HEAD). It counts what it served at GET /__served.
Run with uvicorn: `python -m uvicorn starlette_app:app --app-dir <this folder> --port <port>`."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

served = 0


async def serve(_request):
    global served
    served += 1
    return PlainTextResponse("served")


async def count(_request):
    return JSONResponse({"served": served})


app = Starlette(
    routes=[
        Route("/v1/chat", serve, methods=["POST"]),
        Route("/v1/report", serve, methods=["GET"]),
        Route("/v1/models/{id}", serve, methods=["GET"]),
        Route("/v1/files/{name}", serve, methods=["POST"]),
        Route("/{tenant}/report", serve, methods=["GET"]),
        Route("/__served", count, methods=["GET"]),
    ]
)
