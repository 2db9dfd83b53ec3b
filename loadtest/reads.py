"""`reads`: top-10, player rank and around-me on a board of N ranked players.

The players are loaded the fast way but as real data: `player_scores` rows (version 1)
with asyncpg's COPY, display names in `players`, and the Redis side through the very
apply script the consumer uses (`service.rankcache.apply_rows`, in chunks), so the set,
its versions hash, the names hash and the revision counter are exactly what ingestion
would have left. Then the API runs under granian (1 worker, then 2) and wrk drives each
read with 64 connections and 2 threads.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from loadtest import dataset, machine, profiling, pyclient, results, wrk
from loadtest.stack import (
    BOARD_ID,
    PLAYER_PREFIX,
    REALISTIC_CLIENTS,
    Harness,
    add_stack_arguments,
    copy_players,
    scores_of,
)
from loadtest.stats import figure
from service import keys, rankcache
from service.models import Board

PREFIX = PLAYER_PREFIX
SCENARIOS = {
    # kind: (label, query, target req/s, target p99 ms)
    "top": ("top-10", "?limit=10", 10_000, 20.0),
    "rank": ("player rank", "", 6_000, 25.0),
    "around": ("around-me radius 5", "?radius=5", 5_000, 30.0),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--players", type=int, default=1_000_000, help="ranked players (1000000)")
    p.add_argument("--duration", type=int, default=15, help="seconds per scenario (15)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured seconds first (2)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--workers", default="1,2", help="granian worker counts to try, comma-separated (1,2)"
    )
    p.add_argument("--scenarios", default="top,rank,around", help="top,rank,around")
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each scenario, interleaved; the figures are their medians (3)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="after the measured runs, py-spy the 1-worker API for SECONDS per scenario",
    )
    p.add_argument("--python-client", action="store_true", help="use the Python client, not wrk")
    results.add_tag_argument(p, "limits")
    add_stack_arguments(p, realistic=True)


# --- data ---------------------------------------------------------------------------------


async def load_players(harness: Harness, board: Board, n: int, seed: int) -> dict[str, Any]:
    """N ranked players in Postgres (COPY) and in the Redis set (apply script, in chunks)."""
    scores = scores_of(n, seed)
    now = datetime.now(UTC)
    timings: dict[str, float] = {"postgres_copy_s": await copy_players(harness, scores, now)}

    t0 = time.perf_counter()
    redis = Redis.from_url(harness.settings.redis_url)
    try:
        script = rankcache.apply_script(redis)
        boards = {board.id: board}
        chunk = 20_000
        applied = 0
        for start in range(0, n, chunk):
            rows = [
                rankcache.ScoreRow(BOARD_ID, "all", "all", f"{PREFIX}{i}", scores[i], 1, now)
                for i in range(start, min(n, start + chunk))
            ]
            applied += await rankcache.apply_rows(redis, script, boards, rows, 2)
            await rankcache.set_names(
                redis,
                {
                    BOARD_ID: {
                        f"{PREFIX}{i}": f"Player {i}" for i in range(start, start + len(rows))
                    }
                },
            )
        timings["redis_apply_s"] = round(time.perf_counter() - t0, 2)
        zcard = await redis.zcard(keys.set_key(BOARD_ID, "all", "all"))
        memory = (await redis.info("memory")).get("used_memory_human")
        # The background work the load sets off (autovacuum, an AOF rewrite) is done
        # before measuring rather than inside some rounds and not others.
        timings["settle_s"] = await dataset.settle(harness, redis)
    finally:
        await redis.aclose()
    return {"players": n, "applied": applied, "zcard": zcard, "redis_memory": memory, **timings}


def _get(url: str) -> tuple[int, dict[str, str], Any]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, dict(answer.headers), msgspec.json.decode(answer.read())


def sanity(base: str, n: int) -> dict[str, Any]:
    """One request of each kind: served from Redis, with the expected totals."""
    status, headers, top = _get(f"{base}/v1/leaderboards/{BOARD_ID}/top?limit=10")
    pid = f"{PREFIX}{n // 2}"
    _, _, rank = _get(f"{base}/v1/leaderboards/{BOARD_ID}/players/{pid}")
    _, _, around = _get(f"{base}/v1/leaderboards/{BOARD_ID}/players/{pid}/around?radius=5")
    ok = (
        status == 200
        and headers.get("X-Rankstream-Source", headers.get("x-rankstream-source")) == "redis"
        and top["total"] == n
        and len(top["entries"]) == min(10, n)
        and rank["player_id"] == pid
        and len(around["entries"]) == 11
    )
    return {
        "ok": ok,
        "source": headers.get("X-Rankstream-Source") or headers.get("x-rankstream-source"),
        "top_total": top["total"],
        "leader": top["entries"][0] if top["entries"] else None,
        "sample_rank": rank,
        "around_entries": len(around["entries"]),
    }


# --- the scenario -------------------------------------------------------------------------


def _drive(
    args: argparse.Namespace, binary: str | None, folder: Path, kind: str, base: str, seconds: int
) -> dict[str, Any]:
    _, query, _, _ = SCENARIOS[kind]
    if binary is None:
        return pyclient.run(
            base_url=base, kind=kind, board=BOARD_ID, players=args.players, prefix=PREFIX,
            query=query, connections=args.connections, duration_s=seconds,
        )  # fmt: skip
    clients = REALISTIC_CLIENTS if args.rate_limits == "realistic" else 0
    load = wrk.Workload(
        weights={kind: 1},
        board_ids=(BOARD_ID,),
        players=args.players,
        prefix=PREFIX,
        clients=clients,
    )
    lua = wrk.script(folder, kind, load)
    return wrk.run(binary, base, lua, args.connections, args.threads, seconds)


def run(args: argparse.Namespace) -> int:
    record = results.Record("reads", args, runs=[])
    out = record.out
    binary, how = (None, "--python-client given") if args.python_client else wrk.ensure_wrk()
    generator = (
        f"{machine.wrk_version() or 'wrk'} ({how}), {args.connections} connections, "
        f"{args.threads} threads, {args.duration}s per scenario after {args.warmup}s warm-up"
        if binary
        else f"Python httpx asyncio client, {args.connections} connections ({how}); "
        "NOT wrk: figures understate the server"
    )
    print(f"load generator: {generator}", flush=True)
    out["load_generator"] = generator
    kinds = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    try:
        with Harness(keep_data=args.keep_data, fsync=not args.no_fsync) as harness:
            harness.rate_limits = args.rate_limits
            harness.rate_limit_strategy = args.rate_limit_strategy
            out["rate_limits"] = harness.rate_limit_env() or "this version has none"
            settings = harness.start_servers()
            board = asyncio.run(harness.create_board(["all"]))
            print(f"loading {args.players:,} players...", flush=True)
            out["data"] = asyncio.run(load_players(harness, board, args.players, args.seed))
            print(f"loaded: {out['data']}", flush=True)
            out["servers"] = {"redis": settings.redis_url, "postgres": settings.database_url}
            base = harness.base_url
            for count in workers:
                api = harness.start_api(workers=count)
                if harness.ready_status != 200:
                    out["notes"].append(
                        f"/health/ready answered {harness.ready_status} (not 200) with {count} "
                        "worker(s) although /health/live answered; the run went on"
                    )
                check = sanity(base, args.players)
                print(f"API with {count} worker(s) up; sanity: {check}", flush=True)
                if not check["ok"]:
                    out["notes"].append(f"sanity check failed with {count} worker(s): {check}")
                measured: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
                # Rounds of every scenario rather than one scenario N times: a burst of
                # load from elsewhere on a shared machine then spreads over all of them.
                for _ in range(max(1, args.repeat)):
                    for kind in kinds:
                        result = _measure(args, binary, harness.data_dir, kind, base, count)
                        out["runs"].append(result)
                        measured[kind].append(result)
                for kind in kinds:
                    out["figures"].extend(_figures(kind, count, measured[kind]))
                if args.profile and count == 1:
                    out["profile"] = _profile(args, binary, harness, api.pid, kinds, base)
                harness.stop_child(api)
                harness.stack.children.remove(api)
    except Exception as exc:
        record.failed(exc)
        failed = True
    else:
        failed = False
    record.save()
    return 1 if failed else 0


def _measure(
    args: argparse.Namespace, binary: str | None, data_dir: Path, kind: str, base: str, count: int
) -> dict[str, Any]:
    """One warmed-up, measured run of a scenario."""
    if args.warmup:
        _drive(args, binary, data_dir, kind, base, args.warmup)
    load_before = machine.loadavg()
    result = _drive(args, binary, data_dir, kind, base, args.duration)
    if not binary:
        result.pop("wrk_report", None)
    result.update({"scenario": kind, "api_workers": count, "loadavg_before": load_before})
    print(
        f"  {SCENARIOS[kind][0]:<20} workers={count}: {result['requests_per_s']:,.0f} req/s, "
        f"p50 {result['latency_ms'].get('p50')} ms, p99 {result['latency_ms']['p99']} ms, "
        f"failed {result.get('failed_requests')}, load {load_before[0]}",
        flush=True,
    )
    return result


def _figures(kind: str, count: int, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput and p99 of a scenario: the medians of its runs, every run in the note."""
    label, _, target_rps, target_p99 = SCENARIOS[kind]
    rps = [r["requests_per_s"] for r in runs]
    p99 = [r["latency_ms"]["p99"] for r in runs]
    failed = sum(r.get("failed_requests") or 0 for r in runs)
    each = "; ".join(f"{a:,.0f} req/s p99 {b} ms" for a, b in zip(rps, p99, strict=True))
    note = f"granian workers={count}; median of {len(runs)} run(s): {each}; failed {failed}"
    return [
        figure(
            f"{label} throughput, {count} worker(s)",
            round(statistics.median(rps), 1),
            "req/s",
            target_rps,
            ">=",
            note,
        ),
        figure(
            f"{label} p99, {count} worker(s)",
            round(statistics.median(p99), 3),
            "ms",
            target_p99,
            "<=",
            note,
        ),
    ]


def _profile(
    args: argparse.Namespace,
    binary: str | None,
    harness: Harness,
    pid: int,
    kinds: list[str],
    base: str,
) -> dict[str, Any]:
    """Not measured: py-spy the granian process tree while wrk drives each scenario."""
    summaries = {}
    for kind in kinds:
        raw = Path("/tmp") / f"api-{pid}-{kind}.pyspy.txt"
        spy = profiling.start(pid, args.profile, raw, subprocesses=True)
        _drive(args, binary, harness.data_dir, kind, base, args.profile)
        summaries[kind] = profiling.finish(spy, raw)
        print(f"[{kind}] " + profiling.render(summaries[kind]), flush=True)
    return summaries
