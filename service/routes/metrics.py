"""Prometheus exposition at `/metrics`."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from service import health, metrics, poolstats
from service.state import Services


@get("/metrics", tags=["health"], summary="Prometheus metrics.", include_in_schema=True)
async def scrape(services: NamedDependency[Services]) -> Response[bytes]:
    """Every process's series (multiprocess mode) plus stream length, lag and pending."""
    state = await health.stream_state(services)
    services.pools.sample()  # this process's pools as of now; the others' are <= 1 s old
    if folder := poolstats.multiprocess_dir():
        poolstats.forget_dead(folder)
    stats = metrics.StreamStats(state.length, state.lag, state.pending)
    return Response(
        metrics.render(stats),
        media_type=metrics.CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )


ROUTES = [scrape]
