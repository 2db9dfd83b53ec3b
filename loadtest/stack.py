"""The system under test: embedded servers in a fresh temporary folder, and child processes.

Everything started here is remembered and stopped by `Harness.close()` (children first,
by pid, then the embedded servers through `service.embedded.stop`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import asyncpg
import msgspec
from redis.asyncio import Redis

from service import apikeys, boards, coldstart, embedded, periods, up
from service.connections import pg_pool
from service.models import Board, BoardCreate, Window
from service.settings import Settings

BOARD_ID = "bench"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait_api(base_url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> int | None:
    """Wait for /health/ready to answer 200 (what `up` waits for). If the process is up
    (/health/live 200) but readiness keeps failing, go on after 10 s and return its status,
    so the run records it instead of dying; None when the API never came up."""
    deadline = time.monotonic() + timeout_s
    live_since: float | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        ready = http_status(base_url + "/health/ready")
        if ready == 200:
            return 200
        if live_since is None and http_status(base_url + "/health/live") == 200:
            live_since = time.monotonic()
        if live_since is not None and time.monotonic() - live_since > 10:
            return ready
        time.sleep(0.1)
    return None


class Harness:
    """Servers, settings and children of one load-test run."""

    def __init__(
        self,
        keep_data: bool = False,
        fsync: bool = True,
        redis_url: str = "",
        database_url: str = "",
    ) -> None:
        """Servers at the given URLs, or (the default) embedded ones under a temp folder."""
        self.data_dir = Path(tempfile.mkdtemp(prefix="rankstream-loadtest-"))
        self.keep_data = keep_data
        self.admin_key = apikeys.generate()
        self.stack = up.Stack(
            Settings(
                data_dir=str(self.data_dir),
                host="127.0.0.1",
                port=free_port(),
                bootstrap_admin_key=self.admin_key,
                embedded_postgres_fsync=fsync,
                redis_url=redis_url,
                database_url=database_url,
            )
        )
        self.settings = self.stack.settings
        self.ready_status: int | None = None
        self._logs: list[IO[bytes]] = []

    # --- servers -----------------------------------------------------------------------

    @property
    def owns_postgres(self) -> bool:
        """True when this harness started the Postgres it uses (nobody else's data in it)."""
        return any(server.name == "postgres" for server in self.stack.servers)

    def start_servers(self) -> Settings:
        """Embedded Redis and PostgreSQL under the temp folder (unless URLs were given), then
        migrations and the admin key (stored hashed, as `rankstream up` stores its bootstrap
        key, so an API on given servers accepts it too)."""
        self.settings = up.resolve_servers(self.stack.settings, self.stack)
        for server in self.stack.servers:
            if not server.url.startswith(("redis://127.0.0.1", "postgresql://postgres@127.0.0.1")):
                raise RuntimeError(f"unexpected server address {server.url}")
        asyncio.run(up.prepare(self.settings))
        return self.settings

    async def create_board(self, windows: list[Window], board_id: str = BOARD_ID) -> Board:
        """A benchmark board: desc, best, shared ties; marked complete in Redis, as the
        API's create route does (else reads would go to Postgres)."""
        pool = await pg_pool(self.settings)
        redis = Redis.from_url(self.settings.redis_url)
        try:
            board = await boards.create(pool, BoardCreate(id=board_id, windows=windows))
            await coldstart.mark_new_board(redis, board.id)
            return board
        finally:
            await redis.aclose()
            await pool.close()

    async def pg(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.settings.database_url)

    async def vacuum_analyze(self) -> float:
        """VACUUM (ANALYZE) the ranking tables, as autovacuum would have done after a load;
        the seconds it took."""
        conn = await self.pg()
        try:
            t0 = time.perf_counter()
            await conn.execute("VACUUM (ANALYZE) player_scores, players")
            return round(time.perf_counter() - t0, 2)
        finally:
            await conn.close()

    # --- children ----------------------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        """`service.up.child_env` plus the run's own settings; no stray RANKSTREAM_* vars."""
        env = {
            k: v
            for k, v in up.child_env(self.settings).items()
            if not k.startswith("RANKSTREAM_")
            or k in ("RANKSTREAM_REDIS_URL", "RANKSTREAM_DATABASE_URL")
        }
        env["RANKSTREAM_BOOTSTRAP_ADMIN_KEY"] = self.admin_key
        env["RANKSTREAM_HOST"] = self.settings.host
        env["RANKSTREAM_PORT"] = str(self.settings.port)
        env["RANKSTREAM_LOG_LEVEL"] = "warning"
        env.update(self.rate_limit_env())
        env.update(overrides)
        return env

    # "off": disabled; "high": on, with limits no benchmark reaches; "realistic": the
    # default limits, 127.0.0.1 trusted as a proxy, the load generator sending
    # X-Forwarded-For from REALISTIC_CLIENTS addresses (see `wrk.Workload.clients`).
    rate_limits = "off"
    rate_limit_strategy = ""  # realistic: the service's default when empty

    def rate_limit_env(self) -> dict[str, str]:
        """One client on 127.0.0.1 would hit the per-IP and per-key limits at once, so the
        benchmark turns them off, sets them out of reach, or (realistic) spreads its
        requests over many forwarded client addresses, when this version has limits."""
        fields = set(Settings.__struct_fields__)
        if "rate_limits_enabled" not in fields:
            return {}
        if self.rate_limits == "off":
            return {"RANKSTREAM_RATE_LIMITS_ENABLED": "false"}
        if self.rate_limits == "realistic":
            defaults = {f.name: f.default for f in msgspec.structs.fields(Settings)}
            strategy = self.rate_limit_strategy or str(defaults["rate_limit_strategy"])
            return {
                "RANKSTREAM_RATE_LIMITS_ENABLED": "true",
                "RANKSTREAM_TRUSTED_PROXIES": "127.0.0.1",
                "RANKSTREAM_RATE_LIMIT_STRATEGY": strategy,
            }
        return {
            "RANKSTREAM_" + name.upper(): "100000000/second"
            for name in fields
            if name.startswith("rate_limit_") and name != "rate_limit_strategy"
        }

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start a child in its own session, output to `<data_dir>/logs/<name>.log`."""
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(out)
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.stack.children.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start_api(self, workers: int = 1) -> subprocess.Popen[bytes]:
        """granian serving the API (service.up.api_command); waits for /health/ready."""
        settings = msgspec.structs.replace(self.settings, api_workers=workers)
        proc = self.spawn(
            f"api-{workers}w",
            up.api_command(settings),
            self.env(RANKSTREAM_API_WORKERS=str(workers)),
        )
        self.ready_status = wait_api(self.base_url, 60, proc)
        if self.ready_status is None:
            raise RuntimeError(f"the API did not come up:\n{self.log_tail(f'api-{workers}w')}")
        return proc

    def start_consumer(self, batch_size: int = 500, workers: int = 1) -> subprocess.Popen[bytes]:
        """The consumer, `python -m service.cli consume` (one process unless `workers`)."""
        return self.spawn(
            "consumer",
            up.consumer_command(self.settings),
            self.env(
                RANKSTREAM_BATCH_SIZE=str(batch_size), RANKSTREAM_CONSUMER_WORKERS=str(workers)
            ),
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @staticmethod
    def stop_child(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
        """SIGTERM, wait, then SIGKILL the child's own process group (its workers)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the group this harness created
                proc.wait()
        # granian workers share the child's session: make sure none outlives it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 0)
            time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop children, then servers; remove the temp folder unless asked to keep it."""
        try:
            for child in reversed(self.stack.children):
                self.stop_child(child)
        finally:
            for server in reversed(self.stack.servers):
                embedded.stop(server)
            for out in self._logs:
                out.close()
            if self.keep_data:
                print(f"data kept in {self.data_dir}", flush=True)
            else:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PLAYER_PREFIX = "player-"


# Distinct client addresses of a realistic run: at 20,000 req/s for a minute, about 12
# requests each, far under the default per-IP limits (300 and 600 a minute).
REALISTIC_CLIENTS = 100_000


def add_stack_arguments(
    p: argparse.ArgumentParser, rate_limits: bool = True, realistic: bool = False
) -> None:
    """The options of every scenario that starts its own stack here; `realistic` for those
    whose load generator can send forwarded client addresses."""
    if rate_limits:
        p.add_argument(
            "--rate-limits",
            choices=["off", "high", "realistic"] if realistic else ["off", "high"],
            default="off",
            help="API rate limits: off (default), on with out-of-reach limits"
            + (
                f", or realistic: the default limits, {REALISTIC_CLIENTS:,} client addresses"
                if realistic
                else ""
            ),
        )
        if realistic:
            p.add_argument(
                "--rate-limit-strategy",
                default="",
                help="with --rate-limits realistic: the window strategy (default: the "
                "service's own default)",
            )
    p.add_argument("--no-fsync", action="store_true", help="embedded PostgreSQL with fsync=off")
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data folder")
    p.add_argument("--seed", type=int, default=1)


def scores_of(n: int, seed: int) -> list[int]:
    """The benchmark players' scores: the same for the same seed in every scenario."""
    rng = random.Random(seed)
    return [rng.randrange(100_000_000) for _ in range(n)]


async def _copy(
    conn: asyncpg.Connection,
    table: str,
    records: Iterable[tuple[Any, ...]],
    columns: list[str],
    index_after: bool,
) -> None:
    """COPY records into a table. With `index_after`, when the table is empty, its unique
    keys and indexes are dropped first and built again after, in the same transaction: one
    sorted build per index costs a fraction of updating them row by row (1.5x faster in all
    at 300k rows, more once the indexes outgrow the cache)."""
    async with conn.transaction():
        empty = await conn.fetchval(f"SELECT NOT EXISTS (SELECT 1 FROM {table})")
        keys: list[asyncpg.Record] = []
        indexes: list[asyncpg.Record] = []
        if index_after and empty:
            keys = await conn.fetch(
                "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint"
                " WHERE conrelid = $1::regclass AND contype IN ('p', 'u')",
                table,
            )
            own = {k["conname"] for k in keys}  # a key's index has the key's name
            indexes = [
                i
                for i in await conn.fetch(
                    "SELECT indexname, indexdef FROM pg_indexes"
                    " WHERE schemaname = current_schema() AND tablename = $1",
                    table,
                )
                if i["indexname"] not in own
            ]
            for k in keys:
                await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{k["conname"]}"')
            for i in indexes:
                await conn.execute(f'DROP INDEX "{i["indexname"]}"')
        await conn.copy_records_to_table(table, records=records, columns=columns)
        if keys or indexes:
            await conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
            for k in keys:
                await conn.execute(
                    f'ALTER TABLE {table} ADD CONSTRAINT "{k["conname"]}" {k["definition"]}'
                )
            for i in indexes:
                await conn.execute(i["indexdef"])


async def copy_players(
    harness: Harness,
    scores: list[int],
    at: datetime,
    *,
    board_ids: Sequence[str] = (BOARD_ID,),
    windows: Sequence[Window] = ("all",),
    prefix: str = PLAYER_PREFIX,
    index_after: bool = False,
) -> float:
    """Named players into Postgres by COPY, with a `player_scores` row (version 1, stamped
    `at`) in the period of `at` of every window; player i (score scores[i]) is
    `<prefix><i>` on board `board_ids[i % len(board_ids)]`. `index_after`: build the
    indexes of empty tables after the COPY (only on a database this harness owns).
    Returns seconds."""
    t0 = time.perf_counter()
    spots = [(w, periods.period_id(w, at)) for w in windows]
    conn = await harness.pg()
    try:
        await _copy(
            conn,
            "player_scores",
            (
                (board_ids[i % len(board_ids)], w, p, f"{prefix}{i}", score, 1, at, at)
                for i, score in enumerate(scores)
                for w, p in spots
            ),
            [
                "board_id", "window_name", "period", "player_id",
                "score", "version", "reached_at", "updated_at",
            ],
            index_after,
        )  # fmt: skip
        await _copy(
            conn,
            "players",
            ((f"{prefix}{i}", f"Player {i}") for i in range(len(scores))),
            ["player_id", "display_name"],
            index_after,
        )
        await conn.execute("ANALYZE player_scores; ANALYZE players")
    finally:
        await conn.close()
    return round(time.perf_counter() - t0, 2)
