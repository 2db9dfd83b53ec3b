"""Admin routes: background rebuilds and their jobs, moderation (bans, removals, erasure,
board deletion). Every route needs the admin role and counts against the `admin` rate
limit of its key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from service import dead_letters, jobs, moderation, periods, rebuild, recompute
from service.auth import authorize
from service.boards import UnknownBoard
from service.models import BoardId, PlayerId, Window
from service.problems import Problem, invalid
from service.routes import openapi
from service.routes.boards import find_board, unknown_board
from service.routes.limiting import limit_admin
from service.state import Services

log = logging.getLogger("rankstream.admin")

SETTLE_S = 2.0  # second pass of a removal, after writes in flight have landed

# Background tasks of this process: referenced here so they are not garbage-collected.
_TASKS: set[asyncio.Task[Any]] = set()


def _background(coro: Coroutine[Any, Any, Any], what: str) -> None:
    async def guarded() -> None:
        try:
            await coro
        except Exception:
            log.exception("background %s failed", what)

    task = asyncio.create_task(guarded())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


class JobAccepted(msgspec.Struct, frozen=True):
    """Answer of a request that started a background job."""

    job_id: Annotated[str, msgspec.Meta(examples=["4c1d9e2a7b3f5a60"])]
    status_url: Annotated[str, msgspec.Meta(examples=["/v1/admin/jobs/4c1d9e2a7b3f5a60"])]


async def _admin(request: Request, services: Services) -> None:  # type: ignore[type-arg]
    await authorize(services.keys, request.headers, "admin", services.settings.public_reads)
    await limit_admin(request, services)


@post(
    "/v1/admin/leaderboards/{board_id:str}/rebuild",
    tags=["admin"],
    summary="Rebuild a board's rankings from Postgres in the background (admin).",
    status_code=202,
    responses=openapi.errors(openapi.FORBIDDEN, openapi.UNKNOWN_BOARD, openapi.INVALID),
)
async def start_rebuild(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    board_id: BoardId = openapi.BOARD_ID,
    window: Window | None = Parameter(default=None, description="Only this window."),
    period: str | None = Parameter(
        default=None, description="Only this period of `window` (`current`, `previous`, id)."
    ),
    from_events: bool = Parameter(
        default=False,
        description="First recompute the board's scores from its events (e.g. after changing"
        " its operator); every window.",
    ),
) -> JobAccepted:
    """202 with a job id; `GET /v1/admin/jobs/{id}` follows its progress."""
    await _admin(request, services)
    board = await find_board(services, board_id)
    if from_events and window is not None:
        raise invalid("window", "from_events recomputes every window: leave window out")
    if window is not None and window not in board.windows:
        raise invalid("window", f"must be one of {', '.join(board.windows)} on this board")
    if period is not None:
        if window is None:
            raise invalid("period", "needs a window")
        try:
            period = periods.resolve(window, period, datetime.now(UTC))
        except ValueError as exc:
            raise invalid("period", str(exc)) from None
    job_id = await jobs.create_job(services.redis, "rebuild", board.id, window, period)

    async def work(progress: rebuild.Progress) -> rebuild.RebuildReport:
        if from_events:  # part of the job: the rebuild reads what the recompute wrote
            await recompute.recompute_board(services.pg, board)
        return await rebuild.rebuild_board(
            services.redis,
            services.pg,
            board,
            retention=services.settings.retention_periods,
            window=window,
            period=period,
            progress=progress,
        )

    _background(jobs.run_job(services.redis, job_id, work), f"rebuild job {job_id}")
    return JobAccepted(job_id=job_id, status_url=f"/v1/admin/jobs/{job_id}")


@get(
    "/v1/admin/jobs/{job_id:str}",
    tags=["admin"],
    summary="A background job's progress.",
    responses=openapi.errors(openapi.FORBIDDEN, openapi.UNKNOWN_JOB),
)
async def get_job(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    job_id: str = openapi.JOB_ID,
) -> jobs.JobView:
    """State (`queued`, `running`, `done`, `failed`), rows done of total, the report."""
    await _admin(request, services)
    view = await jobs.job_view(services.redis, job_id)
    if view is None:
        raise Problem(404, "Unknown job", f"no job {job_id!r}", field="job_id")
    return view


async def _ban(services: Services, player_id: str, banned: bool) -> moderation.BanResult:
    await services.boards.reload()
    return await moderation.set_banned(
        services.redis,
        services.pg,
        services.boards.boards,
        player_id,
        banned,
        services.settings.retention_periods,
    )


@post(
    "/v1/admin/players/{player_id:str}/ban",
    tags=["admin"],
    summary="Ban a player: hidden from every board, later submissions ignored (admin).",
    status_code=200,
    responses=openapi.errors(openapi.FORBIDDEN, openapi.INVALID),
)
async def ban_player(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    player_id: PlayerId = openapi.PLAYER_ID,
) -> moderation.BanResult:
    """Flag the player and remove them from every sorted set."""
    await _admin(request, services)
    result = await _ban(services, player_id, True)
    _background(
        moderation.settle_ban(
            services.redis,
            services.pg,
            services.boards.boards,
            player_id,
            services.settings.retention_periods,
            SETTLE_S,
        ),
        "ban",
    )
    return result


@delete(
    "/v1/admin/players/{player_id:str}/ban",
    tags=["admin"],
    summary="Unban a player: their entries come back (admin).",
    status_code=200,
    responses=openapi.errors(openapi.FORBIDDEN, openapi.INVALID),
)
async def unban_player(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    player_id: PlayerId = openapi.PLAYER_ID,
) -> moderation.BanResult:
    """Clear the flag and put the player's rows back into the sets."""
    await _admin(request, services)
    return await _ban(services, player_id, False)


