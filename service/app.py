"""Builds the Litestar application."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from service import background, logs, metrics, problems, stream
from service.connections import pg_pool, redis_client
from service.hotreads import HotReads
from service.hygiene import Hygiene
from service.routes import admin, boards, health, rankings, scores
from service.routes import metrics as metrics_routes
from service.settings import Settings
from service.state import Services

GC_THRESHOLDS = (20_000, 50, 100)  # CPython's default is (700, 10, 10)


def create_app(settings: Settings | None = None) -> Litestar:
    """The API, wired to the servers named in settings (read from the environment if None)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        logs.configure(settings)
        services = Services.build(settings, redis_client(settings), await pg_pool(settings))
        app.state.services = services
        await stream.ensure_group(services.redis, settings.stream_key, settings.consumer_group)
        services.pages.start()
        services.pools.start()
        # Everything made so far lives as long as the process: keep it out of the
        # collector's full passes, which otherwise stalled a worker for ~50 ms under load
        # (seen as p99 spikes), and let young objects pile up longer between passes.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        flusher = asyncio.create_task(metrics.flush_periodically())
        try:
            yield
        finally:
            await background.cancel_and_wait(flusher)
            await services.close()

    def provide_services(state: State) -> Services:
        services: Services = state.services
        return services

    app = Litestar(
        route_handlers=[
            *health.ROUTES,
            *metrics_routes.ROUTES,
            *boards.ROUTES,
            *scores.ROUTES,
            *rankings.ROUTES,
            *admin.ROUTES,
        ],
        lifespan=[lifespan],
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        plugins=[problems.plugin()],
        exception_handlers={Exception: problems.internal_error},
        openapi_config=OpenAPIConfig(
            title="rankstream", version="1.0.0", path="/schema", description=__doc__
        ),
        request_max_body_size=settings.max_body_bytes,
        cors_config=_cors(settings),
        debug=False,
    )
    # Around everything Litestar does (routing, CORS, problem details), so every answer,
    # 404s of unknown paths included, gets request id, security headers, log and metrics.
    hot = HotReads(app) if settings.hot_reads else None
    app.asgi_handler = Hygiene(app.asgi_handler, settings, hot)
    return app


def _cors(settings: Settings) -> CORSConfig | None:
    """CORS from RANKSTREAM_CORS_ORIGINS (comma-separated; off when empty)."""
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID", "If-None-Match"],
        expose_headers=[
            "ETag", "X-Request-ID", "Retry-After", "X-Rankstream-Source",
            "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
        ],
        max_age=600,
    )  # fmt: skip
