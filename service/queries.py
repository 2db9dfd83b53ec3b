"""Every SQL statement of the service and the consumers, named."""

from dataclasses import dataclass

BOARD_COLUMNS = (
    "id, sort_order, operator, windows, ties, min_score, max_score, title, metadata,"
    " created_at, updated_at"
)

INSERT_BOARD = f"""
INSERT INTO leaderboards (id, sort_order, operator, windows, ties, min_score, max_score,
                          title, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO NOTHING
RETURNING {BOARD_COLUMNS}
"""

SELECT_BOARDS = f"SELECT {BOARD_COLUMNS} FROM leaderboards ORDER BY id"

SELECT_BOARD = f"SELECT {BOARD_COLUMNS} FROM leaderboards WHERE id = $1"

UPDATE_BOARD = f"""
UPDATE leaderboards
SET title = $2, min_score = $3, max_score = $4, metadata = $5, updated_at = now()
WHERE id = $1
RETURNING {BOARD_COLUMNS}
"""

COUNT_PLAYERS = """
SELECT window_name, period, count(*) AS players
FROM player_scores
WHERE board_id = $1 AND (window_name, period) IN (SELECT * FROM unnest($2::text[], $3::text[]))
GROUP BY window_name, period
"""

# --- ingest (one transaction per batch) -----------------------------------------------------

# Taken by every transaction that writes player_scores rows, before it writes them
# (player_scores has no foreign key to leaderboards, sql/004): the boards' rows locked
# against deletion until the commit, once per transaction instead of once per row. The ids
# found; a missing one means the board is deleted (or being deleted: the lock waited for
# that to commit). The consumer's lanes take it inside RECORD_NEW_EVENTS.
_LOCK_BOARDS = "SELECT id FROM leaderboards WHERE id = ANY(${}::text[]) FOR KEY SHARE"
LOCK_BOARDS = _LOCK_BOARDS.format(1)

# A batch's rows travel as one JSON array per column, unpacked by the server side by side
# (ROWS FROM): asyncpg spends ~2 µs of client CPU per element encoding a Postgres array (an
# isinstance check against collections.abc per element), ~10 ms per batch of 500, against
# ~0.5 ms for msgspec's JSON. A column is parsed once: `r->>n` on a JSON array of arrays
# parsed each row again for every field (~10% of the backend's CPU on the ingest path).
# Times travel as unix ms and become timestamptz exactly (integer interval arithmetic).
_MS_TO_TIMESTAMPTZ = "timestamptz 'epoch' + ({}) * interval '1 millisecond'"


def _columns(*names: str) -> str:
    """The rows of JSON column parameters $1..$n (json_array_elements_text: JSON null is
    SQL null), as text columns `names`."""
    functions = ", ".join(f"json_array_elements_text(${i}::json)" for i in range(1, len(names) + 1))
    return f"ROWS FROM ({functions}) AS r({', '.join(names)})"


# A lane's first statement: lock its boards (LOCK_BOARDS), claim the event ids (a retried or
# redelivered event_id conflicts and is left out), record the new events, and answer each
# new event with whether its player is banned (looked up in the partial index of banned
# players, usually empty, not in every player's row). One round trip instead of four. Rows are
# (event_id, banned, NULL) per new event and (NULL, NULL, board id) per board locked; a
# board missing fails the transaction, so what the statement wrote for it is rolled back
# whichever part ran first.
# $1..$6 JSON columns: event_id, board_id, player_id, score, accepted_ms, request_id;
# $7 the boards' ids.
RECORD_NEW_EVENTS = f"""
WITH locked AS (
    {_LOCK_BOARDS.format(7)}
), e AS (
    SELECT event_id, board_id, player_id, score::bigint AS score,
           {_MS_TO_TIMESTAMPTZ.format("accepted_ms::bigint")} AS accepted_at, request_id
    FROM {_columns("event_id", "board_id", "player_id", "score", "accepted_ms", "request_id")}
), claimed AS (
    INSERT INTO event_ids (event_id, board_id, accepted_at)
    SELECT event_id, board_id, accepted_at FROM e
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), recorded AS (
    INSERT INTO score_events (event_id, board_id, player_id, score, accepted_at, request_id)
    SELECT e.* FROM e JOIN claimed USING (event_id)
    RETURNING event_id, player_id
)
SELECT r.event_id, pl.player_id IS NOT NULL AS banned, NULL AS board_id
FROM recorded r
LEFT JOIN players pl ON pl.player_id = r.player_id AND pl.banned
UNION ALL
SELECT NULL, NULL, id FROM locked
"""

