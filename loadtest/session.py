"""One prepared size: a dataset on running servers, with the API and consumer serving it,
and the measured runs of scenarios against it.

A measured run: wrk warm-up, wait for the consumers, then wrk with a generated Lua script
while the harness samples the CPU of every process group (API workers, consumers, Redis,
Postgres, itself; wrk's own CPU from its rusage), Redis memory, the stream's length and the
consumer group's lag; the mixed profile adds visibility probes. After a run that submitted,
the harness waits for the consumers to catch up again (the drain time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.asyncio import Redis

from loadtest import dataset, limits, procstat, wrk
from loadtest.backlog import consumer_names, wait_consumers, wait_idle
from loadtest.monitor import Monitor
from loadtest.probes import Probes
from loadtest.records import DataRecord, Latency, RunRecord, SoakPoint
from loadtest.stack import Harness

QUIET_PCT = 20.0  # % of one core, all the service's processes together: idle enough


@dataclass(frozen=True)
class Scenario:
    label: str
    weights: dict[str, int]
    probes: bool = False


DEFAULT_MIX = "top=20,cursor=10,rank=25,around=15,submit=25,friends=5"

SCENARIOS: dict[str, Scenario] = {
    "top": Scenario("top-10", {"top": 1}),
    "cursor": Scenario("top page after a cursor", {"cursor": 1}),
    "rank": Scenario("player rank", {"rank": 1}),
    "around": Scenario("around-me (radius 5)", {"around": 1}),
    "friends": Scenario("friends ranks (50 ids)", {"friends": 1}),
    "submit": Scenario("single submissions", {"submit": 1}),
    "batch": Scenario("batch submissions", {"batch": 1}),
    "mixed": Scenario("mixed live game", {}, probes=True),
}


def parse_mix(text: str) -> dict[str, int]:
    """`top=20,rank=25,...` -> weights (kinds of `wrk.KINDS`)."""
    out: dict[str, int] = {}
    for part in text.split(","):
        kind, _, weight = part.strip().partition("=")
        if kind not in wrk.KINDS or not weight.isdigit() or int(weight) < 1:
            raise argparse.ArgumentTypeError(f"bad mix item {part!r} (kinds: {wrk.KINDS})")
        out[kind] = int(weight)
    return out


@dataclass
class Session:
    """A dataset on running servers, with the API and consumer that serve it."""

    args: argparse.Namespace
    harness: Harness
    ds: dataset.Dataset
    binary: str
    run_tag: str
    data: DataRecord | None = None
    base_url: str = ""
    groups: list[procstat.Group] = field(default_factory=list)
    cursors: tuple[tuple[str, str], ...] = ()
    notes: list[str] = field(default_factory=list)
    _runs: int = 0

    async def open(self) -> DataRecord:
        h = self.harness
        print(f"[{self.label}] loading {self.ds.players:,} players ...", flush=True)
        self.data = await dataset.prepare(h, self.ds)
        d = self.data
        print(
            f"[{self.label}] COPY {d.postgres_copy_s:.1f}s, rebuild {d.rebuild_s:.1f}s "
            f"({d.ranked_entries:,} entries), Redis {d.redis_bytes_per_entry:.0f} B/entry",
            flush=True,
        )
        roots: dict[str, tuple[tuple[int, ...], float]] = {}
        if self.args.base_url:
            self.base_url = self.args.base_url.rstrip("/")
            self.notes.append(
                f"API at {self.base_url}, started elsewhere: its rate limits and workers "
                "are its own; a consumer must run beside it"
            )
        else:
            probe = Redis.from_url(h.settings.redis_url)
            try:
                s = h.settings
                earlier = await consumer_names(probe, s.stream_key, s.consumer_group)
            finally:
                await probe.aclose()
            api = h.start_api(workers=self.args.api_workers)
            consumer = h.start_consumer(workers=self.args.consumer_workers)
            self.base_url = h.base_url
            roots["api"] = ((api.pid,), self.args.api_workers)
            roots["consumer"] = ((consumer.pid,), self.args.consumer_workers)
            if h.ready_status != 200:
                self.notes.append(f"/health/ready answered {h.ready_status}; the run went on")
            redis = Redis.from_url(h.settings.redis_url)
            try:
                s = h.settings
                if not await wait_consumers(redis, s.stream_key, s.consumer_group, 60, earlier):
                    raise RuntimeError(f"the consumer did not start:\n{h.log_tail('consumer')}")
            finally:
                await redis.aclose()
        cores = float(os.cpu_count() or 1)
        for server in h.stack.servers:
            roots[server.name] = ((server.pid,), 1.0 if server.name == "redis" else cores)
        found = {
            "redis": h.settings.redis_url,
            "postgres": h.settings.database_url,
            "api": self.base_url,
        }
        for name, url in found.items():
            if name not in roots:
                pids = _local_listeners(url)
                if pids:
                    roots[name] = (pids, 1.0 if name == "redis" else cores)
        for name, pids in self.args.pid:
            roots[name] = (pids, cores)
        unmeasured = [n for n in ("api", "consumer", "redis", "postgres") if n not in roots]
        if unmeasured:
            self.notes.append(f"CPU not sampled for {', '.join(unmeasured)} (not found here)")
        self.groups = [procstat.Group(n, pids, True, c) for n, (pids, c) in roots.items()]
        self.groups.append(procstat.Group("harness", (os.getpid(),), tree=False, cores=1))
        d.sanity.update(self._sanity())
        self.cursors = tuple(self._cursors(pages=20))
        return d

    @property
    def label(self) -> str:
        return dataset.short_count(self.ds.players)

    def _get(self, path: str) -> tuple[int, dict[str, str], Any]:
        with urllib.request.urlopen(self.base_url + path, timeout=30) as answer:
            return answer.status, dict(answer.headers), msgspec.json.decode(answer.read())

    def _sanity(self) -> dict[str, Any]:
        """Each board answers from Redis with all its players."""
        out: dict[str, Any] = {}
        for i, board in enumerate(self.ds.board_ids):
            _, headers, top = self._get(f"/v1/leaderboards/{board}/top?limit=10")
            source = {k.lower(): v for k, v in headers.items()}.get("x-rankstream-source")
            ok = top["total"] == self.ds.per_board(i) and source == "redis"
            out[board] = {"total": top["total"], "source": source, "ok": ok}
            if not ok:
                self.notes.append(f"sanity check of {board} failed: {out[board]}")
        return out

    def _cursors(self, pages: int) -> Iterator[tuple[str, str]]:
        """`next_cursor`s of the first pages of each board, to page after in wrk."""
        for board in self.ds.board_ids:
            cursor = None
            for _ in range(pages):
                query = "limit=10" + (f"&cursor={cursor}" if cursor else "")
                _, _, page = self._get(f"/v1/leaderboards/{board}/top?{query}")
                cursor = page.get("next_cursor")
                if not cursor:
                    break
                yield board, cursor

    def workload(self, weights: dict[str, int]) -> wrk.Workload:
        self._runs += 1
        return wrk.Workload(
            weights=weights,
            board_ids=self.ds.board_ids,
            players=self.ds.players,
            prefix=self.ds.prefix,
            windows=tuple(self.ds.windows),
            friends=self.args.friends,
            batch=self.args.batch,
            cursors=self.cursors,
            key=self.harness.admin_key,
            # unique in the database: servers given by URL keep every earlier run's event_ids
            tag=f"lt{self.run_tag}s{self.label}r{self._runs}",
        )

    async def _events_recorded(self) -> int:
        """Events the consumers recorded so far (each event_id once)."""
        conn = await self.harness.pg()
        try:
            return int(await conn.fetchval("SELECT count(*) FROM event_ids"))
        finally:
            await conn.close()

    async def quiet(self) -> float:
        """Wait (up to --quiet-timeout) until the service's processes are nearly idle, so that
        what one run set off (requests still queued in the API, fallback queries in
        Postgres, a consumer backlog) is not measured as the next one's. Seconds waited."""
        service = [g for g in self.groups if g.name != "harness"]
        t0 = time.perf_counter()
        busy: dict[str, float] = {}
        while time.perf_counter() - t0 < self.args.quiet_timeout:
            meter = await asyncio.to_thread(procstat.CpuMeter, service)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(meter.read)
            busy = {k: v * 100 for k, v in meter.cpu_seconds().items()}  # over ~1 s: % of a core
            if sum(busy.values()) < QUIET_PCT:
                return round(time.perf_counter() - t0, 1)
        waited = round(time.perf_counter() - t0, 1)
        self.notes.append(
            f"the service was still busy {waited:.0f}s after a run ("
            + ", ".join(f"{k} {v:.0f}%" for k, v in busy.items() if v >= 1)
            + "); the next run started anyway"
        )
        return waited

    async def drain(self, redis: Redis) -> float | None:
        s = self.harness.settings
        return await wait_idle(redis, s.stream_key, s.consumer_group, self.args.drain_timeout)

    async def measure(
        self, name: str, connections: int, seconds: float, curve: str, memory_every: float | None
    ) -> tuple[RunRecord, list[SoakPoint]]:
        """One scenario: warm-up, drain, measured wrk run with sampling (and probes), drain."""
        args = self.args
        scenario = SCENARIOS[name]
        weights = args.mix if name == "mixed" else scenario.weights
        load = self.workload(weights)
        lua = wrk.script(self.harness.data_dir, name, load)
        # its own event_ids: the measured run's must not repeat (and be dropped as) the warm-up's
        warm = wrk.script(self.harness.data_dir, f"{name}-warmup", self.workload(weights))
        threads = max(1, min(args.threads, connections))
        s = self.harness.settings
        redis = Redis.from_url(s.redis_url)
        try:
            quiet_s = await self.quiet()
            if args.warmup:
                await asyncio.to_thread(
                    wrk.run, self.binary, self.base_url, warm, connections, threads, args.warmup
                )
            submits = load.submits or scenario.probes
            recorded_before = 0
            if submits:
                # wrk leaves up to `connections` requests cut off at its end, which the API
                # still finishes: they belong to the warm-up, not to the count below
                quiet_s += await self.quiet()
                await self.drain(redis)
                recorded_before = await self._events_recorded()
            monitor = Monitor(self.groups, redis, s.stream_key, s.consumer_group, 1.0, memory_every)
            await monitor.start()
            probes = None
            if scenario.probes:
                probes = Probes(
                    self.base_url,
                    self.ds.board_ids[0],
                    self.harness.admin_key,
                    f"{load.tag}",
                    args.probes_per_s,
                    args.probe_poll_ms,
                ).start()
            try:
                res = await asyncio.to_thread(
                    wrk.run, self.binary, self.base_url, lua, connections, threads, seconds
                )
            except BaseException:
                await monitor.stop()
                if probes is not None:
                    await probes.stop()
                raise
            monitor.extra_cpu_s["wrk"] = float(res.get("cpu_s") or 0.0)
            usage = await monitor.stop()
            visibility = await probes.stop() if probes is not None else None
            drain_s = await self.drain(redis) if submits else None
            recorded = (await self._events_recorded() - recorded_before) if submits else None
        finally:
            await redis.aclose()
        kinds: dict[str, int] = res.get("kinds", {})
        duration = float(res.get("duration_s") or seconds)
        # wrk counts the requests it started, by kind; the rate comes from those completed.
        issued = sum(kinds.values())
        submitted = kinds.get("submit", 0) + kinds.get("batch", 0) * args.batch
        rate = float(res.get("requests_per_s") or 0.0)
        capacity = {g.name: g.cores for g in self.groups} | {"wrk": float(threads)}
        failed = int(res.get("failed_requests") or 0)
        requests = int(res.get("requests") or 0)
        label = scenario.label
        if name == "batch":
            label += f" ({args.batch} per request)"
        elif name == "mixed":
            label += " (" + ", ".join(f"{k} {w}" for k, w in weights.items()) + ")"
        record = RunRecord(
            scenario=name,
            label=label,
            curve=curve,
            players=self.ds.players,
            connections=connections,
            threads=threads,
            duration_s=duration,
            requests=requests,
            requests_per_s=rate,
            submissions_per_s=round(rate * submitted / issued, 1) if submitted else None,
            submissions_sent=submitted + (visibility.accepted if visibility else 0),
            events_recorded=recorded,
            errors=res.get("errors", {}),
            failed_requests=failed,
            latency_ms=msgspec.convert(res.get("latency_ms", {}), Latency),
            kinds=kinds,
            usage=usage,
            drain_s=drain_s,
            quiet_wait_s=quiet_s,
            limited_by=limits.limited_by(usage, capacity, connections, failed, requests),
            visibility=visibility,
            command=str(res.get("command", "")),
        )
        if drain_s is None and submits:
            self.notes.append(
                f"{name} at {self.label}/{connections}: the consumers had not caught up "
                f"{args.drain_timeout:.0f}s after the run"
            )
        _print_run(self.label, record)
        return record, monitor.points


