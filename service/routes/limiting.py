"""Applying rate limits from a route: one call, 429 problem when over a limit."""

from __future__ import annotations

from typing import Any

from litestar import Request

from service import metrics
from service.auth import bearer
from service.problems import Problem
from service.ratelimit import RouteClass, client_ip, key_identity
from service.state import Services


async def limit(
    request: Request[Any, Any, Any],
    services: Services,
    what: RouteClass | None,
    subject: str | None = None,
) -> None:
    """Count this request against its route class `what` (per `subject`, or per client IP
    when no subject is given) and, when it carries an API key, against that key; raise a
    429 problem when over a limit. `what=None` counts against the key only."""
    limits = services.limits
    if not limits.enabled or services.breakers.redis.skipping:
        return  # limits live in Redis: while it is skipped, requests are not limited
    checks: list[tuple[RouteClass, str]] = []
    if what is not None:
        if subject is None:
            peer = request.client.host if request.client else None
            subject = client_ip(peer, request.headers, limits.proxies, limits.ip_header)
        checks.append((what, subject))
    key = bearer(request.headers)
    if key is not None:
        checks.append(("per_key", key_identity(key)))
    if not checks:
        return
    decision = await limits.check(checks)
    if decision is None:
        return
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(decision.what).inc()
        raise Problem(
            429,
            "Too many requests",
            f"over the {decision.what.replace('_', ' ')} limit of {decision.limit}; "
            f"retry in {max(1, decision.reset_s)}s",
            headers=decision.headers,
            extra={"limit": decision.what},
        )
    request.scope["state"]["ratelimit"] = decision
