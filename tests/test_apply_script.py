"""service/apply.lua against a model of its contract: rows taken in order, each applied
only if its version is newer than the player's stored one, the set holding each player's
latest member, and a removal leaving a tombstone version."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.asyncio import Redis

from service import rankcache

Row = tuple[str, int, int, str]  # player, version, stored score, member ('' removes)

row = st.sampled_from(["a", "b", "c"]).flatmap(
    lambda player: st.tuples(
        st.just(player),
        st.integers(1, 6),
        st.integers(-3, 3),
        st.sampled_from([player, f"00000000000000{len(player)}|{player}", f"9|{player}", ""]),
    )
)


class Model:
    """One call per row, as the script's contract reads."""

    def __init__(self) -> None:
        self.versions: dict[str, tuple[int, str]] = {}  # player -> (version, member)
        self.zset: dict[str, int] = {}

    def apply(self, rows: list[Row]) -> int:
        applied = 0
        for player, version, score, member in rows:
            current, before = self.versions.get(player, (0, ""))
            if version <= current:
                continue
            if before and before != member:
                self.zset.pop(before, None)
            if member:
                self.zset[member] = score
            self.versions[player] = (version, member)
            applied += 1
        return applied

    def hash(self) -> dict[str, str]:
        out = {}
        for player, (version, member) in self.versions.items():
            out[player] = str(version) if member == player else f"{version}|{member}"
        return out


async def call(redis: Redis, keys: list[str], rows: list[Row]) -> int:
    script = rankcache.apply_script(redis)
    args: list[str | int] = [0]
    for player, version, score, member in rows:
        args += [player, version, score, member]
    return int(await script(keys=keys, args=args))


async def state(redis: Redis, keys: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    members: Any = await redis.zrange(keys[0], 0, -1, withscores=True)
    stored: Any = await redis.hgetall(keys[1])
    zset = {m.decode(): int(score) for m, score in members}
    versions = {k.decode(): v.decode() for k, v in stored.items()}
    return zset, versions


@hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=st.lists(st.lists(row, min_size=1, max_size=8), min_size=1, max_size=5))
async def test_calls_leave_the_set_and_versions_the_model_leaves(
    redis: Redis, calls: list[list[Row]]
) -> None:
    tag = uuid.uuid4().hex
    keys = [f"lb:{{t{tag}}}:all:all", f"lbv:{{t{tag}}}:all:all", f"lbr:{{t{tag}}}"]
    model = Model()
    for rows in calls:
        assert await call(redis, keys, rows) == model.apply(rows)
    zset, versions = await state(redis, keys)
    assert zset == model.zset
    assert versions == model.hash()
    await redis.delete(*keys)


async def test_a_call_larger_than_one_unpack(redis: Redis) -> None:
    tag = uuid.uuid4().hex
    keys = [f"lb:{{t{tag}}}:all:all", f"lbv:{{t{tag}}}:all:all", f"lbr:{{t{tag}}}"]
    rows: list[Row] = [(f"p{i}", 1, i, f"p{i}") for i in range(5_000)]
    assert await call(redis, keys, rows) == 5_000
    moved: list[Row] = [(f"p{i}", 2, -i, f"1|p{i}") for i in range(5_000)]
    assert await call(redis, keys, moved) == 5_000
    zset, versions = await state(redis, keys)
    assert zset == {f"1|p{i}": -i for i in range(5_000)}
    assert versions["p4999"] == "2|1|p4999"
    await redis.delete(*keys)
