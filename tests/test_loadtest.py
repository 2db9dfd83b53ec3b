"""The load-test harness' own logic: the generated wrk Lua (run by real wrk against a local
recorder), the limit attribution, /proc parsing, and the Markdown summary; the probes that
measure a server (redis-py, limiter, Postgres alone) against the test session's."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import redis as redis_py

from loadtest import (
    baseline,
    dataset,
    ingest,
    limiter,
    limits,
    pgreference,
    procstat,
    reads,
    results,
    summary,
    wrk,
)
from loadtest.records import DataRecord, Latency, RunRecord, SuiteResult, Usage
from service import stream


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, dict[str, str], bytes]] = []
    lock = threading.Lock()

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.lock:
            self.seen.append((self.command, self.path, dict(self.headers), body))
        payload = b"{}"
        self.send_response(202 if self.command == "POST" and "scores" in self.path else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Any:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_lua_draws_every_kind_by_weight(recorder: Any, tmp_path: Path) -> None:
    url, seen = recorder
    weights = {"top": 3, "cursor": 1, "rank": 3, "around": 1, "friends": 1, "submit": 3, "batch": 1}
    load = wrk.Workload(
        weights=weights,
        board_ids=("b-0", "b-1"),
        players=1000,
        prefix="p1k-",
        windows=("all", "daily"),
        friends=7,
        batch=4,
        cursors=(("b-0", "CUR0"), ("b-1", "CUR1")),
        key="sekret",
        tag="t1",
    )
    result = wrk.run(wrk.ensure_wrk()[0] or "wrk", url, wrk.script(tmp_path, "mix", load), 2, 2, 1)

    assert result["failed_requests"] == 0
    assert set(result["kinds"]) == set(weights)
    assert sum(result["kinds"].values()) >= result["requests"] > 100
    assert result["latency_ms"]["p95"] is not None
    kinds: Counter[str] = Counter()
    event_ids: list[str] = []
    for method, path, headers, body in seen:
        lower = {k.lower(): v for k, v in headers.items()}
        if method == "GET":
            board = path.split("/")[3]
            assert board in ("b-0", "b-1")
            assert "window=all" in path or "window=daily" in path
            if "cursor=" in path:
                kinds["cursor"] += 1
                assert f"cursor=CUR{board[-1]}" in path  # a board's own cursor
            elif path.split("?")[0].endswith("/top"):
                kinds["top"] += 1
                assert "limit=10" in path
            elif "/around" in path:
                kinds["around"] += 1
                assert "radius=5" in path
            else:
                kinds["rank"] += 1
                player = path.split("/")[5].split("?")[0]
                assert int(player.removeprefix("p1k-")) % 2 == int(board[-1])
            continue
        doc = json.loads(body)
        if path.startswith("/v1/leaderboards/") and path.split("?")[0].endswith("/ranks"):
            kinds["friends"] += 1
            board = path.split("/")[3]
            assert len(doc["player_ids"]) == 7
            assert all(int(p.removeprefix("p1k-")) % 2 == int(board[-1]) for p in doc["player_ids"])
            continue
        assert lower["authorization"] == "Bearer sekret"
        if path == "/v1/scores/batch":
            kinds["batch"] += 1
            items = doc["submissions"]
            assert len(items) == 4
        else:
            kinds["submit"] += 1
            items = [doc | {"board_id": path.split("/")[3]}]
        for item in items:
            assert item["event_id"].startswith("t1-")
            assert int(item["player_id"].removeprefix("p1k-")) % 2 == int(item["board_id"][-1])
            assert isinstance(item["score"], int)
            event_ids.append(item["event_id"])
    assert len(event_ids) == len(set(event_ids)), "event_ids repeat"
    total = sum(kinds.values())
    # roughly by weight (3/13 of the requests each for top, rank, submit)
    for kind in ("top", "rank", "submit"):
        assert 0.12 < kinds[kind] / total < 0.35, kinds


def test_workload_rejects_what_wrk_cannot_send() -> None:
    base = {"board_ids": ("b",), "players": 10, "prefix": "p-"}
    with pytest.raises(ValueError):
        wrk.lua_text(wrk.Workload(weights={"cursor": 1}, **base))  # no cursors
    with pytest.raises(ValueError):
        wrk.lua_text(wrk.Workload(weights={"submit": 1}, **base))  # no key
    with pytest.raises(ValueError):
        wrk.lua_text(wrk.Workload(weights={"nope": 1}, **base))
    with pytest.raises(ValueError):
        wrk.lua_text(wrk.Workload(weights={"top": 1}, board_ids=('b"',), players=1, prefix="p"))


def test_counts_parse_and_print() -> None:
    assert [dataset.parse_count(t) for t in ("10k", "1M", "2.5m", "64")] == [
        10_000,
        1_000_000,
        2_500_000,
        64,
    ]
    assert [dataset.short_count(n) for n in (10_000, 1_000_000, 10_000_000, 1234)] == [
        "10k",
        "1M",
        "10M",
        "1234",
    ]
    ds = dataset.plan(5, 2, ("all", "daily"), "5", 1)
    assert (ds.per_board(0), ds.per_board(1), ds.entries) == (3, 2, 10)


def test_proc_stat_line_with_odd_command_name() -> None:
    fields = ["S", "7"] + ["0"] * 9 + ["150", "50"] + ["0"] * 8 + ["10"]
    stat = procstat.parse_stat(42, "42 (a) b (c)) " + " ".join(fields))
    assert (stat.ppid, stat.ticks, stat.rss_bytes) == (7, 200, 10 * procstat.PAGE)


def _usage(cpu: dict[str, float], machine: float) -> Usage:
    return Usage(
        seconds=10,
        cpu_pct=cpu,
        machine_pct=machine,
        cores=2,
        memory_mib_start={},
        memory_mib_end={},
        redis_used_mib_start=None,
        redis_used_mib_end=None,
        stream_length_max=0,
        stream_length_end=0,
        lag_max=0,
        lag_end=0,
        pending_end=0,
    )


def test_limit_is_the_group_that_used_all_its_cores() -> None:
    capacity = {"api": 2.0, "redis": 1.0, "wrk": 2.0}
    redis_bound = _usage({"redis": 97, "api": 80, "wrk": 20, "other": 0}, 197)
    assert limits.limited_by(redis_bound, capacity, 64).startswith("redis CPU (97% of 1 core)")
    shared = _usage({"redis": 40, "api": 120, "wrk": 35, "other": 3}, 198)
    assert limits.limited_by(shared, capacity, 64).startswith("machine CPU (198% of 200%: api")
    idle = _usage({"redis": 5, "api": 30, "wrk": 5, "other": 60}, 100)
    line = limits.limited_by(idle, capacity, 1, failed=50, requests=1000)
    assert line.startswith("no process CPU-bound")
    assert "round trips of 1 connection" in line
    assert "outside the test took 60%" in line
    assert "50 failed requests" in line


def _run(scenario: str, players: int, connections: int, curve: str, rps: float) -> RunRecord:
    return RunRecord(
        scenario=scenario,
        label=scenario,
        curve=curve,
        players=players,
        connections=connections,
        threads=2,
        duration_s=8,
        requests=int(rps * 8),
        requests_per_s=rps,
        submissions_per_s=None,
        errors={"timeout": 0},
        failed_requests=0,
        latency_ms=Latency(p50=1.0, p95=2.0, p99=3.5),
        kinds={scenario: int(rps * 8)},
        usage=_usage({"api": 150.0, "redis": 20.0, "other": 1.0}, 190),
        drain_s=None,
        limited_by="machine CPU",
    )


def test_summary_tables_by_players_and_by_connections(tmp_path: Path) -> None:
    runs = [
        _run("top", 10_000, 64, "size", 4000),
        _run("top", 1_000_000, 1, "connections", 900),
        _run("top", 1_000_000, 64, "both", 3000),
        _run("rank", 1_000_000, 64, "both", 2000),
        _run("rank", 10_000, 64, "size", 2500),
        _run("rank", 1_000_000, 1, "connections", 600),
    ]
    data = DataRecord(
        players=10_000,
        boards=["b-0", "b-1"],
        windows=["all", "daily"],
        ranked_entries=20_000,
        postgres_copy_s=1.0,
        rebuild_s=0.5,
        rebuild_sets=[],
        settle_s=0.1,
        redis_used_bytes=3_000_000,
        redis_bytes_per_entry=150.0,
        key_bytes={"sorted_set": 500_000, "versions_hash": 200_000, "names_hash": 250_000},
        sanity={},
    )
    result = SuiteResult(
        scenario="all",
        started_at="2026-01-01T00:00:00Z",
        machine={},
        load={},
        parameters={"scenarios": ["top", "rank"]},
        load_generator="wrk",
        datasets=[data],
        runs=runs,
        plot="x.png",
    )
    path = tmp_path / "results" / "x.json"
    lines = summary.render(msgspec.to_builtins(result), path, tmp_path)
    text = "\n".join(lines)
    assert "players and connections: [x.png](results/x.png)" in text
    assert "| 10k | 2 x 2 (all, daily) | 20,000 |" in text
    assert "100 / 40 / 50" in text  # bytes per player of set / versions / names, one board
    by_players = text.split("### By players, at 64 connections")[1].split("###")[0]
    rows = [r for r in by_players.splitlines() if r.startswith("| top") or r.startswith("| rank")]
    assert [r.split(" | ")[:3] for r in rows] == [
        ["| top", "10k", "64"],
        ["| top", "1M", "64"],
        ["| rank", "10k", "64"],
        ["| rank", "1M", "64"],
    ]
    by_conns = text.split("### By connections, at 1M players")[1].split("###")[0]
    rows = [r for r in by_conns.splitlines() if r.startswith("| top") or r.startswith("| rank")]
    assert [r.split(" | ")[2] for r in rows] == ["1", "64", "1", "64"]
    assert "api 150 · redis 20 · other 1" in text
    assert "### Runs" not in text  # every run is in one of the two tables


def test_reads_figures_are_the_medians_of_the_runs() -> None:
    runs = [
        {"requests_per_s": 4_800.0, "latency_ms": {"p99": 31.0}, "failed_requests": 0},
        {"requests_per_s": 5_600.0, "latency_ms": {"p99": 22.0}, "failed_requests": 2},
        {"requests_per_s": 5_100.0, "latency_ms": {"p99": 27.5}, "failed_requests": 0},
    ]
    throughput, p99 = reads._figures("around", 2, runs)
    assert throughput["value"] == 5_100.0
    assert throughput["met"] is True  # target 5,000 req/s
    assert p99["value"] == 27.5
    assert p99["met"] is True  # bound 30 ms
    assert "median of 3 run(s)" in p99["note"]
    assert "4,800 req/s p99 31.0 ms" in p99["note"]
    assert p99["note"].endswith("failed 2")
    slow, late = reads._figures("around", 1, runs[:1])
    assert (slow["met"], late["met"]) == (False, False)


def test_dataset_ids_are_valid_board_and_player_ids() -> None:
    from loadtest import dataset
    from service.models import BoardId, PlayerId

    for tag in ("10k", "100k", "1M", "10M"):  # 1M once made `bench-1M-0`, refused by Postgres
        planned = dataset.plan(1000, 2, ("all", "daily"), tag, 1)
        for board_id in planned.board_ids:
            assert msgspec.convert(board_id, BoardId) == board_id
        assert msgspec.convert(f"{planned.prefix}999", PlayerId)


def test_an_ingest_runs_single_consumer_profile_renders() -> None:
    # ingest stores one py-spy summary, not one per scenario; rendering it once crashed
    profile = {"samples": 4, "self": [{"function": "fold (service/combine.py)", "share": 0.25}]}
    lines = results._profile({"scenario": "ingest", "profile": profile})
    assert lines[-1] == "- consumer: fold (service/combine.py) 25.0%"


async def test_postgres_alone_upserts_batches_and_drops_its_table(
    settings: Any, pg: asyncpg.Connection
) -> None:
    # Enough batches that keys come round again: updates as well as inserts (a batch with
    # a key twice would fail: ON CONFLICT cannot change a row twice in one statement).
    found = await pgreference.upserted_rows_per_s(settings.database_url, 0.5, warmup_s=0.0)
    assert found.rows >= 10 * pgreference.BATCH and found.rows % pgreference.BATCH == 0
    assert found.rows_per_s == pytest.approx(found.rows / found.seconds, rel=0.01)
    assert await pg.fetchval("SELECT to_regclass($1)", pgreference.TABLE) is None


@pytest.mark.parametrize("named", [0.0, 1.0])
async def test_ingest_prefill_names_the_share_asked_for(redis: Any, named: float) -> None:
    rng = random.Random(1)
    _, last = await ingest.prefill(redis, "t:ingest", 20, 5, rng, "p-", named)
    entries = await redis.xrange("t:ingest")
    assert len(entries) == 20 and entries[-1][0] == last
    events = [stream.decode(fields) for _, fields in entries]
    if named:
        assert all(e.display_name == f"Player {e.player_id[2:]}" for e in events)
    else:
        assert all(e.display_name is None for e in events)


def test_ingest_figures_give_postgres_alone_against_the_issues_figure() -> None:
    runs = [
        {"events_per_s": rate, "events_per_s_incl_start": rate, "cpu_us_per_event": {},
         "postgres_alone_rows_per_s": alone}
        for rate, alone in ((15_000.0, 63_000.0), (14_000.0, 56_000.0), (16_000.0, 70_000.0))
    ]  # fmt: skip
    out: dict[str, Any] = {"throughput_runs": runs, "figures": []}
    ingest._throughput_figures(out)
    alone = next(f for f in out["figures"] if f["name"].startswith("Postgres alone"))
    assert alone["value"] == 63_000.0
    assert "~70,000" in alone["note"]
    assert alone["note"].endswith("every run: 63,000, 56,000, 70,000")


def test_the_redis_py_probe_reports_its_version_and_both_calls(settings: Any) -> None:
    """`clients` runs the probe under other redis-py versions; here under the installed one."""
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.redispy_probe", settings.redis_url, "640", "64"],
        cwd=repo, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["version"] == redis_py.__version__
    assert set(found["figures"]) == {"ZREVRANK", "pipelined ZREVRANK + ZSCORE"}
    for figures in found["figures"].values():
        assert figures["calls_per_s"] > 0
        assert figures["client_cpu_us"] > 0


@pytest.mark.parametrize("strategy", limiter.STRATEGIES)
async def test_the_limiter_scenario_fills_windows_before_measuring(
    settings: Any, strategy: str
) -> None:
    args = argparse.Namespace(identities=3, checks_each=10)
    found = await limiter.measure(settings, strategy, 295, args)
    # 300/minute: after 295 hits each client has 5 left of its 10 measured checks
    assert (found["checks"], found["refused"]) == (30, 15)
    assert found["redis_cpu_us"] > 0 and found["client_cpu_us"] > 0


def test_the_baseline_serves_as_the_api_is_served() -> None:
    # The constant answer is measured under the API's own granian flags, so that the two
    # figures differ only by what the API does.
    from service.settings import Settings
    from service.up import api_command

    api = api_command(Settings(host="127.0.0.1", port=8123, api_workers=2))
    constant = baseline._command(8123, 2)
    assert "loadtest.baseline_app:app" in constant
    factory = api.index("--factory")
    assert api[:factory] + api[factory + 2 :] == [
        c for c in constant if c != "loadtest.baseline_app:app"
    ]


def test_machine_speed_is_in_every_results_header(tmp_path: Path) -> None:
    run = {
        "scenario": "x",
        "machine": {"reference_loop_ms": 15.5, "reference_loop_ms_at_end": 24.25},
        "load": {"steal_percent": 14.56},
    }
    header = "\n".join(results._header(tmp_path / "x.json", run))
    assert "CPU steal during the run 14.56%" in header
    assert "15.50 ms at the start, 24.25 ms at the end" in header
