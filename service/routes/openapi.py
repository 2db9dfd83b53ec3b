"""What the OpenAPI document says of the routes' problems and path parameters.

Every error is an RFC 9457 problem (`application/problem+json`, `service.problems`); each
one a route can answer is listed on it here, with an example body, so that `/schema`
documents the errors as well as the answers. The path parameters are described once.
"""

from __future__ import annotations

from typing import Any

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Parameter

from service.models import ProblemDetails

Responses = dict[int, ResponseSpec]

BOARD_ID = Parameter(
    title="Leaderboard id", description="The leaderboard's id: `[a-z0-9][a-z0-9_-]{0,63}`."
)
PLAYER_ID = Parameter(
    title="Player id", description="The player's id: 1 to 128 of `A-Z a-z 0-9 _ . : @ -`."
)
JOB_ID = Parameter(title="Job id", max_length=64, description="As `POST ...rebuild` gave it.")


def problem(
    status: int,
    description: str,
    title: str,
    detail: str,
    field: str | None = None,
) -> Responses:
    """One documented problem answer, with an example body."""
    example: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if field is not None:
        example["field"] = field
    spec = ResponseSpec(
        data_container=ProblemDetails,
        description=description,
        media_type="application/problem+json",
        examples=[Example(summary=title, value=example)],
    )
    return {status: spec}


MALFORMED = problem(
    400,
    "The body is not JSON, or not of the route's shape; `field` names what is wrong",
    "Malformed JSON",
    "expected an object, got a list",
    field="body",
)
UNAUTHORIZED = problem(
    401,
    "No API key, or one that is unknown or revoked (reads need one only when public reads "
    "are off; a signed key's submissions also need a valid signature)",
    "Unauthorized",
    "the API key is unknown or revoked",
)
FORBIDDEN = problem(
    403,
    "The key's role may not use this route (admin routes need an admin key)",
    "Forbidden",
    "this route needs the admin role; the key is client",
)
UNKNOWN_BOARD = problem(
    404,
    "No leaderboard has this id",
    "Unknown leaderboard",
    "no leaderboard 'arena-season-3'",
    field="board_id",
)
INVALID = problem(
    422,
    "A parameter or field is invalid; `field` names it",
    "Invalid request",
    "limit: Expected `int` <= 100",
    field="limit",
)
RATE_LIMITED = problem(
    429,
    "Over a rate limit; `Retry-After` says when to retry, `RateLimit-*` what is left",
    "Too many requests",
    "over the rank lookups limit of 300; retry in 12s",
)
UNAVAILABLE = problem(
    503,
    "Redis or PostgreSQL cannot be reached (or, for submissions, the ingestion backlog is "
    "over its bound); retry after `Retry-After`",
    "Service unavailable",
    "a storage dependency is unreachable; retry shortly",
)

UNKNOWN_JOB = problem(404, "No job has this id", "Unknown job", "no job 'j1'", "job_id")
NO_ENTRY = problem(
    404,
    "No such board, or the player has no entry on it",
    "No entry",
    "'player:42' has no entry on 'arena-season-3'",
    "player_id",
)
UNKNOWN_PLAYER = problem(
    404,
    "Nothing is stored about this player",
    "Unknown player",
    "nothing is stored about 'player:42'",
    "player_id",
)
BOARD_EXISTS = problem(
    409,
    "A leaderboard with this id exists",
    "Leaderboard exists",
    "'arena-season-3' exists already",
    "id",
)
UNKNOWN_BOARD_IN_BATCH = problem(
    404,
    "An item names a leaderboard that does not exist; `field` says which",
    "Unknown leaderboard",
    "no leaderboard 'arena-season-9'",
    "submissions[3].board_id",
)


def errors(*problems: Responses) -> Responses:
    """A route's documented problems: those every keyed route can answer (401, 429, 503),
    and `problems`."""
    out: Responses = {**UNAUTHORIZED, **RATE_LIMITED, **UNAVAILABLE}
    for one in problems:
        out.update(one)
    return dict(sorted(out.items()))