@delete(
    "/v1/leaderboards/{board_id:str}/players/{player_id:str}",
    tags=["admin"],
    summary="Remove one player's entry from a board (admin).",
    responses=openapi.errors(openapi.FORBIDDEN, openapi.INVALID, openapi.NO_ENTRY),
)
async def remove_entry(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    board_id: BoardId = openapi.BOARD_ID,
    player_id: PlayerId = openapi.PLAYER_ID,
) -> None:
    """204; 404 when the player has no entry on the board."""
    await _admin(request, services)
    board = await find_board(services, board_id)
    try:
        targets = await moderation.remove_entry(services.redis, services.pg, board, player_id)
    except moderation.UnknownPlayer:
        raise Problem(
            404, "No entry", f"{player_id!r} has no entry on {board_id!r}", field="player_id"
        ) from None
    _background(moderation.settle(services.redis, services.pg, targets, SETTLE_S), "entry removal")


@delete(
    "/v1/players/{player_id:str}",
    tags=["admin"],
    summary="Erase a player everywhere (GDPR) (admin).",
    status_code=200,
    responses=openapi.errors(openapi.FORBIDDEN, openapi.INVALID, openapi.UNKNOWN_PLAYER),
)
async def erase_player(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    player_id: PlayerId = openapi.PLAYER_ID,
) -> moderation.EraseResult:
    """Profile, scores, events and every Redis member and name; 404 if nothing is stored."""
    await _admin(request, services)
    await services.boards.reload()
    try:
        result, targets = await moderation.erase_player(
            services.redis, services.pg, services.boards.boards, player_id
        )
    except moderation.UnknownPlayer:
        raise Problem(
            404, "Unknown player", f"nothing is stored about {player_id!r}", field="player_id"
        ) from None
    _background(moderation.settle(services.redis, services.pg, targets, SETTLE_S), "erasure")
    return result


@delete(
    "/v1/leaderboards/{board_id:str}",
    tags=["admin"],
    summary="Delete a board with all its data (admin).",
    responses=openapi.errors(openapi.FORBIDDEN, openapi.UNKNOWN_BOARD, openapi.INVALID),
)
async def delete_board(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    board_id: BoardId = openapi.BOARD_ID,
) -> None:
    """204: configuration, rows, events and every Redis key of the board are gone."""
    await _admin(request, services)
    try:
        await moderation.delete_board(services.redis, services.pg, board_id)
    except UnknownBoard:
        raise unknown_board(board_id) from None
    await services.boards.reload()
    delay = services.settings.board_cache_ttl_s + 1.0
    _background(
        moderation.settle_board(services.redis, services.pg, board_id, delay), "board deletion"
    )


class DeadLetterList(msgspec.Struct, frozen=True):
    """Dead letters, oldest first."""

    dead_letters: list[dead_letters.DeadLetter]


class ReplayRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which dead letters to replay: the given ids, or (null) every one not replayed yet."""

    ids: list[Annotated[int, msgspec.Meta(ge=1)]] | None = msgspec.field(default=None)


@get(
    "/v1/admin/dead-letters",
    tags=["admin"],
    summary="Dead letters (admin).",
    responses=openapi.errors(openapi.FORBIDDEN, openapi.INVALID),
)
async def list_dead_letters(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    replayed: bool = Parameter(default=False, description="Include replayed ones too."),
    limit: int = Parameter(
        default=100, ge=1, le=dead_letters.LIST_LIMIT, description="Most entries listed."
    ),
) -> DeadLetterList:
    """Poison entries the consumers set aside, with what could be decoded of them."""
    await _admin(request, services)
    found = await dead_letters.list_dead_letters(services.pg, replayed=replayed, limit=limit)
    return DeadLetterList(dead_letters=found)


@post(
    "/v1/admin/dead-letters/replay",
    tags=["admin"],
    summary="Replay dead letters into the submission stream (admin).",
    status_code=200,
    responses=openapi.errors(openapi.MALFORMED, openapi.FORBIDDEN, openapi.INVALID),
)
async def replay_dead_letters(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    data: JSONBody[ReplayRequest],
) -> dead_letters.ReplayResult:
    """Each is applied at most once (its event_id); undecodable ones are left alone."""
    await _admin(request, services)
    if data.ids is not None and not data.ids:
        raise invalid("ids", "must not be empty (send null to replay every one)")
    return await dead_letters.replay(
        services.redis, services.pg, services.settings.stream_key, data.ids
    )


ROUTES = [
    list_dead_letters,
    replay_dead_letters,
    start_rebuild,
    get_job,
    ban_player,
    unban_player,
    remove_entry,
    erase_player,
    delete_board,
]
