"""Score submission routes: validate, put on the stream, answer 202."""

from __future__ import annotations

from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from service import metrics, scores, stream
from service.auth import authorize, check_signature
from service.boards import UnknownBoard
from service.hygiene import request_id_of
from service.models import (
    Accepted,
    Applied,
    BatchAccepted,
    BoardId,
    ScoreBatch,
    ScoreEvent,
    ScoreSubmit,
)
from service.problems import Problem, decode_body
from service.routes import openapi
from service.routes.boards import unknown_board
from service.routes.limiting import Counted, limit, limit_items
from service.state import Services

RETRY_AFTER_S = "1"


def player_subject(board_id: str, player_id: str) -> str:
    """What the `submissions` limit counts against: one budget per board and player, shared
    by single submissions and batch items."""
    return f"{board_id}:{player_id}"


def _per_player(events: list[ScoreEvent]) -> list[Counted]:
    return [
        Counted(
            player_subject(e.board_id, e.player_id),
            f"submissions[{i}].player_id",
            f"player {e.player_id!r} on board {e.board_id!r}",
        )
        for i, e in enumerate(events)
    ]


async def _accepting(request: Request, services: Services, subject: str | None) -> str | None:  # type: ignore[type-arg]
    services.breakers.redis.check()  # Redis down: fail now, not after connect timeouts
    await authorize(services.keys, request.headers, "client", services.settings.public_reads)
    await check_signature(services.keys, request.headers, await request.body())
    # One submission: per board and player; a batch: per API key here, and its items per
    # board and player once they are valid (submit_batch).
    await limit(request, services, "submissions" if subject else None, subject)
    if await services.backlog.full():
        raise Problem(
            503,
            "Ingestion backlog full",
            "the submission stream is over its bound; retry shortly",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    return request_id_of(request.scope)  # normalized by service.hygiene


@post(
    "/v1/leaderboards/{board_id:str}/scores",
    tags=["scores"],
    summary="Submit a score.",
    status_code=202,
    responses=openapi.errors(openapi.MALFORMED, openapi.UNKNOWN_BOARD, openapi.INVALID),
)
async def submit_score(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    data: JSONBody[ScoreSubmit],
    board_id: BoardId = openapi.BOARD_ID,
    wait: bool = Parameter(
        default=False, description="Answer once applied (200) or 202 after a timeout."
    ),
) -> Response[Accepted | Applied]:
    """Accept one submission: 202 `{event_id}` once it is on the stream."""
    data = decode_body(await request.body(), ScoreSubmit)  # strict: `data` above only documents it
    request_id = await _accepting(request, services, player_subject(board_id, data.player_id))
    try:
        event = await scores.prepare_one(services.boards, board_id, data, request_id, wait)
    except UnknownBoard:
        raise unknown_board(board_id) from None
    await stream.publish(services.redis, services.settings.stream_key, [event])
    services.breakers.redis.success()
    metrics.SUBMISSIONS_ACCEPTED.inc()
    if wait:
        timeout = services.settings.wait_timeout_ms / 1000
        outcome = await stream.wait_notice(services.redis, event.event_id, timeout)
        if outcome is not None:
            return Response(outcome, status_code=200)
    return Response(Accepted(event.event_id), status_code=202)


@post(
    "/v1/scores/batch",
    tags=["scores"],
    summary="Submit up to 500 scores.",
    status_code=202,
    responses=openapi.errors(openapi.MALFORMED, openapi.INVALID, openapi.UNKNOWN_BOARD_IN_BATCH),
)
async def submit_batch(
    request: Request,  # type: ignore[type-arg]
    services: NamedDependency[Services],
    data: JSONBody[ScoreBatch],
) -> BatchAccepted:
    """Accept a batch, all-or-nothing: one bad item, or one player over the `submissions`
    limit (each item counts against its board and player), and nothing is accepted."""
    data = decode_body(await request.body(), ScoreBatch)  # strict: `data` above only documents it
    request_id = await _accepting(request, services, None)
    try:
        events = await scores.prepare_batch(services.boards, data.submissions, request_id)
    except UnknownBoard as exc:
        index = next(i for i, s in enumerate(data.submissions) if s.board_id == exc.board_id)
        raise unknown_board(exc.board_id, f"submissions[{index}].board_id") from None
    # After validation, so an invalid batch counts nothing; all or nothing, so a refused
    # batch counts nothing either and puts nothing on the stream.
    await limit_items(request, services, "submissions", _per_player(events))
    await stream.publish(services.redis, services.settings.stream_key, events)
    services.breakers.redis.success()
    metrics.SUBMISSIONS_ACCEPTED.inc(len(events))
    return BatchAccepted([e.event_id for e in events])


ROUTES = [submit_score, submit_batch]
