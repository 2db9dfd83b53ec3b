"""Forward-only SQL migrations from `sql/NNN_name.sql`, recorded in `schema_migrations`.

Each file runs in its own transaction, so a failing one leaves nothing behind;
an advisory lock makes concurrent `rankstream migrate` runs take turns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

LOCK_KEY = 0x72616E6B  # "rank": any constant shared by every migrating process
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: str
    name: str
    sql: str


def sql_dir() -> Path:
    """The migrations folder: beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no sql/ folder with migrations found")


def load(folder: Path | None = None) -> list[Migration]:
    """Every migration file in version order."""
    found = []
    for path in sorted((folder or sql_dir()).glob("*.sql")):
        match = _NAME.match(path.name)
        if match:
            found.append(Migration(match.group(1), path.stem, path.read_text()))
    return found


async def migrate(database_url: str, folder: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names of those applied now."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            applied = []
            for migration in load(folder):
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                applied.append(migration.name)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()
