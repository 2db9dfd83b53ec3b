"""Redis key schema and sorted-set encoding.

Every key of one board carries the hash tag `{board}`, so a board lives in one Redis
Cluster slot and its Lua scripts stay single-slot.

Sorted sets hold members in rank order ascending: a `desc` board stores the negated
score, so one code path serves both orders and ZRANGE is always best-first. Members are
the player_id (`shared` ties: equal scores ordered by player_id) or, for `earliest`
ties, `<reached_ms:015d>|<player_id>` so the earlier player sorts first while the
score itself stays exact (|score| <= 2^53-1 is exact in a double).
"""

from __future__ import annotations

from service.models import Order, Ties

EARLIEST_SEP = "|"


def set_key(board: str, window: str, period: str) -> str:
    """The sorted set of one board window period."""
    return f"lb:{{{board}}}:{window}:{period}"


def versions_key(board: str, window: str, period: str) -> str:
    """Hash beside the set: player_id -> `version` or `version|member`."""
    return f"lb:{{{board}}}:{window}:{period}:v"


def names_key(board: str) -> str:
    """Hash of display names of a board's players."""
    return f"lb:{{{board}}}:names"


def warm_key(board: str) -> str:
    """Marker of a board whose sets in Redis are complete (`done:<token>`; service.coldstart)."""
    return f"lb:{{{board}}}:warm"


def revision_key(board: str) -> str:
    """Counter bumped on every change of any of the board's sets (feeds ETags)."""
    return f"lb:{{{board}}}:rev"


def board_pattern(board: str) -> str:
    """SCAN pattern of every key of a board."""
    return f"lb:{{{board}}}:*"


def zscore(order: Order, score: int) -> int:
    """The stored sorted-set score of a real score."""
    return -score if order == "desc" else score


def real_score(order: Order, stored: float) -> int:
    """The real score of a stored sorted-set score."""
    value = int(stored)
    return -value if order == "desc" else value


def member(ties: Ties, player_id: str, reached_ms: int) -> str:
    """The sorted-set member of a player."""
    if ties == "earliest":
        return f"{reached_ms:015d}{EARLIEST_SEP}{player_id}"
    return player_id


def player_of(ties: Ties, stored_member: str) -> str:
    """The player_id inside a sorted-set member."""
    if ties == "earliest":
        return stored_member.split(EARLIEST_SEP, 1)[1]
    return stored_member
