"""`ingest`: consumer throughput, and submit -> visible latency at a steady offered load.

Phase 1 (throughput): the stream is pre-filled with N events by XADD in pipelines (the
entries the API would write, `service.stream.encode`), then ONE consumer process starts
(`python -m service.cli consume`, batch size 500) and the clock runs until the consumer
group has lag 0 and nothing pending (XINFO GROUPS). The board has two windows, so every
event updates two `player_scores` rows. Events carry no display name unless `--named` asks
for a share that does (a named event also upserts its player's row and the board's names
hash, as a game sending names with every score would). The phase runs `--repeat` times,
each on fresh servers, and reports the median drain: one drain alone moved by a tenth
between runs.

Phase 2 (latency): the API (granian) runs beside the consumer; an open-loop client sends
`POST /v1/scores/batch` at a fixed rate (default 50 submissions every 10 ms = 5,000/s)
while, every ~50 ms, a probe submission for a fresh player is sent and the `all` set is
polled (ZMSCORE every few ms) until the probe's member appears.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
from redis.asyncio import Redis

from loadtest import pgreference, procstat, profiling, results
from loadtest.backlog import group_state, text
from loadtest.stack import BOARD_ID, Harness, add_stack_arguments
from loadtest.stats import figure, percentile
from service import keys, scores, stream
from service.models import ScoreEvent

TARGET_EVENTS_S = 15_000
TARGET_VISIBLE_P99_MS = 1_000
TARGET_OFFERED = 5_000
DELIVERED_SHARE = 0.99  # of the offered rate: the latency phase must deliver its load


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=200_000, help="events pre-filled (200000)")
    p.add_argument("--players", type=int, default=100_000, help="distinct players (100000)")
    p.add_argument(
        "--named",
        type=float,
        default=0.0,
        help="share of pre-filled events that carry the player's display name (0: none; "
        "each named event upserts its players row and the board's names hash)",
    )
    p.add_argument("--batch-size", type=int, default=500, help="RANKSTREAM_BATCH_SIZE (500)")
    p.add_argument("--rate", type=int, default=5_000, help="offered submissions/s (5000)")
    p.add_argument("--http-batch", type=int, default=50, help="submissions per request (50)")
    p.add_argument("--duration", type=float, default=20.0, help="latency phase seconds (20)")
    p.add_argument("--probe-every-ms", type=float, default=50.0, help="probe interval (50)")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="after the measured drain, pre-fill again and py-spy the consumer for SECONDS",
    )
    p.add_argument("--skip-latency", action="store_true", help="throughput phase only")
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="drains, each on fresh servers; figures are medians (3)",
    )
    results.add_tag_argument(p, "batch1000")
    add_stack_arguments(p)


# --- phase 1: throughput ------------------------------------------------------------------


async def prefill(
    redis: Redis,
    stream_key: str,
    n: int,
    players: int,
    rng: random.Random,
    prefix: str,
    named: float = 0.0,
) -> tuple[float, bytes]:
    """XADD n events in pipelines of 5,000, a share `named` of them with the player's display
    name; return (seconds taken, last entry id)."""
    t0 = time.perf_counter()
    last_id = b"0-0"
    chunk = 5_000
    for start in range(0, n, chunk):
        accepted_ms = scores.now_ms()
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(start, min(n, start + chunk)):
                player = rng.randrange(players)
                event = ScoreEvent(
                    event_id=str(uuid.uuid4()),
                    board_id=BOARD_ID,
                    player_id=f"{prefix}{player}",
                    score=rng.randrange(1_000_000_000),
                    accepted_ms=accepted_ms,
                    display_name=f"Player {player}" if rng.random() < named else None,
                )
                pipe.xadd(stream_key, {stream.FIELD: stream.encode(event)})
            ids = await pipe.execute()
        last_id = ids[-1]
    return time.perf_counter() - t0, last_id


async def wait_drained(
    redis: Redis,
    harness: Harness,
    proc: Any,
    last_id: bytes,
    timeout_s: float,
    on_first: Any = None,
    on_sample: Any = None,
) -> dict[str, Any]:
    """Poll XINFO GROUPS every 20 ms until lag 0 and pending 0; timings and a timeline."""
    s = harness.settings
    t_spawn = time.perf_counter()
    t_first: float | None = None
    timeline: list[dict[str, Any]] = []
    next_sample = t_spawn
    while True:
        now = time.perf_counter()
        if proc.poll() is not None:
            raise RuntimeError(f"the consumer exited:\n{harness.log_tail('consumer')}")
        if now - t_spawn > timeout_s:
            raise TimeoutError(f"the stream was not drained in {timeout_s:.0f}s")
        g = await group_state(redis, s.stream_key, s.consumer_group)
        if g is not None:
            pending, lag = int(g["pending"]), g.get("lag")
            read = g.get("entries-read")
            if t_first is None and (pending > 0 or (read or 0) > 0):
                t_first = now
                if on_first is not None:
                    on_first()
            if now >= next_sample:
                if on_sample is not None:
                    on_sample()  # backends that come and go are seen while alive
                timeline.append(
                    {"t_s": round(now - t_spawn, 2), "lag": lag, "pending": pending, "read": read}
                )
                next_sample += 1.0
            caught_up = lag == 0 or (lag is None and text(g["last-delivered-id"]) == text(last_id))
            if pending == 0 and caught_up:
                return {
                    "t_spawn": t_spawn,
                    "t_first": t_first if t_first is not None else now,
                    "t_done": now,
                    "timeline": timeline,
                }
        await asyncio.sleep(0.02)


async def verify(harness: Harness, redis: Redis, expect_events: int) -> dict[str, Any]:
    """What the drained consumer left behind: events recorded, rows, dead letters, sets, and
    the names of named players (in Postgres and in the board's names hash)."""
    conn = await harness.pg()
    try:
        events = await conn.fetchval("SELECT count(*) FROM event_ids")
        rows = await conn.fetchval(
            "SELECT count(*) FROM player_scores WHERE board_id = $1", BOARD_ID
        )
        dead = await conn.fetchval("SELECT count(*) FROM dead_letters")
        named = await conn.fetchval("SELECT count(*) FROM players WHERE display_name IS NOT NULL")
        periods = await conn.fetch(
            "SELECT window_name, period, count(*) AS n FROM player_scores "
            "WHERE board_id = $1 GROUP BY 1, 2 ORDER BY 1, 2",
            BOARD_ID,
        )
    finally:
        await conn.close()
    names = await redis.hlen(keys.names_key(BOARD_ID))
    zcards = {}
    for r in periods:
        key = keys.set_key(BOARD_ID, r["window_name"], r["period"])
        zcards[key] = {"postgres_rows": r["n"], "zcard": await redis.zcard(key)}
    return {
        "events_recorded": events,
        "events_expected": expect_events,
        "player_scores_rows": rows,
        "dead_letters": dead,
        "named_players": named,
        "names_in_redis": names,
        "sets": zcards,
        "ok": events == expect_events
        and dead == 0
        and named == names
        and all(v["postgres_rows"] == v["zcard"] for v in zcards.values()),
    }


def _cpu_groups(harness: Harness, consumer_pid: int) -> list[procstat.Group]:
    """The consumer's process tree and the embedded servers' (Postgres: every backend)."""
    cores = float(os.cpu_count() or 1)
    groups = [procstat.Group("consumer", (consumer_pid,), tree=True, cores=1.0)]
    for server in harness.stack.servers:
        groups.append(
            procstat.Group(
                server.name, (server.pid,), True, 1.0 if server.name == "redis" else cores
            )
        )
    return groups


def _cpu_per_event(meter: procstat.CpuMeter, events: int) -> dict[str, float]:
    """µs of CPU per event of each group, and their total; what bounds the rate on a machine
    whose cores they share (events/s <= cores / total)."""
    seconds = meter.cpu_seconds()
    out = {name: round(1e6 * s / events, 1) for name, s in seconds.items()}
    out["total"] = round(sum(out.values()), 1)
    return out


# --- phase 2: latency ---------------------------------------------------------------------


class LoadStats(msgspec.Struct):
    requests: int = 0
    accepted_requests: int = 0
    accepted_events: int = 0
    status_503: int = 0
    other_status: int = 0
    errors: int = 0
    request_ms: list[float] = msgspec.field(default_factory=list)


async def latency_phase(
    harness: Harness, redis: Redis, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    base = harness.base_url
    headers = {
        "authorization": f"Bearer {harness.admin_key}",
        "content-type": "application/json",
    }
    set_key = keys.set_key(BOARD_ID, "all", "all")
    interval = args.http_batch / args.rate  # seconds between batch requests
    stats = LoadStats()
    probe_sent: dict[str, float] = {}
    probe_accepted: dict[str, float] = {}
    probe_seen: dict[str, float] = {}
    probe_failed: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    encoder = msgspec.json.Encoder()
    run_tag = uuid.uuid4().hex[:8]

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as http:

        async def send_batch() -> None:
            items = [
                {
                    "board_id": BOARD_ID,
                    "player_id": f"player-{rng.randrange(args.players)}",
                    "score": rng.randrange(1_000_000_000),
                }
                for _ in range(args.http_batch)
            ]
            body = encoder.encode({"submissions": items})
            t0 = time.perf_counter()
            stats.requests += 1
            try:
                answer = await http.post("/v1/scores/batch", content=body)
            except httpx.HTTPError:
                stats.errors += 1
                return
            stats.request_ms.append((time.perf_counter() - t0) * 1000)
            if answer.status_code == 202:
                stats.accepted_requests += 1
                stats.accepted_events += args.http_batch
            elif answer.status_code == 503:
                stats.status_503 += 1
            else:
                stats.other_status += 1

        async def send_probe(player: str) -> None:
            body = encoder.encode({"player_id": player, "score": rng.randrange(1_000_000_000)})
            probe_sent[player] = time.perf_counter()
            try:
                answer = await http.post(f"/v1/leaderboards/{BOARD_ID}/scores", content=body)
            except httpx.HTTPError:
                probe_failed.append(player)
                return
            if answer.status_code != 202:
                probe_failed.append(player)
                return
            probe_accepted[player] = time.perf_counter()

        def launch(coro: Any) -> None:
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        stop_polling = asyncio.Event()

        async def poll() -> None:
            while not stop_polling.is_set():
                waiting = [p for p in probe_accepted if p not in probe_seen]
                if waiting:
                    found = await redis.zmscore(set_key, waiting)
                    now = time.perf_counter()
                    for player, score in zip(waiting, found, strict=True):
                        if score is not None:
                            probe_seen[player] = now
                await asyncio.sleep(0.005)

        # warm the connection pool and the API's caches (not measured)
        await send_batch()
        stats = LoadStats()

        poller = asyncio.create_task(poll())
        t_start = time.perf_counter()
        next_batch = next_probe = t_start
        probe_n = 0
        while True:
            now = time.perf_counter()
            if now - t_start >= args.duration:
                break
            if now >= next_batch:
                launch(send_batch())
                next_batch += interval
            if now >= next_probe:
                launch(send_probe(f"probe-{run_tag}-{probe_n}"))
                probe_n += 1
                next_probe += args.probe_every_ms / 1000
            await asyncio.sleep(max(0.0, min(next_batch, next_probe) - time.perf_counter()))
        t_sent = time.perf_counter()
        if tasks:
            await asyncio.wait(set(tasks), timeout=30)
        t_answered = time.perf_counter()
        g_end = await group_state(
            redis, harness.settings.stream_key, harness.settings.consumer_group
        )
        # give outstanding probes up to 30 s to become visible
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline and len(probe_seen) < len(probe_accepted):
            await asyncio.sleep(0.05)
        stop_polling.set()
        await poller

    latencies = [(probe_seen[p] - probe_sent[p]) * 1000 for p in probe_seen]
    after_202 = [(probe_seen[p] - probe_accepted[p]) * 1000 for p in probe_seen]
    elapsed = t_sent - t_start
    return {
        "duration_s": round(elapsed, 2),
        "offered_rate_per_s": args.rate,
        "http_batch": args.http_batch,
        "batch_requests": stats.requests,
        "batch_requests_202": stats.accepted_requests,
        "batch_requests_503": stats.status_503,
        "batch_requests_other_status": stats.other_status,
        "batch_request_errors": stats.errors,
        "accepted_submissions": stats.accepted_events,
        "accepted_rate_per_s": round(stats.accepted_events / elapsed, 1) if elapsed else None,
        "all_answered_after_s": round(t_answered - t_start, 2),
        "batch_request_ms": {
            "p50": percentile(stats.request_ms, 50),
            "p99": percentile(stats.request_ms, 99),
        },
        "group_at_end_of_load": {
            "lag": g_end.get("lag") if g_end else None,
            "pending": g_end.get("pending") if g_end else None,
        },
        "probes_sent": len(probe_sent),
        "probes_accepted": len(probe_accepted),
        "probes_failed": len(probe_failed),
        "probes_visible": len(probe_seen),
        "visible_ms_from_send": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else None,
        },
        "visible_ms_from_202": {
            "p50": percentile(after_202, 50),
            "p99": percentile(after_202, 99),
        },
        "poll_interval_ms": 5,
    }


# --- the scenario -------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    record = results.Record(
        "ingest", args, "python: redis pipelines (pre-fill), httpx asyncio client (latency)"
    )
    out = record.out
    rng = random.Random(args.seed)
    out["throughput"], out["throughput_runs"], out["latency"] = None, [], None
    failed = False
    try:
        # Each drain on a stack of its own: a second drain into the same tables would update
        # the rows the first one inserted, which is other work.
        for i in range(args.repeat):
            last = i == args.repeat - 1
            with _stack(args, out) as harness:
                asyncio.run(_throughput_run(harness, args, rng, out, last))
                if last and not args.skip_latency:
                    asyncio.run(_latency_run(harness, args, rng, out))
        _throughput_figures(out)
    except Exception as exc:
        record.failed(exc)
        failed = True
    record.save()
    return 1 if failed else 0