# One statement per operator: the combination rule is the only difference. Each takes the
# batch's already-combined value per row, bumps version only when the score changes, and
# returns the absolute result for the ranking cache. |score| is clamped to 2^53-1.
# $1..$6 JSON columns: board_id, window_name, period, player_id, score, reached_ms; rows in
# key order (the order rows are locked in).
_UPSERT = """
INSERT INTO player_scores AS p (board_id, window_name, period, player_id, score, reached_at)
SELECT board_id, window_name, period, player_id, score::bigint, {reached_at}
FROM {rows}
ON CONFLICT (board_id, window_name, period, player_id) DO UPDATE
SET score = {{new}},
    version = p.version + 1,
    reached_at = EXCLUDED.reached_at,
    updated_at = now()
WHERE {{new}} <> p.score{{guard}}
RETURNING board_id, window_name, period, player_id, score, version, reached_at
""".format(
    reached_at=_MS_TO_TIMESTAMPTZ.format("reached_ms::bigint"),
    rows=_columns("board_id", "window_name", "period", "player_id", "score", "reached_ms"),
)
_CLAMP = "LEAST(GREATEST({}, -9007199254740991), 9007199254740991)"
# `latest` means last accepted, not last committed: with several consumers a batch may
# commit after a newer one, and must not overwrite it.
_LATER = "\n  AND EXCLUDED.reached_at >= p.reached_at"

UPSERT_SCORES = {
    ("best", "desc"): _UPSERT.format(new="GREATEST(p.score, EXCLUDED.score)", guard=""),
    ("best", "asc"): _UPSERT.format(new="LEAST(p.score, EXCLUDED.score)", guard=""),
    ("latest", "desc"): _UPSERT.format(new="EXCLUDED.score", guard=_LATER),
    ("latest", "asc"): _UPSERT.format(new="EXCLUDED.score", guard=_LATER),
    ("increment", "desc"): _UPSERT.format(new=_CLAMP.format("p.score + EXCLUDED.score"), guard=""),
    ("increment", "asc"): _UPSERT.format(new=_CLAMP.format("p.score + EXCLUDED.score"), guard=""),
}

# The players of a lane's new events that carry a display name or metadata: a name or
# metadata given replaces the stored one; none given keeps it. A row is written only when
# that changes it: a game sending its player's name with every score would otherwise write
# a new version of the row (and its WAL) per event. Rows that would not change are left
# out before the insert, since ON CONFLICT locks the row it finds even when its WHERE is
# false (one more WAL record); that WHERE still guards a row changed meanwhile.
# $1..$3 JSON columns: player_id, display_name, metadata (each a JSON object's text, or null).
UPSERT_PLAYERS = f"""
INSERT INTO players AS pl (player_id, display_name, metadata)
SELECT g.player_id, g.display_name, g.metadata
FROM (
    SELECT player_id, display_name, coalesce(metadata::jsonb, '{{}}'::jsonb) AS metadata
    FROM {_columns("player_id", "display_name", "metadata")}
) g
WHERE NOT EXISTS (
    SELECT 1 FROM players p
    WHERE p.player_id = g.player_id
      AND (g.display_name IS NULL OR g.display_name = p.display_name)
      AND (g.metadata = '{{}}'::jsonb OR g.metadata = p.metadata)
)
ON CONFLICT (player_id) DO UPDATE
SET display_name = coalesce(EXCLUDED.display_name, pl.display_name),
    metadata = CASE WHEN EXCLUDED.metadata = '{{}}'::jsonb THEN pl.metadata
                    ELSE EXCLUDED.metadata END,
    updated_at = now()
WHERE EXCLUDED.display_name IS DISTINCT FROM pl.display_name
      AND EXCLUDED.display_name IS NOT NULL
   OR EXCLUDED.metadata <> '{{}}'::jsonb AND EXCLUDED.metadata <> pl.metadata
"""

