"""The `rankstream` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import msgspec
from redis.asyncio import Redis

from service import apikeys, embedded, migrations, periods, signing, up
from service.connections import pg_pool, redis_client
from service.models import Board
from service.settings import Settings, SettingsError


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "port", None) is not None:
        settings = msgspec.structs.replace(settings, port=args.port)
    return settings


def cmd_up(args: argparse.Namespace) -> int:
    """Embedded servers (unless URLs are set), migrations, API and consumer."""
    return up.run(_settings(args), consumers=not args.no_consumer)


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the API with granian (URLs must be set or the embedded servers running)."""
    settings = up.resolve_servers(_settings(args))
    up.fresh_metrics(settings)
    os.execve(sys.executable, up.api_command(settings), up.child_env(settings))


def cmd_consume(args: argparse.Namespace) -> int:
    """Drain the submission stream."""
    from consumers.app import run_workers

    settings = up.resolve_servers(_settings(args))
    return run_workers(settings, workers=args.workers or settings.consumer_workers)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations."""
    settings = up.resolve_servers(_settings(args))
    applied = asyncio.run(migrations.migrate(settings.database_url))
    print("applied: " + ", ".join(applied) if applied else "up to date")
    return 0


def cmd_servers(args: argparse.Namespace) -> int:
    """Start, stop or show the embedded servers."""
    settings = _settings(args)
    data_dir = Path(settings.data_dir)
    if args.action == "stop":
        stopped = embedded.stop_all(data_dir)
        print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
        return 0
    settings = up.resolve_servers(settings)
    print(f"RANKSTREAM_REDIS_URL={settings.redis_url}")
    print(f"RANKSTREAM_DATABASE_URL={settings.database_url}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Create an API key (printed once), list keys, or revoke one."""
    settings = up.resolve_servers(_settings(args))
    if args.action == "create" and args.role is None:
        print("rankstream: keys create needs --role", file=sys.stderr)
        return 2
    if args.signed and args.role != "client":
        print("rankstream: --signed is for client keys (game clients)", file=sys.stderr)
        return 2
    if args.action == "revoke" and args.id is None:
        print("rankstream: keys revoke needs a key id (see `keys list`)", file=sys.stderr)
        return 2

    async def run() -> int:
        pool = await pg_pool(settings)
        try:
            if args.action == "create":
                key = apikeys.generate()
                secret = signing.generate_secret() if args.signed else None
                await apikeys.store(pool, key, args.role, args.name, signing_secret=secret)
                print(key if secret is None else f"{key}\n{secret}")
                if secret is not None:
                    print(
                        "the second line is the signing secret: sign submissions with it "
                        "(X-Rankstream-Timestamp, X-Rankstream-Signature; see README)",
                        file=sys.stderr,
                    )
                return 0
            if args.action == "list":
                found = await apikeys.list_keys(pool)
                if args.json:
                    print(msgspec.json.format(msgspec.json.encode(found)).decode())
                    return 0
                for k in found:
                    state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "live"
                    signed = "signed" if k.signed else "      "
                    print(
                        f"{k.id:>6}  {k.role:6}  {signed}  {state:24}  "
                        f"{k.created_at:%Y-%m-%d}  {k.name}"
                    )
                return 0
            done = await apikeys.revoke(pool, args.id)
        finally:
            await pool.close()
        if done is None:
            print(f"rankstream: no key with id {args.id}", file=sys.stderr)
            return 1
        print(f"key {args.id} revoked" if done else f"key {args.id} was already revoked")
        print(
            f"API processes refuse it within {settings.key_cache_ttl_s:g}s (their key cache)",
            file=sys.stderr,
        )
        return 0

    return asyncio.run(run())


@asynccontextmanager
async def _stores(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, Redis]]:
    """A Postgres pool and a Redis client for one command, closed afterwards."""
    pool = await pg_pool(settings)
    redis = redis_client(settings)
    try:
        yield pool, redis
    finally:
        await redis.aclose()
        await pool.close()


