"""Every HTTP answer: request id, security headers, rate-limit headers, access log, metrics.

A plain ASGI middleware wrapped around the whole Litestar handler (so 404s of unknown
paths, 405s and 413s get the same treatment as routed answers).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_from_bytes

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.logs import fields
from service.ratelimit import Decision, parse_networks, peer_is_trusted
from service.settings import Settings

if TYPE_CHECKING:
    from service.hotreads import HotAnswer, HotReads

log = logging.getLogger("rankstream.access")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
SUBMISSION_ROUTES = frozenset({"/v1/leaderboards/{board_id}/scores", "/v1/scores/batch"})
ADMIN_PREFIXES = ("/v1/admin",)
QUIET_ROUTES = frozenset({"/health/live", "/health/ready", "/metrics"})
_QUERY_SAFE = "&=%+;/?:@,$!*'()~"
_STATIC_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


# Fresh ids: a random prefix per process and a counter. As unique as uuid4 for our purpose
# and a tenth of its cost, which shows at thousands of requests a second.
_id_prefix = os.urandom(8).hex()
_id_numbers = itertools.count(1)


def _new_prefix() -> None:
    global _id_prefix, _id_numbers
    _id_prefix, _id_numbers = os.urandom(8).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_new_prefix)  # forked workers must not share ids


def normalize_request_id(value: str | None) -> str:
    """The caller's `X-Request-ID` when it is a sane token, a fresh one otherwise."""
    if value and _SANE_ID.match(value):
        return value
    return f"{_id_prefix}{next(_id_numbers):016x}"


def request_id_of(scope: Scope | Any) -> str | None:
    """The normalized request id of a request (or its scope)."""
    state = (
        scope.get("state") if isinstance(scope, dict) else getattr(scope, "scope", {}).get("state")
    )
    value = (state or {}).get("request_id")
    return value if isinstance(value, str) else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def is_admin_path(path: str) -> bool:
    """Routes whose answers must never be stored by a cache."""
    return path.startswith(ADMIN_PREFIXES)


class Hygiene:
    """The middleware; one per app. `hot` (service.hotreads) may answer a GET first."""

    def __init__(self, app: ASGIApp, settings: Settings, hot: HotReads | None = None) -> None:
        self.app = app
        self.hot = hot
        self.hsts = f"max-age={settings.hsts_max_age}; includeSubDomains".encode()
        self.proxies = parse_networks(settings.trusted_proxies)
        # Label lookups cost as much as the updates: keep each (method, route, status)'s
        # children. Bounded: route templates, methods and statuses are few.
        self._series: dict[
            tuple[str, str, int], tuple[metrics.BufferedCounter, metrics.BufferedHistogram]
        ] = {}

    def _https(self, scope: Scope) -> bool:
        if scope.get("scheme") == "https":
            return True
        client = scope.get("client")
        peer = client[0] if client else None
        if peer_is_trusted(peer, self.proxies):
            proto = _header(scope, b"x-forwarded-proto") or ""
            return proto.split(",")[0].strip().lower() == "https"
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, REQUEST_ID_HEADER)
        request_id = normalize_request_id(given)
        query = scope.get("query_string", b"")
        if query and not query.isascii():
            # HTTP clients percent-encode, but a raw non-ASCII byte made Litestar fail with
            # a 500; escaped, the value is validated like any other (a 4xx naming it).
            scope["query_string"] = quote_from_bytes(query, safe=_QUERY_SAFE).encode()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        if self.hot is not None and scope["method"] == "GET":
            answer = await self.hot.answer(scope)
            if answer is not None:
                await self._send_hot(scope, send, answer, request_id)
                self._record("GET", answer.template, answer.status, started, request_id)
                return
        if given is None:
            scope["headers"] = [*scope["headers"], (REQUEST_ID_HEADER, request_id.encode())]
        elif given != request_id:
            scope["headers"] = [
                *((k, v) for k, v in scope["headers"] if k != REQUEST_ID_HEADER),
                (REQUEST_ID_HEADER, request_id.encode()),
            ]
        https = self._https(scope)
        admin = is_admin_path(scope["path"])
        status = 500

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                present = {bytes(k).lower() for k, _ in headers}
                decision = state.get("ratelimit")
                headers += self._ours(
                    request_id, https, decision if isinstance(decision, Decision) else None, present
                )
                if admin:
                    headers = [h for h in headers if bytes(h[0]).lower() != b"cache-control"]
                    headers.append((b"cache-control", b"no-store"))
                elif b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            route = scope.get("path_template") or "unmatched"  # never raw paths
            self._record(str(scope.get("method", "GET")), route, status, started, request_id)

    def _ours(
        self,
        request_id: str,
        https: bool,
        decision: Decision | None,
        present: frozenset[bytes] | set[bytes] = frozenset(),
    ) -> list[tuple[bytes, bytes]]:
        """The headers every answer gets from here, less those the answer already has."""
        out = [(REQUEST_ID_HEADER, request_id.encode())]
        out += [h for h in _STATIC_HEADERS if h[0] not in present]
        if https:
            out.append((b"strict-transport-security", self.hsts))
        if decision is not None and b"ratelimit-limit" not in present:
            out += [(k.lower().encode(), v.encode()) for k, v in decision.headers.items()]
        return out

    async def _send_hot(self, scope: Scope, send: Send, answer: HotAnswer, request_id: str) -> None:
        """A hot-path answer (its own headers carry Cache-Control, none of ours)."""
        headers = answer.headers
        headers += self._ours(request_id, self._https(scope), answer.decision)
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body, "more_body": False})

    def _record(
        self, method: str, route: str, status: int, started: float, request_id: str
    ) -> None:
        elapsed = time.perf_counter() - started
        series = self._series.get((method, route, status))
        if series is None:
            labels = (method, route, str(status))
            series = (
                metrics.buffered_counter(metrics.HTTP_REQUESTS, *labels),
                metrics.buffered_histogram(metrics.HTTP_LATENCY, *labels),
            )
            self._series[(method, route, status)] = series
        series[0].inc()
        series[1].observe(elapsed)
        if route in SUBMISSION_ROUTES and status >= 400:
            metrics.SUBMISSIONS_REJECTED.labels(str(status)).inc()
        level = logging.DEBUG if route in QUIET_ROUTES and status < 500 else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "request",
                extra=fields(
                    method=method,
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    request_id=request_id,
                ),
            )
