"""Old `score_events` partitions: detached so they can be archived (and then dropped).

`score_events` is partitioned by month (`score_events_YYYY_MM`, made ahead by the consumers'
upkeep). `rankstream partitions detach --before YYYY-MM` detaches every monthly partition
that ends on or before the start of that month; each stays as a plain table of the same
name, ready for `pg_dump -t` and `DROP TABLE`. Scores are unaffected: `player_scores` holds
every period's result, and the idempotency ledger (`event_ids`) is a separate table. The
last full month and the current one always stay attached.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import asyncpg
import msgspec

MONTH = re.compile(r"^(\d{4})-(\d{2})$")

# Monthly partitions with their bounds, oldest first.
MONTHLY_PARTITIONS = """
SELECT c.relname AS name
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'score_events'::regclass
  AND c.relname ~ '^score_events_[0-9]{4}_[0-9]{2}$'
ORDER BY c.relname
"""


class Detached(msgspec.Struct, frozen=True):
    """A partition detached, now a plain table."""

    table: str
    month: str
    rows: int


def parse_month(text: str) -> date:
    """`YYYY-MM` -> the first day of that month; ValueError otherwise."""
    found = MONTH.match(text)
    if not found or not 1 <= int(found.group(2)) <= 12:
        raise ValueError(f"expected YYYY-MM, got {text!r}")
    return date(int(found.group(1)), int(found.group(2)), 1)


def latest_allowed(now: datetime) -> date:
    """The latest `--before` accepted: the start of the previous month (so partitions of
    the last full month and of the current one stay)."""
    year, month = now.year, now.month - 1
    if month == 0:
        year, month = year - 1, 12
    return date(year, month, 1)


def _month_of(name: str) -> date:
    year, month = name.removeprefix("score_events_").split("_")
    return date(int(year), int(month), 1)


async def detach_before(
    pg: asyncpg.Pool, before: date, *, now: datetime | None = None, dry_run: bool = False
) -> list[Detached]:
    """Detach the monthly partitions of months before `before`; what was (or would be)
    detached. ValueError if `before` is later than the start of the previous month."""
    limit = latest_allowed(now or datetime.now(UTC))
    if before > limit:
        raise ValueError(
            f"--before {before:%Y-%m} would detach recent events: the latest allowed is"
            f" {limit:%Y-%m}"
        )
    out: list[Detached] = []
    async with pg.acquire() as conn:
        for r in await conn.fetch(MONTHLY_PARTITIONS):
            month = _month_of(r["name"])
            if month >= before:
                continue
            rows: int = await conn.fetchval(f'SELECT count(*) FROM "{r["name"]}"')
            if not dry_run:
                # not CONCURRENTLY: score_events has a default partition
                await conn.execute(f'ALTER TABLE score_events DETACH PARTITION "{r["name"]}"')
            out.append(Detached(table=r["name"], month=f"{month:%Y-%m}", rows=rows))
    return out
