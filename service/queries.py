"""Every SQL statement of the service and the consumers, named."""

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

COUNT_PLAYERS = """
SELECT window_name, period, count(*) AS players
FROM player_scores
WHERE board_id = $1 AND (window_name, period) IN (SELECT * FROM unnest($2::text[], $3::text[]))
GROUP BY window_name, period
"""

# --- ingest (one transaction per batch) -----------------------------------------------------

# New events only: a retried or redelivered event_id conflicts and is left out.
CLAIM_EVENT_IDS = """
INSERT INTO event_ids (event_id, board_id, accepted_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

INSERT_EVENTS = """
INSERT INTO score_events (event_id, board_id, player_id, score, accepted_at, request_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[],
                     $6::text[])
"""

BANNED_AMONG = "SELECT player_id FROM players WHERE banned AND player_id = ANY($1::text[])"

# One statement per operator: the combination rule is the only difference. Each takes the
# batch's already-combined value per row, bumps version only when the score changes, and
# returns the absolute result for the ranking cache. |score| is clamped to 2^53-1.
_UPSERT = """
INSERT INTO player_scores AS p (board_id, window_name, period, player_id, score, reached_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                     $6::timestamptz[])
ON CONFLICT (board_id, window_name, period, player_id) DO UPDATE
SET score = {new},
    version = p.version + 1,
    reached_at = EXCLUDED.reached_at,
    updated_at = now()
WHERE {new} <> p.score
RETURNING board_id, window_name, period, player_id, score, version, reached_at
"""
_CLAMP = "LEAST(GREATEST({}, -9007199254740991), 9007199254740991)"

UPSERT_SCORES = {
    ("best", "desc"): _UPSERT.format(new="GREATEST(p.score, EXCLUDED.score)"),
    ("best", "asc"): _UPSERT.format(new="LEAST(p.score, EXCLUDED.score)"),
    ("latest", "desc"): _UPSERT.format(new="EXCLUDED.score"),
    ("latest", "asc"): _UPSERT.format(new="EXCLUDED.score"),
    ("increment", "desc"): _UPSERT.format(new=_CLAMP.format("p.score + EXCLUDED.score")),
    ("increment", "asc"): _UPSERT.format(new=_CLAMP.format("p.score + EXCLUDED.score")),
}

UPSERT_PLAYERS = """
INSERT INTO players (player_id, display_name, metadata)
SELECT p, n, coalesce(m, '{}'::jsonb)
FROM unnest($1::text[], $2::text[], $3::jsonb[]) AS u(p, n, m)
ON CONFLICT (player_id) DO UPDATE
SET display_name = coalesce(EXCLUDED.display_name, players.display_name),
    metadata = CASE WHEN EXCLUDED.metadata = '{}'::jsonb THEN players.metadata
                    ELSE EXCLUDED.metadata END,
    updated_at = now()
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
