"""Ranking reads: top pages, a player's rank, around-me and friends boards.

Where answers come from, their ETags and the page cache: `service.answers`. GETs honour
`If-None-Match` with 304 and send a short `Cache-Control`; `X-Rankstream-Source` says
whether Redis or Postgres answered. The hottest GETs usually never reach these routes:
`service.hotreads` answers them first when nothing unusual is asked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, Parameter

from service import answers, pgranking, ranking
from service.answers import SOURCE_HEADER, Target
from service.auth import authorize
from service.models import (
    AroundPage,
    BoardId,
    PlayerId,
    PlayerRank,
    RanksPage,
    RanksRequest,
    TopPage,
    Window,
)
from service.pagecache import Page
from service.problems import Problem, invalid
from service.ratelimit import RouteClass
from service.routes import openapi
from service.routes.boards import find_board
from service.routes.limiting import limit
from service.state import Services

_HEADERS = [
    ResponseHeader(
        name="ETag",
        description="Weak validator from the board's revision counter and the request.",
        documentation_only=True,
    ),
    ResponseHeader(
        name="Cache-Control", description="public, max-age=<seconds>", documentation_only=True
    ),
    ResponseHeader(
        name=SOURCE_HEADER,
        description="`redis`, or `postgres` when the answer was read from Postgres.",
        documentation_only=True,
    ),
]


_UNKNOWN_BOARD = openapi.problem(
    404,
    "Unknown leaderboard, or the player is unranked",
    "Player not ranked",
    "'player:42' has no rank on 'arena-season-3' (all all)",
    "player_id",
)
_NOT_MODIFIED = ResponseSpec(data_container=None, description="Not modified (If-None-Match).")
_GET_RESPONSES = {304: _NOT_MODIFIED, **openapi.errors(_UNKNOWN_BOARD, openapi.INVALID)}

WINDOW_PARAM = Parameter(
    default=None,
    description="`all`, `daily`, `weekly` or `monthly`; default: the board's first window.",
)
PERIOD_PARAM = Parameter(
    default="current",
    description="`current`, `previous`, or a period id of the window "
    "(`all`, `2026-11-22`, `2026-W47`, `2026-11`).",
)


async def _target(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    board_id: str,
    window: str | None,
    period: str,
    limited_as: RouteClass = "rank_lookups",
) -> Target:
    await authorize(services.keys, request.headers, "reader", services.settings.public_reads)
    await limit(request, services, limited_as)
    board = await find_board(services, board_id)
    try:
        return answers.resolve(board, window, period, datetime.now(UTC))
    except answers.BadParameter as exc:
        raise invalid(exc.field, str(exc)) from None


def _send(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    page: Page,
) -> Response[Any]:
    headers = answers.headers(services, page)
    if page.etag is not None and answers.matches(request.headers.get("if-none-match"), page.etag):
        return Response(content=None, status_code=304, headers=headers)
    return Response(content=page.body, headers=headers, media_type="application/json")


async def _cached_read(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    target: Target,
    from_redis: Callable[[ranking.ReadMeta], Awaitable[Any]],
    from_pg: Callable[[], Awaitable[Any]],
    empty: Callable[[], Any],
    missing: Callable[[str], Problem] | None = None,
) -> Response[Any]:
    """A GET answer from the page cache, or read, answered and (from Redis) cached."""
    url = request.url
    page, source = await answers.cached(
        services, url.path, url.query, target, from_redis, from_pg, empty
    )
    if page is None:
        assert missing is not None
        raise missing(source)
    return _send(request, services, page)


def _unranked(player_id: str, source: str) -> Problem:
    return Problem(
        404,
        "Player not ranked",
        f"{player_id!r} has no score in this period",
        field="player_id",
        headers={SOURCE_HEADER: source},
    )


@get(
    "/v1/leaderboards/{board_id:str}/top",
    tags=["rankings"],
    summary="A page of the leaderboard, best first.",
    response_headers=_HEADERS,
    responses=_GET_RESPONSES,
)
async def top(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    board_id: BoardId = openapi.BOARD_ID,
    window: Window | None = WINDOW_PARAM,
    period: str = PERIOD_PARAM,
    limit: int = Parameter(default=10, ge=1, le=100, description="Entries per page (1-100)."),
    offset: int = Parameter(default=0, ge=0, description="Entries to skip (not with cursor)."),
    cursor: str | None = Parameter(
        default=None,
        description="`next_cursor` of the previous page: continues after its last entry, "
        "so a player who did not move is never repeated or skipped.",
    ),
) -> Response[TopPage]:
    """`total`, `entries` ({rank, player_id, score, display_name}) and `next_cursor`.

    Ties: competition ranks (1, 2, 2, 4) listed by player_id on `shared` boards; unique
    ranks, earliest first, on `earliest` boards.
    """
    target = await _target(request, services, board_id, window, period, "board_queries")
    if cursor is not None:
        if offset:
            raise invalid("cursor", "cannot be combined with offset")
        try:
            ranking.decode_cursor(cursor)
        except ranking.BadCursor as exc:
            raise invalid("cursor", str(exc)) from None
    board, win, per = target.board, target.window, target.period

    return await _cached_read(
        request,
        services,
        target,
        lambda meta: ranking.top(services.reads, board, win, per, limit, offset, cursor, meta=meta),
        lambda: pgranking.top(services.pg, board, win, per, limit, offset, cursor),
        lambda: TopPage(window=win, period=per, total=0, entries=[], next_cursor=None),
    )


@get(
    "/v1/leaderboards/{board_id:str}/players/{player_id:str}",
    tags=["rankings"],
    summary="One player's rank, score and percentile.",
    response_headers=_HEADERS,
    responses=_GET_RESPONSES,
)
async def player(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    board_id: BoardId = openapi.BOARD_ID,
    player_id: PlayerId = openapi.PLAYER_ID,
    window: Window | None = WINDOW_PARAM,
    period: str = PERIOD_PARAM,
) -> Response[PlayerRank]:
    """`{rank, score, total, percentile}`; 404 problem when the player is unranked."""
    target = await _target(request, services, board_id, window, period)
    board, win, per = target.board, target.window, target.period
    return await _cached_read(
        request,
        services,
        target,
        lambda meta: ranking.player_rank(
            services.reads, board, win, per, player_id, strict=True, meta=meta
        ),
        lambda: pgranking.player_rank(services.pg, board, win, per, player_id),
        lambda: None,
        missing=lambda source: _unranked(player_id, source),
    )


@get(
    "/v1/leaderboards/{board_id:str}/players/{player_id:str}/around",
    tags=["rankings"],
    summary="A player and their neighbours.",
    response_headers=_HEADERS,
    responses=_GET_RESPONSES,
)
async def around(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    board_id: BoardId = openapi.BOARD_ID,
    player_id: PlayerId = openapi.PLAYER_ID,
    window: Window | None = WINDOW_PARAM,
    period: str = PERIOD_PARAM,
    radius: int = Parameter(
        default=5, ge=0, le=50, description="Entries either side (0-50), clipped at the ends."
    ),
) -> Response[AroundPage]:
    """The player and up to `radius` entries either side; 404 when the player is unranked."""
    target = await _target(request, services, board_id, window, period)
    board, win, per = target.board, target.window, target.period
    return await _cached_read(
        request,
        services,
        target,
        lambda meta: ranking.around(services.reads, board, win, per, player_id, radius, meta=meta),
        lambda: pgranking.around(services.pg, board, win, per, player_id, radius),
        lambda: None,
        missing=lambda source: _unranked(player_id, source),
    )


@post(
    "/v1/leaderboards/{board_id:str}/ranks",
    tags=["rankings"],
    summary="Ranks of up to 100 players (friends board).",
    status_code=200,
    response_headers=_HEADERS,
    responses=openapi.errors(openapi.MALFORMED, _UNKNOWN_BOARD, openapi.INVALID),
)
async def ranks(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    data: JSONBody[RanksRequest],
    board_id: BoardId = openapi.BOARD_ID,
    window: Window | None = WINDOW_PARAM,
    period: str = PERIOD_PARAM,
) -> Response[RanksPage]:
    """The ranked players among `player_ids` by rank; unranked ones in `missing`."""
    target = await _target(request, services, board_id, window, period)
    board, win, per = target.board, target.window, target.period
    ids = data.player_ids
    answer, source, revision = await answers.read(
        services,
        target,
        lambda meta: ranking.ranks_of(services.reads, board, win, per, ids, meta=meta),
        lambda: pgranking.ranks_of(services.pg, board, win, per, ids),
        lambda: RanksPage(
            window=win, period=per, total=0, entries=[], missing=list(dict.fromkeys(ids))
        ),
    )
    return _send(request, services, answers.page(False, answer, source, revision))


ROUTES = [top, player, around, ranks]
