"""Domain and wire types: every body, answer and stream entry is a msgspec Struct."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

MAX_SAFE = 2**53 - 1
METADATA_MAX_BYTES = 2048
BATCH_MAX = 500

BOARD_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
PLAYER_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"
BoardId = Annotated[str, msgspec.Meta(pattern=BOARD_ID_PATTERN, examples=["arena-season-3"])]
PlayerId = Annotated[str, msgspec.Meta(pattern=PLAYER_ID_PATTERN, examples=["player:42"])]
EventId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9_.:@-]{1,128}$",
        description="Idempotency key: a retried event_id is applied once.",
    ),
]
Score = Annotated[
    int,
    msgspec.Meta(ge=-MAX_SAFE, le=MAX_SAFE, description="Integer, |score| <= 2^53-1."),
]
DisplayName = Annotated[str, msgspec.Meta(max_length=64)]
Title = Annotated[str, msgspec.Meta(max_length=200)]
Order = Literal["asc", "desc"]
Operator = Literal["best", "latest", "increment"]
Window = Literal["all", "daily", "weekly", "monthly"]
Ties = Literal["shared", "earliest"]
Metadata = dict[str, Any]

WINDOWS: tuple[Window, ...] = ("all", "daily", "weekly", "monthly")


class InvalidField(ValueError):
    """A value passed type checks but breaks a rule; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def check_metadata(metadata: Metadata | None, field: str = "metadata") -> None:
    """Metadata must be a JSON object of at most 2 KiB."""
    if metadata is not None and len(msgspec.json.encode(metadata)) > METADATA_MAX_BYTES:
        raise InvalidField(field, f"must encode to at most {METADATA_MAX_BYTES} bytes of JSON")


# --- leaderboards -------------------------------------------------------------------------


class BoardCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of `POST /v1/leaderboards`."""

    id: BoardId
    order: Order = "desc"
    operator: Operator = "best"
    windows: Annotated[list[Window], msgspec.Meta(min_length=1, max_length=4)] = msgspec.field(
        default_factory=lambda: ["all"]
    )
    ties: Ties = "shared"
    min_score: Score | None = None
    max_score: Score | None = None
    title: Title | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)

    def check(self) -> None:
        """Rules that span fields."""
        if len(set(self.windows)) != len(self.windows):
            raise InvalidField("windows", "must not repeat a window")
        if (
            self.min_score is not None
            and self.max_score is not None
            and self.min_score > self.max_score
        ):
            raise InvalidField("min_score", "must not be greater than max_score")
        check_metadata(self.metadata)


class BoardPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of `PATCH /v1/leaderboards/{id}`: only what can change without a rebuild."""

    title: Title | msgspec.UnsetType | None = msgspec.UNSET
    min_score: Score | msgspec.UnsetType | None = msgspec.UNSET
    max_score: Score | msgspec.UnsetType | None = msgspec.UNSET
    metadata: Metadata | msgspec.UnsetType = msgspec.UNSET


class Board(msgspec.Struct, frozen=True, kw_only=True):
    """A leaderboard's configuration as stored."""

    id: str
    order: Order
    operator: Operator
    windows: tuple[Window, ...]
    ties: Ties
    min_score: int | None
    max_score: int | None
    title: str | None
    metadata: Metadata
    created_at: datetime
    updated_at: datetime

    def check_score(self, score: int, field: str = "score") -> None:
        """Raise InvalidField when score is outside this board's bounds."""
        if self.min_score is not None and score < self.min_score:
            raise InvalidField(field, f"must be at least {self.min_score} on board {self.id}")
        if self.max_score is not None and score > self.max_score:
            raise InvalidField(field, f"must be at most {self.max_score} on board {self.id}")


class PeriodInfo(msgspec.Struct, frozen=True):
    """A window's current period."""

    window: Window
    period: str
    starts_at: datetime
    resets_at: datetime | None
    players: int


class BoardView(msgspec.Struct, frozen=True, kw_only=True):
    """A board as `GET /v1/leaderboards/{id}` shows it."""

    id: Annotated[str, msgspec.Meta(examples=["arena-season-3"])]
    order: Order
    operator: Operator
    windows: tuple[Window, ...]
    ties: Ties
    min_score: int | None
    max_score: int | None
    title: str | None
    metadata: Metadata
    created_at: datetime
    updated_at: datetime
    periods: list[PeriodInfo]


class BoardList(msgspec.Struct, frozen=True):
    """Answer of `GET /v1/leaderboards`."""

    leaderboards: list[BoardView]


# --- submissions --------------------------------------------------------------------------