ENSURE_PARTITIONS = "SELECT rankstream_ensure_partitions(now(), 2)"

INSERT_DEAD_LETTER = """
INSERT INTO dead_letters (stream_id, payload, reason, deliveries) VALUES ($1, $2, $3, $4)
"""

SELECT_SCORE_ROWS = """
SELECT board_id, window_name, period, player_id, score, version, reached_at
FROM player_scores
WHERE board_id = $1 AND window_name = $2 AND period = $3
"""

# Current rows of given keys: what a redelivered batch re-applies to Redis, so a crash
# between the commit and the Redis write can never leave a set behind Postgres.
SELECT_ROWS_BY_KEYS = """
SELECT s.board_id, s.window_name, s.period, s.player_id, s.score, s.version, s.reached_at
FROM player_scores s
JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS k(b, w, p, pl)
  ON s.board_id = k.b AND s.window_name = k.w AND s.period = k.p AND s.player_id = k.pl
"""

# --- rankings read from Postgres (service/pgranking.py) ------------------------------------
# Past periods no longer in Redis, and the fallback when Redis is down or a set is missing.
# The same order as the sorted sets: `stored` is the score negated on desc boards; `member`
# is the sorted-set member (player_id, or `<reached_ms:015d>|<player_id>` for earliest
# ties), compared bytewise (COLLATE "C") as Redis does. Banned players are in no ranking.
#
# Every statement is driven by the index player_scores_ranking (board, window, period,
# score, reached_at, player_id) and reads only the rows it answers with, or counts index
# entries: ranking the whole set with window functions, joined to every player, took
# seconds a read at 1M players (and minutes for around-me, whose plan ranked it twice).
# Pages walk the index in score order with an Incremental Sort by member inside each score
# group: the index orders a group by reached_at first, and by player_id in the database's
# collation, which need not be C. One variant per board order, so that the planner sees a
# range on `score` itself (not on `score * sign`), and per tie rule (the member).
# pgranking.py does the rank arithmetic from these counts (service.ranking.ranked_entries).
# $1 board, $2 window, $3 period in every statement; scores ($4) are real scores, not stored.

_IN_SET = "ps.board_id = $1 AND ps.window_name = $2 AND ps.period = $3"
_STORED = {"asc": "ps.score", "desc": "-ps.score"}
_RANK_MEMBER = {
    "shared": 'ps.player_id COLLATE "C"',
    "earliest": "(lpad(floor(extract(epoch FROM ps.reached_at) * 1000)::bigint::text, 15, '0')"
    " || '|' || ps.player_id) COLLATE \"C\"",
}
# A score better than another in each order, and the rank order of scores.
_BETTER = {"asc": "<", "desc": ">"}
_WORSE = {"asc": ">", "desc": "<"}
_BEST_FIRST = {"asc": "", "desc": " DESC"}
_WORST_FIRST = {"asc": " DESC", "desc": ""}
# A bound no score reaches (|score| <= 2^53-1), on the worse side of every score (its
# negation is on the better side).
WORST_SCORE = {"asc": 2**62, "desc": -(2**62)}

