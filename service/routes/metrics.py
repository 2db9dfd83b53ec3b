"""Prometheus exposition at `/metrics`."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from service import health, metrics
from service.state import Services


@get("/metrics", tags=["health"], summary="Prometheus metrics.", include_in_schema=True)
async def scrape(services: NamedDependency[Services]) -> Response[bytes]:
    """Every process's series (multiprocess mode) plus stream length, lag and pending."""
    state = await health.stream_state(services)
    stats = metrics.StreamStats(state.length, state.lag, state.pending)
    return Response(
        metrics.render(stats),
        media_type=metrics.CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )


ROUTES = [scrape]
