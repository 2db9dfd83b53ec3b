"""Applying rate limits from a route: one call, 429 problem when over a limit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from litestar import Request

from service import metrics
from service.auth import bearer
from service.problems import Problem
from service.ratelimit import Decision, RouteClass, client_ip, key_identity
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
    peer = request.client.host if request.client else None
    decision = await check(services, what, subject, peer, request.headers)
    if decision is not None:
        request.scope["state"]["ratelimit"] = decision


async def check(
    services: Services,
    what: RouteClass | None,
    subject: str | None,
    peer: str | None,
    headers: Mapping[str, str],
) -> Decision | None:
    """`limit` without a Litestar request (the hot path calls it): the decision whose
    headers the answer carries, None when nothing was counted; 429 problem when over."""
    limits = services.limits
    if not limits.enabled or services.breakers.redis.skipping:
        return None  # limits live in Redis: while it is skipped, requests are not limited
    checks: list[tuple[RouteClass, str]] = []
    if what is not None:
        if subject is None:
            subject = client_ip(peer, headers, limits.proxies, limits.ip_header)
        checks.append((what, subject))
    key = bearer(headers)
    if key is not None:
        checks.append(("per_key", key_identity(key)))
    if not checks:
        return None
    decision = await limits.check(checks)
    if decision is None:
        return None
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
    return decision


async def limit_admin(request: Request[Any, Any, Any], services: Services) -> None:
    """Count a request to an admin route against its admin key (and, as every keyed
    request, against the key's `per_key` budget). Call after `authorize`: only known admin
    keys get counters, so unknown keys cannot fill Redis with them."""
    key = bearer(request.headers)
    await limit(request, services, "admin", key_identity(key) if key else None)


@dataclass(frozen=True)
class Counted:
    """One item of a request that counts on its own, e.g. each submission of a batch."""

    subject: str  # what it counts against, e.g. "board:player"
    field: str  # names the item in a refusal, e.g. "submissions[3].player_id"
    label: str  # names it for people, e.g. "player 'p1' on board 'b'"


async def limit_items(
    request: Request[Any, Any, Any],
    services: Services,
    what: RouteClass,
    items: Sequence[Counted],
) -> None:
    """Count every item against its subject's `what` limit, all or nothing: when one
    subject has no room for all its items, raise a 429 problem naming its first item, and
    count none (see `RateLimits.check_all` for the one race where some counts stay)."""
    limits = services.limits
    if not limits.enabled or services.breakers.redis.skipping:
        return  # as `limit`: while Redis is skipped, requests are not limited
    costs = Counter(item.subject for item in items)
    refusal = await limits.check_all(what, costs)
    if refusal is None:
        return
    decision = refusal.decision
    item = next(i for i in items if i.subject == refusal.identity)
    metrics.RATE_LIMITED.labels(what).inc()
    raise Problem(
        429,
        "Too many requests",
        f"{item.field}: {item.label} is over the {what.replace('_', ' ')} limit of "
        f"{decision.limit} ({costs[item.subject]} in this request, {decision.remaining} "
        f"left); nothing of the request was accepted; retry in {max(1, decision.reset_s)}s",
        field=item.field,
        headers=decision.headers,
        extra={"limit": what},
    )
