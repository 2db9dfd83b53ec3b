"""rankcache formats a row's script arguments as one string (the consumer's hot path): the
bytes must be those of encoding every argument on its own, ASCII or not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from service import keys, rankcache, resp
from service.models import Board

NOW = datetime(2026, 11, 23, 12, 0, 0, 123000, tzinfo=UTC)


def board(ties: str) -> Board:
    return Board(
        id="enc",
        order="desc",
        operator="best",
        windows=("all",),
        ties=ties,  # type: ignore[arg-type]
        min_score=None,
        max_score=None,
        title=None,
        metadata={},
        created_at=NOW,
        updated_at=NOW,
    )


def reference(sha: bytes, b: Board, expire: int, rows: list[tuple[str, str, str, str]]) -> bytes:
    """The command as resp.command encodes it, argument by argument."""
    parts = [
        b"EVALSHA",
        sha,
        b"3",
        keys.set_key(b.id, "all", "all").encode(),
        keys.versions_key(b.id, "all", "all").encode(),
        keys.revision_key(b.id).encode(),
        str(expire).encode(),
    ]
    for row in rows:
        parts += [arg.encode() for arg in row]
    return resp.command(*parts)


def test_rows_encode_as_every_argument_encoded_on_its_own() -> None:
    sha = b"0" * 40
    for ties in ("shared", "earliest"):
        b = board(ties)
        rows: list[tuple[str, int, int | str, str]] = [
            ("p1", 7, -42, keys.member(b.ties, "p1", 1_763_900_000_123)),
            ("jösé-ü", 12, 9_007_199_254_740_991, keys.member(b.ties, "jösé-ü", 5)),
            ("p3", 3, "0", ""),  # a removal
        ]
        encoded = [rankcache._row_arguments(*row) for row in rows]
        expected = reference(sha, b, 0, [(p, str(v), str(s), m) for p, v, s, m in rows])
        assert rankcache._apply_command(sha, b, "all", "all", 0, encoded) == expected


async def test_a_player_id_that_is_not_ascii_lands_in_the_set(redis: Redis) -> None:
    script = rankcache.apply_script(redis)
    await redis.script_load(rankcache._APPLY_LUA)
    for ties in ("shared", "earliest"):
        b = board(ties)
        await redis.delete(keys.set_key(b.id, "all", "all"), keys.versions_key(b.id, "all", "all"))
        rows = [
            rankcache.ScoreRow("enc", "all", "all", "jösé-ü", 10, 1, NOW),
            rankcache.ScoreRow("enc", "all", "all", "p2", 20, 1, NOW),
        ]
        assert await rankcache.apply_rows(redis, script, {"enc": b}, rows, 0) == 2
        members: Any = await redis.zrange(keys.set_key(b.id, "all", "all"), 0, -1, withscores=True)
        expected = [
            (keys.member(b.ties, p, int(NOW.timestamp() * 1000)), -s)
            for p, s in (("p2", 20), ("jösé-ü", 10))
        ]
        assert [(m.decode(), int(s)) for m, s in members] == expected
