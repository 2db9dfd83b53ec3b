"""The hot path: the GETs frontends poll many times a second, answered before Litestar.

A top page, a player's rank and around-me are most of the traffic. Litestar's routing,
parameter parsing, dependency injection and response objects cost more per request than
the read itself (a constant JSON answer: ~9,000 req/s through Litestar on one granian
worker here, ~19,800 req/s from a bare ASGI callable). This layer sits inside `Hygiene`
(request ids, security headers, metrics and the access log stay the same) and in front of
Litestar, and answers a request itself only when it can give exactly the route's answer:
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
from typing import Any
from urllib.parse import parse_qsl

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from service import answers, boards, metrics, ranking
from service.auth import authorize
from service.models import BOARD_ID_PATTERN, PLAYER_ID_PATTERN
from service.pagecache import Page
from service.problems import Problem
from service.ratelimit import RouteClass
from service.routes.limiting import check
from service.state import Services

_BOARD = f"(?P<board>{BOARD_ID_PATTERN[1:-1]})"  # the id rules, without their anchors
_PLAYER = f"(?P<player>{PLAYER_ID_PATTERN[1:-1]})"
_ROUTES = [
    (re.compile(rf"^/v1/leaderboards/{_BOARD}/top$"), "top"),
    (re.compile(rf"^/v1/leaderboards/{_BOARD}/players/{_PLAYER}$"), "player"),
    (re.compile(rf"^/v1/leaderboards/{_BOARD}/players/{_PLAYER}/around$"), "around"),
]
TEMPLATES = {  # as Litestar names them, so metrics and logs do not tell the paths apart
    "top": "/v1/leaderboards/{board_id}/top",
    "player": "/v1/leaderboards/{board_id}/players/{player_id}",
    "around": "/v1/leaderboards/{board_id}/players/{player_id}/around",
}
_ANSWERED = metrics.HOT_READS.labels("answered")
_PASSED = metrics.HOT_READS.labels("passed")
_NUMBER = re.compile(r"^(0|[1-9][0-9]{0,8})$")  # what Litestar takes for an int, or less


class _Pass(Exception):
    """Not for the hot path: Litestar answers this request."""


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
    """The ASGI layer; `app` is the Litestar application it stands in front of."""

    def __init__(self, app: Litestar, inner: ASGIApp) -> None:
        self.app = app
        self.inner = inner
        self.cors = bool(app.cors_config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["method"] == "GET":
            services: Services | None = getattr(self.app.state, "services", None)
            if services is not None:
                try:
                    page, status, headers = await self._answer(services, scope)
                # ValueError: answers.BadParameter, and a query that is not UTF-8.
                except (_Pass, Problem, boards.UnknownBoard, ValueError):
                    _PASSED.inc()
                else:
                    _ANSWERED.inc()
                    await _send(send, page, status, headers)
                    return
        await self.inner(scope, receive, send)

    async def _answer(
        self, services: Services, scope: Scope
    ) -> tuple[Page, int, list[tuple[bytes, bytes]]]:
        path: str = scope.get("root_path", "") + scope["path"]
        for pattern, kind in _ROUTES:  # noqa: B007 - `kind` is used after the loop
            found = pattern.match(path)
            if found is not None:
                break
        else:
            raise _Pass
        query = scope.get("query_string", b"").decode()
        params = _parameters(query)
        headers = {
            bytes(k).decode("latin-1"): bytes(v).decode("latin-1") for k, v in scope["headers"]
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
        if decision is not None:
            scope.setdefault("state", {})["ratelimit"] = decision  # for Hygiene's headers
        scope["path_template"] = TEMPLATES[kind]
        status = 200
        if page.etag is not None and answers.matches(headers.get("if-none-match"), page.etag):
            status = 304
        out = [(k.lower().encode(), v.encode()) for k, v in answers.headers(services, page).items()]
        return page, status, out

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


async def _send(send: Send, page: Page, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    body = page.body if status == 200 else b""
    if status == 200:
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