class ScoreSubmit(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of `POST /v1/leaderboards/{id}/scores`."""

    player_id: PlayerId
    score: Score
    display_name: DisplayName | None = None
    metadata: Metadata | None = None
    event_id: EventId | None = None


class BatchSubmit(ScoreSubmit, forbid_unknown_fields=True, kw_only=True):
    """One item of `POST /v1/scores/batch`."""

    board_id: BoardId


class ScoreBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /v1/scores/batch`."""

    submissions: Annotated[list[BatchSubmit], msgspec.Meta(min_length=1, max_length=BATCH_MAX)]


class Accepted(msgspec.Struct, frozen=True):
    """Answer 202 to a single submission."""

    event_id: Annotated[str, msgspec.Meta(examples=["9b2f6c1e-7d4a-4f7e-9c1b-2a6d8e0f3b55"])]


class BatchAccepted(msgspec.Struct, frozen=True):
    """Answer 202 to a batch."""

    event_ids: Annotated[
        list[str], msgspec.Meta(examples=[["9b2f6c1e-7d4a-4f7e-9c1b-2a6d8e0f3b55"]])
    ]


class Applied(msgspec.Struct, frozen=True):
    """Answer to `?wait=true` once the event is applied (`all` window, current period)."""

    event_id: Annotated[str, msgspec.Meta(examples=["9b2f6c1e-7d4a-4f7e-9c1b-2a6d8e0f3b55"])]
    score: Annotated[int | None, msgspec.Meta(examples=[98_400])]
    rank: Annotated[int | None, msgspec.Meta(examples=[87])]
    previous_rank: Annotated[int | None, msgspec.Meta(examples=[120])]


class ScoreEvent(msgspec.Struct, frozen=True, array_like=True):
    """A stream entry: one accepted submission, msgpack-encoded in field `e`."""

    event_id: str
    board_id: str
    player_id: str
    score: int
    accepted_ms: int
    display_name: str | None = None
    metadata: bytes | None = None  # raw JSON object, stored as given
    request_id: str | None = None
    notify: bool = False  # a client waits for the outcome (`?wait=true`)


# --- rankings (read API) --------------------------------------------------------------------

Rank = Annotated[int, msgspec.Meta(ge=1, description="1-based rank.", examples=[3])]
Total = Annotated[int, msgspec.Meta(ge=0, description="Ranked players in this period.")]
PeriodId = Annotated[
    str,
    msgspec.Meta(description="The resolved period id.", examples=["all", "2026-W47"]),
]
Cursor = Annotated[
    str,
    msgspec.Meta(
        description="Opaque: pass as `cursor` to get the next page; null on the last page.",
        examples=["kwHSAAAAZKtwbGF5ZXI6NDI"],
    ),
]


class RankedEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One ranked player."""

    rank: Rank
    player_id: Annotated[str, msgspec.Meta(examples=["player:42"])]
    score: Annotated[int, msgspec.Meta(examples=[98_400])]
    display_name: Annotated[str | None, msgspec.Meta(examples=["Ada"])] = None


class TopPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of a leaderboard, best first (`GET /v1/leaderboards/{id}/top`)."""

    window: Window
    period: PeriodId
    total: Total
    entries: list[RankedEntry]
    next_cursor: Cursor | None = None


class PlayerRank(msgspec.Struct, frozen=True, kw_only=True):
    """One player's standing (`GET /v1/leaderboards/{id}/players/{player_id}`)."""

    player_id: Annotated[str, msgspec.Meta(examples=["player:42"])]
    window: Window
    period: PeriodId
    rank: Rank
    score: Annotated[int, msgspec.Meta(examples=[98_400])]
    total: Total
    percentile: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            le=100,
            description="Share (%) of ranked players at this rank or worse: 100 for the leader.",
            examples=[99.5],
        ),
    ]
    display_name: Annotated[str | None, msgspec.Meta(examples=["Ada"])] = None


class AroundPage(msgspec.Struct, frozen=True, kw_only=True):
    """A player and their neighbours (`GET .../players/{player_id}/around`)."""

    player_id: Annotated[str, msgspec.Meta(examples=["player:42"])]
    window: Window
    period: PeriodId
    total: Total
    entries: list[RankedEntry]


class RanksRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /v1/leaderboards/{id}/ranks`: the players of a friends board."""

    player_ids: Annotated[
        list[PlayerId],
        msgspec.Meta(max_length=100, examples=[["player:42", "player:7", "player:9000"]]),
    ]


class RanksPage(msgspec.Struct, frozen=True, kw_only=True):
    """A friends board: the ranked players by rank, the unranked ones in `missing`."""

    window: Window
    period: PeriodId
    total: Total
    entries: list[RankedEntry]
    missing: Annotated[list[str], msgspec.Meta(examples=[["player:9000"]])]


class ProblemDetails(msgspec.Struct, frozen=True, kw_only=True):
    """An RFC 9457 error answer (`application/problem+json`); for the OpenAPI document."""

    title: Annotated[str, msgspec.Meta(examples=["Invalid request"])]
    status: Annotated[int, msgspec.Meta(examples=[422])]
    detail: Annotated[str, msgspec.Meta(examples=["limit: must be between 1 and 100"])]
    field: Annotated[str | None, msgspec.Meta(examples=["limit"])] = None
    type: str | None = None