def cmd_dlq(args: argparse.Namespace) -> int:
    """List dead letters, or replay them into the submission stream."""
    from service import dead_letters

    settings = up.resolve_servers(_settings(args))

    async def run() -> int:
        async with _stores(settings) as (pool, redis):
            if args.action == "list":
                found = await dead_letters.list_dead_letters(pool, replayed=args.all)
                if args.json:
                    print(msgspec.json.format(msgspec.json.encode(found)).decode())
                    return 0
                for d in found:
                    what = (
                        f"{d.board_id}/{d.player_id} score={d.score} event={d.event_id}"
                        if d.event_id is not None
                        else f"undecodable {d.payload!r}"
                    )
                    replayed = f" replayed {d.replayed_at:%Y-%m-%d %H:%M}" if d.replayed_at else ""
                    print(f"{d.id:>6}  {d.created_at:%Y-%m-%d %H:%M}  {d.reason}: {what}{replayed}")
                print(f"{len(found)} dead letter(s)", file=sys.stderr)
                return 0
            ids = list(args.ids) if args.ids else None
            result = await dead_letters.replay(redis, pool, settings.stream_key, ids)
        print(f"replayed {len(result.replayed)}: {' '.join(map(str, result.replayed))}".rstrip())
        if result.undecodable:
            print(f"left alone (undecodable): {' '.join(map(str, result.undecodable))}")
        if result.not_found:
            print(f"not found: {' '.join(map(str, result.not_found))}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(run())


def cmd_partitions(args: argparse.Namespace) -> int:
    """Detach old monthly score_events partitions (kept as plain tables for archiving)."""
    from service import partitions

    settings = up.resolve_servers(_settings(args))
    try:
        before = partitions.parse_month(args.before)
    except ValueError as exc:
        print(f"rankstream: --before: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        pool = await pg_pool(settings)
        try:
            done = await partitions.detach_before(pool, before, dry_run=args.dry_run)
        except ValueError as exc:
            print(f"rankstream: {exc}", file=sys.stderr)
            return 2
        finally:
            await pool.close()
        verb = "would detach" if args.dry_run else "detached"
        for d in done:
            print(f"{verb} {d.table} ({d.month}, {d.rows} events)")
        print(f"{verb} {len(done)} partition(s)", file=sys.stderr)
        return 0

    return asyncio.run(run())


def _board_or_exit(board_id: str, found: dict[str, Board]) -> Board | None:
    board = found.get(board_id)
    if board is None:
        print(f"rankstream: no leaderboard {board_id!r}", file=sys.stderr)
    return board


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Rebuild a board's sorted sets from Postgres with no downtime."""
    from service import boards, rebuild, recompute

    settings = up.resolve_servers(_settings(args))
    if args.period is not None and args.window is None:
        print("rankstream: --period needs --window", file=sys.stderr)
        return 2

    async def run() -> int:
        async with _stores(settings) as (pool, redis):
            board = _board_or_exit(args.board, await boards.load_all(pool))
            if board is None:
                return 2
            if args.window is not None and args.window not in board.windows:
                print(f"rankstream: board {board.id} has no window {args.window}", file=sys.stderr)
                return 2
            period = args.period
            if period is not None:
                try:
                    period = periods.resolve(args.window, period, datetime.now(UTC))
                except ValueError as exc:
                    print(f"rankstream: --period: {exc}", file=sys.stderr)
                    return 2

            if args.from_events:
                if args.window is not None:
                    print("rankstream: --from-events rebuilds every window", file=sys.stderr)
                    return 2
                try:
                    redone = await recompute.recompute_board(pool, board)
                except recompute.EventsDetached as exc:
                    print(f"rankstream: {exc}", file=sys.stderr)
                    return 1
                print(
                    f"recomputed {redone.rows} rows (were {redone.rows_before}) from"
                    f" {redone.events} events, version {redone.version},"
                    f" {redone.seconds:.2f}s"
                )

            async def progress(done: int, total: int) -> None:
                width = 30
                filled = width * done // total if total else width
                bar = "#" * filled + "-" * (width - filled)
                print(f"\rrebuild {board.id} [{bar}] {done}/{total}", end="", file=sys.stderr)

            report = await rebuild.rebuild_board(
                redis,
                pool,
                board,
                retention=settings.retention_periods,
                window=args.window,
                period=period,
                progress=progress,
                names=True if args.names else None,
            )
            print(file=sys.stderr)
            for s in report.sets:
                print(
                    f"{s.window}:{s.period}: {s.ranked} ranked of {s.rows} rows,"
                    f" {s.reapplied} re-applied, {s.seconds:.2f}s"
                )
            print(f"rebuilt {len(report.sets)} set(s), {report.rows} rows in {report.seconds:.2f}s")
            return 0

    return asyncio.run(run())


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Compare a board's sorted sets with Postgres; --fix repairs the drift."""
    from service import boards, reconcile

    settings = up.resolve_servers(_settings(args))

    async def run() -> int:
        async with _stores(settings) as (pool, redis):
            board = _board_or_exit(args.board, await boards.load_all(pool))
            if board is None:
                return 2
            report = await reconcile.reconcile_board(
                redis, pool, board, retention=settings.retention_periods, fix=args.fix
            )
        if args.json:
            print(msgspec.json.format(msgspec.json.encode(report)).decode())
        else:
            for s in report.sets:
                print(
                    f"{s.window}:{s.period}: postgres {s.postgres}, redis {s.redis},"
                    f" {s.differing_buckets}/{s.buckets} buckets differ,"
                    f" {s.drifted} player(s) drifted"
                    + (f", {s.repaired} repaired" if args.fix else "")
                )
                for d in s.players:
                    print(f"  {d.kind:12} {d.player_id}  postgres={d.expected} redis={d.actual}")
            verdict = "in sync" if report.clean else ("fixed" if report.fixed else "DRIFT")
            print(f"{report.board_id}: {report.drifted} player(s) drifted: {verdict}")
        return 0 if report.clean or report.fixed else 1

    return asyncio.run(run())


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    top = argparse.ArgumentParser(prog="rankstream", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=(func.__doc__ or "").strip().splitlines()[0])
        p.set_defaults(func=func)
        return p

    p = command("up", cmd_up)
    p.add_argument("--port", type=int, help="HTTP port (default RANKSTREAM_PORT or 8000)")
    p.add_argument("--no-consumer", action="store_true", help="run the API only")
    p = command("api", cmd_api)
    p.add_argument("--port", type=int)
    p = command("consume", cmd_consume)
    p.add_argument("--workers", type=int, default=0, help="consumer processes")
    command("migrate", cmd_migrate)
    p = command("servers", cmd_servers)
    p.add_argument("action", choices=["start", "stop"])
    p = command("keys", cmd_keys)
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("id", nargs="?", type=int, help="key id (revoke)")
    p.add_argument("--role", choices=["admin", "client"], help="role of a new key (create)")
    p.add_argument("--name", default="", help="label of a new key (create)")
    p.add_argument(
        "--signed", action="store_true", help="the new client key must sign submissions (create)"
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p = command("dlq", cmd_dlq)
    p.add_argument("action", choices=["list", "replay"])
    p.add_argument(
        "ids",
        nargs="*",
        type=int,
        help="dead letter ids to replay (default: every one not replayed)",
    )
    p.add_argument("--all", action="store_true", help="list replayed ones too")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p = command("partitions", cmd_partitions)
    p.add_argument("action", choices=["detach"])
    p.add_argument("--before", required=True, help="YYYY-MM: detach the months before it")
    p.add_argument("--dry-run", action="store_true", help="only show what would be detached")
    p = command("rebuild", cmd_rebuild)
    p.add_argument("board")
    p.add_argument("--window", choices=["all", "daily", "weekly", "monthly"])
    p.add_argument("--period", help="period id, `current` or `previous` (needs --window)")
    p.add_argument(
        "--from-events",
        action="store_true",
        help="first recompute player_scores from score_events (after changing the operator)",
    )
    p.add_argument(
        "--names",
        action="store_true",
        help="rewrite the players' display names too (by default only a board without any)",
    )
    p = command("reconcile", cmd_reconcile)
    p.add_argument("board")
    p.add_argument("--fix", action="store_true", help="repair the drift found")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (SettingsError, embedded.EmbeddedError) as exc:
        print(f"rankstream: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