# Ranked rows in rank order: banned players skipped before OFFSET/LIMIT count them; names
# joined for the page's rows only. The answer is ascending (stored, member) whichever way
# the index was walked.
_PAGE = """
SELECT p.stored, p.member, pl.display_name
FROM (
    SELECT {stored} AS stored, {member} AS member, ps.player_id
    FROM player_scores ps
    WHERE {in_set}{where}
      AND ps.player_id NOT IN (SELECT player_id FROM players WHERE banned)
    ORDER BY ps.score{score_order}, member{member_order}
    {limit}
) p
LEFT JOIN players pl ON pl.player_id = p.player_id
ORDER BY p.stored, p.member
"""


# $4 scores, $5 members: for each, the rows of that score whose member sorts first (the
# order inside a score group is the member's in both orders). For `earliest` ties without
# the member's text: a member `<ms>|<player>` sorts after every row reached in an earlier
# millisecond (a range of the index on reached_at) and after the rows of its millisecond
# with a smaller player_id; counting a large tie group through the member expression cost
# ~1 us a row (ranks of 100 friends on 10k-row tie groups: 0.84 s).
_TIED_BEFORE = {
    "shared": f"""
SELECT (SELECT count(*) FROM player_scores ps
        WHERE {_IN_SET} AND ps.score = t.score AND {_RANK_MEMBER["shared"]} < t.member)
FROM unnest($4::bigint[], $5::text[]) WITH ORDINALITY AS t(score, member, i)
ORDER BY t.i
""",
    "earliest": f"""
SELECT (SELECT count(*) FROM player_scores ps
        WHERE {_IN_SET} AND ps.score = t.score AND ps.reached_at < m.since)
     + (SELECT count(*) FROM player_scores ps
        WHERE {_IN_SET} AND ps.score = t.score
          AND ps.reached_at >= m.since AND ps.reached_at < m.since + interval '1 millisecond'
          AND ps.player_id COLLATE "C" < m.player_id)
FROM unnest($4::bigint[], $5::text[]) WITH ORDINALITY AS t(score, member, i),
     LATERAL (SELECT {_MS_TO_TIMESTAMPTZ.format("left(t.member, 15)::bigint")} AS since,
                     substr(t.member, 17) AS player_id) AS m
ORDER BY t.i
""",
}


@dataclass(frozen=True)
class RankingQueries:
    """The Postgres reads of one kind of board (order, ties); see the comment above."""

    score_at: str  # $4 offset: the score at a position (a plain index walk, no sort)
    page_from: str  # $4 score, $5 offset, $6 limit: the page from a position in that score
    page_after: str  # $4 score, $5 member, $6 limit: the page after an exclusive position
    page_before: str  # $4 score, $5 member, $6 limit: up to $6 rows before a position
    rows_of: str  # $4 player_ids: these players' ranked rows (stored, member, name)
    banned_rows: str  # (stored, member) of the set's banned players, usually none
    better_counts: str  # $4 score bounds best-first: rows better than each, not before
    tied_before: str  # $4 scores, $5 members: rows of the same score before each member


