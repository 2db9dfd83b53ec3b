"""Splitting a batch into lanes: every player's events in one lane, in stream order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumers import lanes
from service.models import ScoreEvent

events = st.lists(
    st.tuples(st.sampled_from(["p1", "p2", "p3", "a", "b:c", "z@y"]), st.integers(-5, 5)),
    max_size=3 * lanes.MIN_LANE_EVENTS,
).map(
    lambda moves: [
        ScoreEvent(event_id=f"e{i}", board_id="b", player_id=p, score=s, accepted_ms=i)
        for i, (p, s) in enumerate(moves)
    ]
)


@given(events=events, n=st.integers(1, 5))
def test_a_split_keeps_every_event_once_and_each_players_events_together_in_order(
    events: list[ScoreEvent], n: int
) -> None:
    parts = lanes.split(events, n)
    assert len(parts) <= n
    assert all(parts)
    assert sorted(e.event_id for part in parts for e in part) == sorted(e.event_id for e in events)
    for part in parts:
        assert [e.accepted_ms for e in part] == sorted(e.accepted_ms for e in part)
    owner = {e.player_id: i for i, part in enumerate(parts) for e in part}
    for i, part in enumerate(parts):
        assert all(owner[e.player_id] == i for e in part)


def test_lane_of_is_stable_across_processes() -> None:
    # crc32, not hash(): str hashes change with every interpreter start
    assert lanes.lane_of("player-1", 2) == lanes.lane_of("player-1", 2) == 1
    assert lanes.lane_of("player-4", 2) == 0


def test_a_small_batch_stays_in_one_lane() -> None:
    events = [
        ScoreEvent(event_id=f"e{i}", board_id="b", player_id=f"p{i}", score=i, accepted_ms=i)
        for i in range(2 * lanes.MIN_LANE_EVENTS - 1)
    ]
    assert lanes.split(events, 4) == [events]
    assert len(lanes.split([*events, events[0]], 4)) == 2
