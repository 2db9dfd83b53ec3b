"""Leaderboard configuration routes."""

from __future__ import annotations

from datetime import UTC, datetime

from litestar import Request, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from service import boards, coldstart
from service.auth import authorize
from service.models import Board, BoardCreate, BoardId, BoardList, BoardPatch, BoardView
from service.problems import Problem, decode_body
from service.routes import openapi
from service.routes.limiting import limit, limit_admin
from service.state import Services


def unknown_board(board_id: str, field: str = "board_id") -> Problem:
    """The 404 problem of a leaderboard id that names no board; `field` says where it was."""
    return Problem(404, "Unknown leaderboard", f"no leaderboard {board_id!r}", field=field)


async def find_board(services: Services, board_id: str) -> Board:
    """The board, or a 404 problem naming it."""
    try:
        return await services.boards.get(board_id)
    except boards.UnknownBoard:
        raise unknown_board(board_id) from None


@post(
    "/v1/leaderboards",
    tags=["leaderboards"],
    summary="Create a leaderboard (admin).",
    responses=openapi.errors(
        openapi.MALFORMED, openapi.FORBIDDEN, openapi.INVALID, openapi.BOARD_EXISTS
    ),
)
async def create_board(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    data: JSONBody[BoardCreate],
) -> BoardView:
    """Create a board; 409 if the id is taken."""
    data = decode_body(await request.body(), BoardCreate)  # strict: `data` above only documents it
    await authorize(services.keys, request.headers, "admin", services.settings.public_reads)
    await limit_admin(request, services)
    try:
        board = await boards.create(services.pg, data)
    except boards.BoardExists:
        raise Problem(
            409, "Leaderboard exists", f"{data.id!r} exists already", field="id"
        ) from None
    services.boards.put(board)
    await coldstart.mark_new_board(services.redis, board.id)
    return await boards.view(services.pg, board, datetime.now(UTC))


@get(
    "/v1/leaderboards",
    tags=["leaderboards"],
    summary="Every leaderboard.",
    responses=openapi.errors(),
)
async def list_boards(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
) -> BoardList:
    """Configuration, current periods and player counts of every board."""
    await authorize(services.keys, request.headers, "reader", services.settings.public_reads)
    await limit(request, services, "board_queries")
    await services.boards.reload()
    now = datetime.now(UTC)
    return BoardList(
        [await boards.view(services.pg, b, now) for b in services.boards.boards.values()]
    )


@get(
    "/v1/leaderboards/{board_id:str}",
    tags=["leaderboards"],
    summary="One leaderboard.",
    responses=openapi.errors(openapi.UNKNOWN_BOARD, openapi.INVALID),
)
async def get_board(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    board_id: BoardId = openapi.BOARD_ID,
) -> BoardView:
    """Configuration, each window's current period with start and reset, player counts."""
    await authorize(services.keys, request.headers, "reader", services.settings.public_reads)
    await limit(request, services, "board_queries")
    board = await find_board(services, board_id)
    return await boards.view(services.pg, board, datetime.now(UTC))


@patch(
    "/v1/leaderboards/{board_id:str}",
    tags=["leaderboards"],
    summary="Change a leaderboard's title, bounds or metadata (admin).",
    responses=openapi.errors(
        openapi.MALFORMED, openapi.FORBIDDEN, openapi.UNKNOWN_BOARD, openapi.INVALID
    ),
)
async def patch_board(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    data: JSONBody[BoardPatch],
    board_id: BoardId = openapi.BOARD_ID,
) -> BoardView:
    """Order, operator, windows and ties stay: changing them means `rebuild --from-events`."""
    await authorize(services.keys, request.headers, "admin", services.settings.public_reads)
    await limit_admin(request, services)
    data = decode_body(await request.body(), BoardPatch)  # strict: `data` above only documents it
    board = await find_board(services, board_id)
    try:
        changed = await boards.patch(services.pg, board, data)
    except boards.UnknownBoard:
        raise unknown_board(board_id) from None
    services.boards.put(changed)
    return await boards.view(services.pg, changed, datetime.now(UTC))


ROUTES = [create_board, list_boards, get_board, patch_board]
