"""The `rankstream` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec

from service import apikeys, embedded, migrations, up
from service.connections import pg_pool
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
    """Create an API key and print it once."""
    settings = up.resolve_servers(_settings(args))

    async def create() -> str:
        key = apikeys.generate()
        pool = await pg_pool(settings)
        try:
            await apikeys.store(pool, key, args.role, args.name)
        finally:
            await pool.close()
        return key

    print(asyncio.run(create()))
    return 0


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
    p.add_argument("action", choices=["create"])
    p.add_argument("--role", choices=["admin", "client"], required=True)
    p.add_argument("--name", default="")
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