def _ranking_queries(order: str, ties: str) -> RankingQueries:
    stored, member = _STORED[order], _RANK_MEMBER[ties]
    better, worse = _BETTER[order], _WORSE[order]

    def page(where: str, limit: str, *, backwards: bool = False) -> str:
        return _PAGE.format(
            stored=stored,
            member=member,
            in_set=_IN_SET,
            where=where,
            score_order=(_WORST_FIRST if backwards else _BEST_FIRST)[order],
            member_order=" DESC" if backwards else "",
            limit=limit,
        )

    return RankingQueries(
        # A deep offset is walked on scores alone (no member to compute and sort for every
        # row passed: 4x faster at 500k, 10x for earliest ties), then the page is read from
        # the first row of that score, at a small offset into its tie group.
        score_at=f"""
SELECT ps.score
FROM player_scores ps
WHERE {_IN_SET} AND ps.player_id NOT IN (SELECT player_id FROM players WHERE banned)
ORDER BY ps.score{_BEST_FIRST[order]}
OFFSET $4 LIMIT 1
""",
        page_from=page(f"\n      AND ps.score {worse}= $4", "OFFSET $5 LIMIT $6"),
        page_after=page(
            f"\n      AND ps.score {worse}= $4 AND (ps.score {worse} $4 OR {member} > $5)",
            "LIMIT $6",
        ),
        page_before=page(
            f"\n      AND ps.score {better}= $4 AND (ps.score {better} $4 OR {member} < $5)",
            "LIMIT $6",
            backwards=True,
        ),
        rows_of=f"""
SELECT {stored} AS stored, {member} AS member, pl.display_name
FROM player_scores ps
LEFT JOIN players pl ON pl.player_id = ps.player_id
WHERE ps.player_id = ANY($4::text[]) AND {_IN_SET} AND NOT coalesce(pl.banned, false)
""",
        # From the partial index of banned players, then the primary key per player.
        banned_rows=f"""
SELECT {stored} AS stored, {member} AS member
FROM players pl
JOIN player_scores ps ON ps.player_id = pl.player_id AND {_IN_SET}
WHERE pl.banned
""",
        # Bucket i: rows better than bound i and not better than bound i-1, an index-only
        # range count each, so that all buckets together read the set's index entries once
        # (ranks of 100 friends cost one count, not 100). Bound 1 has no lower side.
        better_counts=f"""
SELECT (SELECT count(*) FROM player_scores ps
        WHERE {_IN_SET} AND ps.score {better} b.bound
          AND ps.score {worse}= coalesce($4[b.i - 1], ({-WORST_SCORE[order]})::bigint))
FROM unnest($4::bigint[]) WITH ORDINALITY AS b(bound, i)
ORDER BY b.i
""",
        tied_before=_TIED_BEFORE[ties],
    )


PG_RANKING = {
    (order, ties): _ranking_queries(order, ties)
    for order in ("asc", "desc")
    for ties in ("shared", "earliest")
}

# --- admin: rebuild, reconcile, moderation (service/rebuild.py, reconcile.py, moderation.py) --

# First statement of a REPEATABLE READ rebuild transaction: it fixes the snapshot and answers
# a time no later than the start of any transaction still running, so every row committed
# after the snapshot has updated_at >= it (updated_at is its transaction's now()).
REBUILD_SNAPSHOT_TIME = """
SELECT least(now(), coalesce(min(xact_start), now())) - interval '1 second' AS at
FROM pg_stat_activity
WHERE datname = current_database() AND xact_start IS NOT NULL
"""

# Memory for a rebuild's sorts and its join to players, for its transactions only: at the
# 4 MB default the join spills to disk in 16 batches at 1M rows, and a full sort of the set
# (where the planner picks one) is an external merge (first row of a 1M-row sort 2.65 s
# instead of 1.6 s). Larger sets spill past this bound.
REBUILD_WORK_MEM = "SET LOCAL work_mem = '128MB'"

# The (window, period) sets of a board that have rows, with their sizes.
BOARD_SETS = """
SELECT window_name, period, count(*) AS rows
FROM player_scores
WHERE board_id = $1
GROUP BY window_name, period
ORDER BY window_name, period
"""

# The same sets without their sizes: one primary-key probe per set (each finds the next
# (window, period) after the last), where counting reads every row (0.2 s a 1M rows).
BOARD_SET_IDS = """
WITH RECURSIVE found AS (
    (SELECT window_name, period FROM player_scores WHERE board_id = $1
     ORDER BY window_name, period LIMIT 1)
    UNION ALL
    SELECT next.window_name, next.period
    FROM found, LATERAL (
        SELECT window_name, period FROM player_scores
        WHERE board_id = $1 AND (window_name, period) > (found.window_name, found.period)
        ORDER BY window_name, period LIMIT 1
    ) next
)
SELECT window_name, period, 0 AS rows FROM found
"""

COUNT_SET_ROWS = """
SELECT count(*) FROM player_scores WHERE board_id = $1 AND window_name = $2 AND period = $3
"""

