"""Builds the Litestar application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from service import problems, stream
from service.connections import pg_pool, redis_client
from service.routes import boards, health, rankings, scores
from service.settings import Settings
from service.state import Services


def create_app(settings: Settings | None = None) -> Litestar:
    """The API, wired to the servers named in settings (read from the environment if None)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = Services.build(settings, redis_client(settings), await pg_pool(settings))
        app.state.services = services
        await stream.ensure_group(services.redis, settings.stream_key, settings.consumer_group)
        try:
            yield
        finally:
            await services.close()

    def provide_services(state: State) -> Services:
        services: Services = state.services
        return services

    return Litestar(
        route_handlers=[*health.ROUTES, *boards.ROUTES, *scores.ROUTES, *rankings.ROUTES],
        lifespan=[lifespan],
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        plugins=[problems.plugin()],
        exception_handlers={Exception: problems.internal_error},
        openapi_config=OpenAPIConfig(
            title="rankstream", version="1.0.0", path="/schema", description=__doc__
        ),
        request_max_body_size=settings.max_body_bytes,
        debug=False,
    )
