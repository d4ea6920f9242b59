"""The HTTP endpoints for probes and Prometheus (aiohttp), served in the worker's own event loop so that a
blocked loop shows as a probe that does not answer.

    /livez    200 while the worker's processing loop runs; 503 while it starts, or after it died
    /readyz   200 when Redis, the database and the audit table are there; 503 naming what is not
    /metrics  Prometheus text
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from kpi_export.bullmq import redis_client
from kpi_export.config import Settings
from kpi_export.errors import StartupError
from kpi_export.runtime.metrics import WorkerMetrics
from kpi_export.runtime.readiness import Readiness, check_readiness
from kpi_export.store import create_engine

Closer = Callable[[], Awaitable[None]]

log = logging.getLogger(__name__)

LIVEZ, READYZ, METRICS = "/livez", "/readyz", "/metrics"
ROUTES = (LIVEZ, READYZ, METRICS)


class HealthServer:
    """`liveness()` names the worker's state ("starting", "running", "stopped"); only "running" is live."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        liveness: Callable[[], str],
        readiness: Callable[[], Awaitable[Readiness]],
        metrics: WorkerMetrics,
    ) -> None:
        self.host = host
        self.port = port
        self._liveness = liveness
        self._readiness = readiness
        self._metrics = metrics
        app = web.Application()
        app.router.add_get(LIVEZ, self._livez)
        app.router.add_get(READYZ, self._readyz)
        app.router.add_get(METRICS, self._metrics_text)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise StartupError(f"HEALTH_PORT {self.port} cannot be served: {exc.strerror or exc}") from None
        log.info(
            "Health endpoints on http://%s:%d (%s)",
            self.host,
            self.port,
            ", ".join(ROUTES),
            extra={"event": "health.started"},
        )

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _livez(self, _request: web.Request) -> web.Response:
        state = self._liveness()
        return web.json_response({"status": state}, status=200 if state == "running" else 503)

    async def _readyz(self, _request: web.Request) -> web.Response:
        readiness = await self._readiness()
        return web.json_response(readiness.body(), status=200 if readiness.ready else 503)

    async def _metrics_text(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics.render_for(request.headers.get("Accept"))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response


async def serve_health(
    settings: Settings, liveness: Callable[[], str], metrics: WorkerMetrics, closers: list[Closer]
) -> None:
    """Start /livez, /readyz and /metrics on HEALTH_PORT; what must be closed at the end goes to `closers`.
    Readiness uses connections of its own (a fresh database connection per check), so that a busy worker
    pool cannot make a probe wait."""
    assert settings.health.port is not None
    client = redis_client(settings.redis, max_connections=4)  # a few probes may ask at once
    engine = create_engine(settings.database.target, pooled=False, create=False)
    closers += [client.aclose, engine.dispose]
    server = HealthServer(
        host=settings.health.host,
        port=settings.health.port,
        liveness=liveness,
        readiness=lambda: check_readiness(client, engine),
        metrics=metrics,
    )
    await server.start()
    closers.append(server.close)