@contextlib.contextmanager
def _stack(args: argparse.Namespace, out: dict[str, Any]) -> Iterator[Harness]:
    """Fresh servers and an empty board with two windows, in a temporary folder."""
    with Harness(keep_data=args.keep_data, fsync=not args.no_fsync) as harness:
        harness.rate_limits = args.rate_limits
        out["rate_limits"] = harness.rate_limit_env() or "this version has none"
        settings = harness.start_servers()
        out["servers"] = {
            "redis": settings.redis_url,
            "postgres": settings.database_url,
            "postgres_fsync": not args.no_fsync,
        }
        asyncio.run(_prepare(harness, out))
        yield harness


async def _prepare(harness: Harness, out: dict[str, Any]) -> None:
    s = harness.settings
    await harness.create_board(["all", "daily"])
    redis = Redis.from_url(s.redis_url)
    try:
        info = await redis.info("server")
        out["servers"]["redis_version"] = info.get("valkey_version") or info.get("redis_version")
        conn = await harness.pg()
        out["servers"]["postgres_version"] = await conn.fetchval("SHOW server_version")
        await conn.close()
        await stream.ensure_group(redis, s.stream_key, s.consumer_group)
    finally:
        await redis.aclose()


async def _throughput_run(
    harness: Harness, args: argparse.Namespace, rng: random.Random, out: dict[str, Any], last: bool
) -> None:
    """Pre-fill the stream, start one consumer, time the drain, check what it wrote (and,
    after the last drain, profile the consumer when asked)."""
    s = harness.settings
    redis = Redis.from_url(s.redis_url)
    try:
        reference = await pgreference.upserted_rows_per_s(s.database_url)
        print(f"Postgres alone: {reference.rows_per_s:,.0f} upserted rows/s", flush=True)
        fill_s, last_id = await prefill(
            redis, s.stream_key, args.events, args.players, rng, "player-", args.named
        )
        print(f"pre-filled {args.events} events in {fill_s:.1f}s", flush=True)
        consumer = harness.start_consumer(args.batch_size)
        out["consumer_pid"] = consumer.pid
        # Counted from the first delivery, as the rate is: the consumer's start is left out.
        meters: list[procstat.CpuMeter] = []
        drained = await wait_drained(
            redis,
            harness,
            consumer,
            last_id,
            timeout_s=900,
            on_first=lambda: meters.append(procstat.CpuMeter(_cpu_groups(harness, consumer.pid))),
            on_sample=lambda: meters and meters[0].read(),
        )
        meter = meters[0]
        meter.read()
        cpu = _cpu_per_event(meter, args.events)
        print(f"CPU per event (us): {cpu}", flush=True)
        busy_s = drained["t_done"] - drained["t_first"]
        total_s = drained["t_done"] - drained["t_spawn"]
        rate = args.events / busy_s
        print(
            f"drained {args.events} events: {rate:,.0f} events/s from first delivery "
            f"({busy_s:.2f}s), {args.events / total_s:,.0f} events/s incl. process start",
            flush=True,
        )
        check = await verify(harness, redis, args.events)
        print(f"verification: {check}", flush=True)
        out["throughput_runs"].append(
            {
                "events": args.events,
                "players": args.players,
                "windows": ["all", "daily"],
                "batch_size": args.batch_size,
                "named_share": args.named,
                "prefill_s": round(fill_s, 2),
                "seconds_first_delivery_to_drained": round(busy_s, 3),
                "seconds_spawn_to_drained": round(total_s, 3),
                "events_per_s": round(rate, 1),
                "events_per_s_incl_start": round(args.events / total_s, 1),
                "timeline": drained["timeline"],
                "cpu_us_per_event": cpu,
                "machine_busy_share": round(meter.machine_busy_share(), 3),
                "postgres_alone_rows_per_s": reference.rows_per_s,
                "verification": check,
            }
        )
        if not check["ok"]:
            out["notes"].append(f"verification after the drain failed: {check}")
        if args.profile and last:
            out["profile"] = await _profile_consumer(harness, redis, consumer.pid, args, rng)
    finally:
        await redis.aclose()


