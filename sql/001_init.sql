-- rankstream schema. Forward-only; applied once by `rankstream migrate` in one transaction.

CREATE TABLE leaderboards (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    sort_order  text NOT NULL CHECK (sort_order IN ('asc', 'desc')),
    operator    text NOT NULL CHECK (operator IN ('best', 'latest', 'increment')),
    windows     text[] NOT NULL CHECK (cardinality(windows) > 0
                    AND windows <@ ARRAY['all', 'daily', 'weekly', 'monthly']),
    ties        text NOT NULL DEFAULT 'shared' CHECK (ties IN ('shared', 'earliest')),
    min_score   bigint,
    max_score   bigint,
    title       text,
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (min_score IS NULL OR max_score IS NULL OR min_score <= max_score)
);

-- Every accepted submission, partitioned by acceptance time so old months can be
-- detached and archived. A partitioned table cannot hold a unique key that leaves
-- out the partition column, so uniqueness of event_id lives in event_ids below.
CREATE TABLE score_events (
    event_id     text NOT NULL,
    board_id     text NOT NULL,
    player_id    text NOT NULL,
    score        bigint NOT NULL,
    accepted_at  timestamptz NOT NULL,
    request_id   text,
    PRIMARY KEY (event_id, accepted_at)
) PARTITION BY RANGE (accepted_at);

CREATE INDEX score_events_board_time ON score_events (board_id, accepted_at);

-- Catches what falls outside the monthly partitions made ahead, so an insert never fails.
CREATE TABLE score_events_default PARTITION OF score_events DEFAULT;

-- The idempotency ledger: one row per event ever applied. A retried or redelivered
-- event_id conflicts here and changes nothing.
CREATE TABLE event_ids (
    event_id     text PRIMARY KEY,
    board_id     text NOT NULL,
    accepted_at  timestamptz NOT NULL
);

-- Current value per (board, window, period, player): what every ranking is rebuilt from.
-- version rises by one on every change; the Redis apply script only takes newer versions.
-- reached_at is when the current score was first reached (the `earliest` tie rule).
CREATE TABLE player_scores (
    board_id     text NOT NULL REFERENCES leaderboards (id) ON DELETE CASCADE,
    window_name  text NOT NULL,
    period       text NOT NULL,
    player_id    text NOT NULL,
    score        bigint NOT NULL,
    version      bigint NOT NULL DEFAULT 1,
    reached_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (board_id, window_name, period, player_id)
);

CREATE INDEX player_scores_ranking ON player_scores (board_id, window_name, period, score, reached_at, player_id);
CREATE INDEX player_scores_player ON player_scores (player_id);
CREATE INDEX player_scores_changed ON player_scores (board_id, updated_at);

CREATE TABLE players (
    player_id     text PRIMARY KEY,
    display_name  text,
    metadata      jsonb NOT NULL DEFAULT '{}',
    banned        boolean NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    key_hash    bytea NOT NULL UNIQUE,
    role        text NOT NULL CHECK (role IN ('admin', 'client')),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    stream_id    text NOT NULL,
    payload      bytea NOT NULL,
    reason       text NOT NULL,
    deliveries   integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz
);

-- Monthly partitions of score_events from the month of `start_at` for `months_ahead` more.
CREATE FUNCTION rankstream_ensure_partitions(start_at timestamptz, months_ahead integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    made integer := 0;
    month_start date := date_trunc('month', start_at AT TIME ZONE 'UTC')::date;
    lower_bound date;
    upper_bound date;
    name text;
BEGIN
    FOR i IN 0 .. months_ahead LOOP
        lower_bound := month_start + make_interval(months => i);
        upper_bound := lower_bound + interval '1 month';
        name := format('score_events_%s', to_char(lower_bound, 'YYYY_MM'));
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF score_events FOR VALUES FROM (%L) TO (%L)',
                name, lower_bound::timestamp AT TIME ZONE 'UTC', upper_bound::timestamp AT TIME ZONE 'UTC');
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END;
$$;

SELECT rankstream_ensure_partitions(now(), 2);
