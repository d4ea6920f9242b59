"""A minimal OTLP/HTTP receiver for measuring the worker with tracing on: it takes each batch and answers at
once, decoding nothing, so that the cost measured is the worker's. `python -m bench.otlp_sink --port 4318`."""

from __future__ import annotations

import click
from aiohttp import web


@click.command()
@click.option("--port", default=4318, show_default=True, type=click.IntRange(1, 65535))
def main(port: int) -> None:
    received = {"batches": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        received["batches"] += 1
        received["bytes"] += len(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(received)

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