def _throughput_figures(out: dict[str, Any]) -> None:
    """The drains' figures: the median run's, with every run's in the note."""
    runs: list[dict[str, Any]] = out["throughput_runs"]
    if not runs:
        return
    median = sorted(runs, key=lambda r: r["events_per_s"])[(len(runs) - 1) // 2]  # median_low
    out["throughput"] = median
    every = ", ".join(f"{r['events_per_s']:,.0f}" for r in runs)
    named = median.get("named_share", 0.0)
    names = f", {named:.0%} of events named" if named else ""
    out["figures"].append(
        figure(
            f"consumer throughput (1 process, batch 500, 2 windows{names}), median of {len(runs)}",
            median["events_per_s"],
            "events/s",
            TARGET_EVENTS_S,
            ">=",
            f"first delivery → lag 0 & pending 0; every run: {every} events/s",
        )
    )
    out["figures"].append(
        figure(
            "consumer throughput incl. process start (the median run)",
            median["events_per_s_incl_start"],
            "events/s",
            None,
            note="consumer spawn → lag 0 & pending 0",
        )
    )
    references = [r["postgres_alone_rows_per_s"] for r in runs]
    every = ", ".join(f"{r:,.0f}" for r in references)
    out["figures"].append(
        figure(
            f"Postgres alone: upserted rows/s through one connection, median of {len(runs)}",
            statistics.median_low(references),
            "rows/s",
            note=f"before each drain, on its servers ({pgreference.BATCH}-row batches made "
            f"by the server, a commit each); issue 3 quotes ~{pgreference.ISSUE_ROWS_S:,} "
            f"for its machine, by a method it does not give; every run: {every}",
        )
    )
    for group in ("consumer", "postgres", "redis", "total"):
        values = ", ".join(str(r["cpu_us_per_event"].get(group)) for r in runs)
        out["figures"].append(
            figure(
                f"CPU per event: {group} (the median run)",
                median["cpu_us_per_event"].get(group),
                "µs",
                note="CPU seconds of its processes from first delivery to drained, / events; "
                f"every run: {values}",
            )
        )


async def _latency_run(
    harness: Harness, args: argparse.Namespace, rng: random.Random, out: dict[str, Any]
) -> None:
    """Submit → visible latency through the API at a steady offered load."""
    redis = Redis.from_url(harness.settings.redis_url)
    try:
        harness.start_api(workers=1)
        if harness.ready_status != 200:
            out["notes"].append(
                f"/health/ready answered {harness.ready_status} (not 200) although "
                "/health/live answered; the run went on"
            )
        print(f"latency phase: {args.rate}/s for {args.duration:.0f}s", flush=True)
        lat = await latency_phase(harness, redis, args, rng)
        out["latency"] = lat
        print(f"latency: {lat}", flush=True)
        vis = lat["visible_ms_from_send"]
        note = (
            f"offered {args.rate}/s in requests of {args.http_batch}, accepted "
            f"{lat['accepted_rate_per_s']}/s; "
            f"{lat['probes_visible']}/{lat['probes_sent']} probes visible"
        )
        out["figures"].append(figure("submit → visible p50", _r(vis["p50"]), "ms", None, note=note))
        out["figures"].append(
            figure(
                f"submit → visible p99 at {args.rate:,}/s offered",
                _r(vis["p99"]),
                "ms",
                TARGET_VISIBLE_P99_MS if args.rate >= TARGET_OFFERED else None,
                "<=",
                note,
            )
        )
        out["figures"].append(
            figure(
                "accepted submissions/s during the latency phase",
                lat["accepted_rate_per_s"],
                "submissions/s",
                DELIVERED_SHARE * args.rate,
                ">=",
                f"the offered load actually delivered (target: {DELIVERED_SHARE:.0%} of it,"
                " as pacing over the phase's seconds is not exact)",
            )
        )
        if lat["probes_visible"] < lat["probes_sent"]:
            out["notes"].append(
                f"{lat['probes_sent'] - lat['probes_visible']} probes never became "
                "visible within 30 s after the load stopped; they are not in the percentiles"
            )
    finally:
        await redis.aclose()


def _r(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


async def _profile_consumer(
    harness: Harness, redis: Redis, pid: int, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    """Not measured: pre-fill again and record the consumer with py-spy while it drains."""
    n = max(20_000, 20_000 * args.profile)
    _, last_id = await prefill(
        redis, harness.settings.stream_key, n, args.players, rng, "player-", args.named
    )
    raw = Path("/tmp") / f"consumer-{pid}.pyspy.txt"
    spy = profiling.start(pid, args.profile, raw)
    consumer = next(c for c in harness.stack.children if c.pid == pid)
    drained = await wait_drained(redis, harness, consumer, last_id, timeout_s=900)
    summary = await asyncio.to_thread(profiling.finish, spy, raw)
    summary["events_prefilled"] = n
    summary["drain_s"] = round(drained["t_done"] - drained["t_spawn"], 2)
    print(profiling.render(summary), flush=True)
    return summary