def _local_listeners(url: str) -> tuple[int, ...]:
    """Pids listening on a URL's port when it is on this host."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or not parts.port:
        return ()
    return procstat.listening_pids(parts.port)


def _print_run(size: str, r: RunRecord) -> None:
    lat = r.latency_ms
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in r.usage.cpu_pct.items() if v >= 1)
    extra = f", {r.submissions_per_s:,.0f} submissions/s" if r.submissions_per_s else ""
    print(
        f"  [{size} players, {r.connections} conn] {r.label}: {r.requests_per_s:,.0f} req/s"
        f"{extra}, p50 {lat.p50} p95 {lat.p95} p99 {lat.p99} ms, failed {r.failed_requests}; "
        f"CPU {cpu}; lag max {r.usage.lag_max}"
        + (f", drained in {r.drain_s}s" if r.drain_s is not None else "")
        + (
            f", {r.events_recorded:,} of {r.submissions_sent:,} sent recorded"
            if r.events_recorded is not None
            else ""
        )
        + f"; limited by {r.limited_by}",
        flush=True,
    )
    if r.visibility is not None:
        v = r.visibility
        print(
            f"    visibility: {v.visible}/{v.sent} probes, p50 {v.p50_ms} p95 {v.p95_ms} "
            f"p99 {v.p99_ms} ms",
            flush=True,
        )