# Rows of one set with what the cache needs besides the score: name and ban state.
_SET_ROWS = f"""
SELECT ps.player_id, ps.score, ps.version, ps.reached_at, pl.display_name,
       coalesce(pl.banned, false) AS banned
FROM player_scores ps
LEFT JOIN players pl ON pl.player_id = ps.player_id
WHERE {_IN_SET}
"""

SET_ROWS = _SET_ROWS

# A rebuild's rows, as COPY ... TO STDOUT text (rows end in \n, columns are separated by
# tabs) whose columns alternate RESP bulk-string headers (`$<length in UTF-8 bytes>`) and
# the values: turning every tab and newline into \r\n makes a chunk of rows the arguments
# of one Redis command, with no per-row work in Python (asyncpg records, str decoding and
# joining cost ~1 us a row, ~2 s of Python CPU for the 2M rows of a 1M-player rebuild).
# COPY escapes a backslash, tab, newline, carriage return and a few other control
# characters with a backslash; rebuild.py reads a chunk with a backslash in it the slow
# way. Three streams, read in one snapshot: members, versions, names.
_RESP_COLUMNS = "'$' || octet_length({a}), {a}, '$' || octet_length({b}), {b}"
# Stored score is -score on desc boards; an earliest-ties member is
# `<reached_ms:015d>|<player_id>` with reached_ms computed as keys.member's callers do
# (float seconds * 1000, truncated, as int() does), so both paths store the same member.
_EARLIEST_MEMBER = (
    "lpad(trunc(extract(epoch FROM reached_at)::float8 * 1000)::bigint::text, 15, '0')"
    " || '|' || player_id"
)
_MEMBER = {"shared": "player_id", "earliest": _EARLIEST_MEMBER}

# The ZADD arguments (stored score, member) of the set's players that are not banned, in
# reverse sorted-set order (stored score, then member, both descending): each member then
# goes to the head of the skiplist, which Redis inserts in O(1) instead of O(log N) with
# cache misses (measured: ZADD of 1M members 1.9 s of Redis CPU in this order, 5.2 s in
# table order). The order comes from the player_scores_ranking index plus an incremental
# sort of equal scores, so rows stream at once (first row 0.2 s at 1M rows, against 1.6 s
# for a full sort). Keyed by (order, ties).
_SET_MEMBERS = f"""
SELECT {_RESP_COLUMNS.format(a="stored", b="member")}
FROM (
    SELECT (score * {{sign}})::text AS stored, {{member}} AS member
    FROM (
        SELECT ps.player_id, ps.score, ps.reached_at
        FROM player_scores ps
        WHERE {_IN_SET}
          AND NOT EXISTS (
              SELECT 1 FROM players pl WHERE pl.player_id = ps.player_id AND pl.banned
          )
        ORDER BY ps.score {{score}}{{reached}}, ps.player_id COLLATE "C" DESC
    ) sorted
) r
"""
SET_MEMBERS_IN_INSERT_ORDER = {
    (order, ties): _SET_MEMBERS.format(
        sign=-1 if order == "desc" else 1,
        member=_MEMBER[ties],
        score="ASC" if order == "desc" else "DESC",
        reached=", ps.reached_at DESC" if ties == "earliest" else "",
    )
    for order in ("desc", "asc")
    for ties in ("shared", "earliest")
}

# The HSET arguments of the versions hash, every row of the set in no particular order:
# player_id and `version`, `version|member` for earliest ties, the tombstone `version|` for
# a banned player. The join reads only the banned players. Keyed by ties.
_SET_VERSIONS = f"""
SELECT {_RESP_COLUMNS.format(a="player_id", b="versioned")}
FROM (
    SELECT player_id,
           CASE WHEN banned THEN version || '|'
                ELSE version || {{member_suffix}} END AS versioned
    FROM (
        SELECT ps.player_id, ps.version, ps.reached_at, pl.player_id IS NOT NULL AS banned
        FROM player_scores ps
        LEFT JOIN players pl ON pl.player_id = ps.player_id AND pl.banned
        WHERE {_IN_SET}
    ) j
) f
"""
SET_VERSIONS = {
    "shared": _SET_VERSIONS.format(member_suffix="''"),
    "earliest": _SET_VERSIONS.format(member_suffix=f"'|' || {_EARLIEST_MEMBER}"),
}

