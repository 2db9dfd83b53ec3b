"""The hot path: the GETs frontends poll many times a second, answered before Litestar.

A top page, a player's rank and around-me are most of the traffic. Litestar's routing,
parameter parsing, dependency injection and response objects cost more per request than
the read itself (a constant JSON answer: ~9,000 req/s through Litestar on one granian
worker here, ~19,800 req/s from a bare ASGI callable). `Hygiene` asks this
layer first (request ids, security headers, metrics and the access log stay the same), and
it answers a request itself only when it can give exactly the route's answer:
well-formed parameters, a known board, an authorized caller within its limits, and a page
from the page cache or from Redis. Everything else (a bad parameter, an unknown board,
401/403/429, an unranked player, a missing set, Redis down, CORS, HEAD) is passed to
Litestar untouched, which answers it in full. Both paths build their answers with the same
functions (`service.answers`); tests/test_hotreads.py checks they answer alike.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from litestar import Litestar
from litestar.types import Scope

from service import answers, metrics, ranking
from service.auth import authorize
from service.models import BOARD_ID_PATTERN, PLAYER_ID_PATTERN
from service.pagecache import Page
from service.ratelimit import Decision, RouteClass
from service.routes.limiting import check
from service.state import Services

_BOARD = f"(?P<board>{BOARD_ID_PATTERN[1:-1]})"  # the id rules, without their anchors
_PLAYER = f"(?P<player>{PLAYER_ID_PATTERN[1:-1]})"
_ROUTE = re.compile(rf"^/v1/leaderboards/{_BOARD}/(?:top|players/{_PLAYER}(?P<around>/around)?)$")
TEMPLATES = {  # as Litestar names them, so metrics and logs do not tell the paths apart
    "top": "/v1/leaderboards/{board_id}/top",
    "player": "/v1/leaderboards/{board_id}/players/{player_id}",
    "around": "/v1/leaderboards/{board_id}/players/{player_id}/around",
}
_ANSWERED = metrics.buffered_counter(metrics.HOT_READS, "answered")
_PASSED = metrics.buffered_counter(metrics.HOT_READS, "passed")
_NUMBER = re.compile(r"^(0|[1-9][0-9]{0,8})$")  # what Litestar takes for an int, or less
_JSON = (b"content-type", b"application/json")


class _Pass(Exception):
    """Not for the hot path: Litestar answers this request."""


class HotAnswer(NamedTuple):
    """A read answered here: `headers` are the read's own (Hygiene adds its headers)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    template: str
    decision: Decision | None


def _parameters(query: str) -> dict[str, str]:
    """The query's parameters; the common plain `a=1&b=2` without the general parser."""
    if not query:
        return {}
    if "%" in query or "+" in query or ";" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
    else:
        pairs = [(k, v) for k, _, v in (p.partition("=") for p in query.split("&") if p)]
    params = dict(pairs)
    if len(params) != len(pairs):
        raise _Pass  # a repeated parameter: Litestar decides what it means
    return params


def _number(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not _NUMBER.match(raw):
        raise _Pass
    value = int(raw)
    if not low <= value <= high:
        raise _Pass
    return value


class HotReads:
    """Answers the polled GETs of `app` (the Litestar application) when it can."""

    def __init__(self, app: Litestar) -> None:
        self.app = app
        self.cors = bool(app.cors_config)
        self._services: Services | None = None
        self._wanted: frozenset[bytes] = frozenset()

    def _ready(self) -> Services | None:
        if self._services is None:
            services: Services | None = getattr(self.app.state, "services", None)
            if services is not None:
                # Only these request headers matter here; the rest are never decoded.
                names = {"authorization", "if-none-match", "origin", "x-forwarded-for"}
                names.add(services.limits.ip_header.lower())
                self._wanted = frozenset(n.encode() for n in names)
            self._services = services
        return self._services

    async def answer(self, scope: Scope) -> HotAnswer | None:
        """The answer to a GET, or None when Litestar must answer it."""
        services = self._ready()
        if services is None:
            return None
        path: str = scope["path"]
        root = scope.get("root_path")
        if root:
            path = root + path
        found = _ROUTE.match(path)
        if found is None:
            return None  # not a polled read: neither answered nor passed on
        try:
            answer = await self._answer(services, scope, path, found)
        # Anything unusual, a failing dependency included (Postgres while the board cache
        # reloads, a pool closing at shutdown): Litestar answers it, with a problem.
        except Exception:
            _PASSED.inc()
            return None
        _ANSWERED.inc()
        return answer

    async def _answer(
        self, services: Services, scope: Scope, path: str, found: re.Match[str]
    ) -> HotAnswer:
        kind = "top" if found["player"] is None else "around" if found["around"] else "player"
        query = scope.get("query_string", b"").decode()
        params = _parameters(query)
        wanted = self._wanted
        headers = {
            bytes(k).decode("latin-1"): bytes(v).decode("latin-1")
            for k, v in scope["headers"]
            if k in wanted
        }
        if self.cors and "origin" in headers:
            raise _Pass
        board = await services.boards.get(found["board"])
        now = datetime.now(UTC)
        target = answers.resolve(board, params.get("window"), params.get("period", "current"), now)
        read = self._reader(services, kind, target, found, params)
        await authorize(services.keys, headers, "reader", services.settings.public_reads)
        page = await answers.cached_from_redis(services, path, query, target, read)
        if page is None:
            raise _Pass
        # Counted last, once the answer is certain: a request passed on is counted there.
        what: RouteClass = "board_queries" if kind == "top" else "rank_lookups"
        client = scope.get("client")
        decision = await check(services, what, None, client[0] if client else None, headers)
        etag = page.etag
        if etag is not None and answers.matches(headers.get("if-none-match"), etag):
            out = self._headers(services, page)
            out.append((b"content-length", b"0"))
            return HotAnswer(304, out, b"", TEMPLATES[kind], decision)
        out = self._headers(services, page)
        out.append(_JSON)
        out.append((b"content-length", b"%d" % len(page.body)))
        return HotAnswer(200, out, page.body, TEMPLATES[kind], decision)

    @staticmethod
    def _headers(services: Services, page: Page) -> list[tuple[bytes, bytes]]:
        """The read's headers (answers.headers), encoded once per page."""
        if not page.wire_headers:
            described = answers.headers(services, page).items()
            page.wire_headers.extend((k.lower().encode(), v.encode()) for k, v in described)
        return list(page.wire_headers)

    @staticmethod
    def _reader(
        services: Services,
        kind: str,
        target: answers.Target,
        found: re.Match[str],
        params: dict[str, str],
    ) -> Callable[[ranking.ReadMeta], Awaitable[Any]]:
        board, win, per, link = target.board, target.window, target.period, services.reads
        if kind == "top":
            limit = _number(params, "limit", 10, 1, 100)
            offset = _number(params, "offset", 0, 0, 10**9)
            cursor = params.get("cursor")
            if cursor is not None:
                if offset:
                    raise _Pass
                try:
                    ranking.decode_cursor(cursor)
                except ranking.BadCursor:
                    raise _Pass from None
            return lambda meta: ranking.top(link, board, win, per, limit, offset, cursor, meta=meta)
        player = found["player"]
        if kind == "player":
            return lambda meta: ranking.player_rank(
                link, board, win, per, player, strict=True, meta=meta
            )
        radius = _number(params, "radius", 5, 0, 50)
        return lambda meta: ranking.around(link, board, win, per, player, radius, meta=meta)
