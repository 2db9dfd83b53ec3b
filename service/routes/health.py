"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency

from service.health import Readiness, Summary, check_ready, summary
from service.state import Services


class Live(msgspec.Struct, frozen=True):
    """Answer of `/health/live`."""

    status: str


@get("/health/live", tags=["health"], summary="The process is up.")
async def live() -> Live:
    """Liveness: answers while the process runs."""
    return Live("ok")


@get(
    "/health/ready",
    tags=["health"],
    summary="Redis and PostgreSQL answer, and the consumer group exists.",
)
async def ready(services: NamedDependency[Services]) -> Response[Readiness]:
    """Readiness: 200 when every dependency answers, 503 naming those that do not."""
    async with asyncio.timeout(5):
        state = await check_ready(services)
    return Response(state, status_code=200 if state.status == "ok" else 503)


@get("/health", tags=["health"], summary="Readiness, versions and stream backlog.")
async def health_summary(services: NamedDependency[Services]) -> Response[Summary]:
    """Versions of rankstream, Python, Redis and PostgreSQL, and the stream's length, lag
    and pending count; 503 when a dependency is down."""
    async with asyncio.timeout(5):
        state = await summary(services)
    return Response(state, status_code=200 if state.status == "ok" else 503)


ROUTES = [live, ready, health_summary]