# The HSET arguments of the board's names hash for the set's players that have a name and
# are not banned (player_id, display_name), in no particular order.
SET_NAMES = f"""
SELECT {_RESP_COLUMNS.format(a="ps.player_id", b="pl.display_name")}
FROM player_scores ps
JOIN players pl ON pl.player_id = ps.player_id
WHERE {_IN_SET}
  AND NOT pl.banned AND pl.display_name IS NOT NULL
"""
# For SET_NAMES only (it runs last in its transaction): a set holding most of the players
# is joined faster by merging the two primary keys than by hashing every player (1M of 1M:
# 0.75 s instead of 1.3 s); a small set still gets its index lookups.
NAMES_JOIN_PLAN = "SET LOCAL enable_hashjoin = off"

# The snapshot of a rebuild's transaction, for its second connection.
EXPORT_SNAPSHOT = "SELECT pg_export_snapshot()"

# Rows of one set changed at or after $4: re-applied after a rebuild's swap.
SET_ROWS_CHANGED_SINCE = _SET_ROWS + " AND ps.updated_at >= $4"

# Current rows of some players of one set ($4): re-checking drift before reporting it.
SET_ROWS_OF_PLAYERS = _SET_ROWS + " AND ps.player_id = ANY($4::text[])"

# Ban / unban: flag the player and bump every row's version (and updated_at, so a
# concurrent rebuild re-applies it), answering the rows with their new versions.
SET_BANNED = """
INSERT INTO players (player_id, banned) VALUES ($1, $2)
ON CONFLICT (player_id) DO UPDATE SET banned = EXCLUDED.banned, updated_at = now()
"""

BUMP_PLAYER_ROWS = """
UPDATE player_scores SET version = version + 1, updated_at = now()
WHERE player_id = $1
RETURNING board_id, window_name, period, player_id, score, version, reached_at
"""

DELETE_PLAYER_BOARD_ROWS = """
DELETE FROM player_scores WHERE board_id = $1 AND player_id = $2
RETURNING board_id, window_name, period, player_id
"""

DELETE_PLAYER_ROWS = """
DELETE FROM player_scores WHERE player_id = $1
RETURNING board_id, window_name, period, player_id
"""

DELETE_PLAYER_EVENTS = "DELETE FROM score_events WHERE player_id = $1"

DELETE_PLAYER = "DELETE FROM players WHERE player_id = $1"

PLAYER_EXISTS = """
SELECT EXISTS (SELECT 1 FROM players WHERE player_id = $1)
    OR EXISTS (SELECT 1 FROM player_scores WHERE player_id = $1)
    OR EXISTS (SELECT 1 FROM score_events WHERE player_id = $1)
"""

# Board deletion, in this order: the board row first (it waits for the transactions holding
# LOCK_BOARDS and makes later ones fail), then what refers to it.
DELETE_BOARD = "DELETE FROM leaderboards WHERE id = $1 RETURNING id"
DELETE_BOARD_ROWS = "DELETE FROM player_scores WHERE board_id = $1"
DELETE_BOARD_EVENT_IDS = "DELETE FROM event_ids WHERE board_id = $1"
DELETE_BOARD_EVENTS = "DELETE FROM score_events WHERE board_id = $1"

SELECT_BOARD_IDS = "SELECT id FROM leaderboards ORDER BY id"

IS_BANNED = "SELECT coalesce((SELECT banned FROM players WHERE player_id = $1), false)"

SELECT_BOARD_EXISTS = "SELECT 1 FROM leaderboards WHERE id = $1"

PLAYERS_ON_BOARD = """
SELECT DISTINCT player_id FROM player_scores WHERE board_id = $1 AND player_id = ANY($2::text[])
"""
