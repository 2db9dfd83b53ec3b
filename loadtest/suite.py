"""`all` and `soak`: the scenarios over sizes and connection counts, and the long mixed run.

For each size (ascending) a dataset is prepared (`loadtest.dataset`: COPY, then the rebuild
path, timed), the API (granian) and one consumer start on it, and every scenario runs with
wrk at the size curve's connection count; at the connections curve's size also at every
other connection count, followed by the soak. With the embedded default each size gets
fresh servers; with `--redis-url/--database-url` the sizes share them, on boards of their
own; with `--base-url` the API (and its consumers) are not started here at all.

What one measured run does (sampling, probes, drain) is in `loadtest.session`. The JSON
is rewritten after every size, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from loadtest import dataset, machine, results, wrk
from loadtest.records import (
    Growth,
    RunRecord,
    SoakPoint,
    SoakRecord,
    SuiteResult,
)
from loadtest.session import DEFAULT_MIX, SCENARIOS, Session, parse_mix
from loadtest.stack import Harness, add_stack_arguments
from service.models import WINDOWS, Window


def _counts(text: str) -> list[int]:
    return [dataset.parse_count(t) for t in text.split(",") if t.strip()]


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    return names


def _windows(text: str) -> list[Window]:
    out: list[Window] = []
    for t in text.split(","):
        w = t.strip()
        if w not in WINDOWS:
            raise argparse.ArgumentTypeError(f"unknown window {w!r}")
        out.append(w)
    return out


def _pid_option(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, pids = text.partition("=")
    try:
        return name, tuple(int(p) for p in pids.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=PID[,PID...], got {text!r}") from None


# --- options -----------------------------------------------------------------------------


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `all` and `soak`."""
    p.add_argument("--duration", type=float, default=6, help="measured seconds per run (6)")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured seconds first (2)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (2, at most connections)")
    p.add_argument("--boards", type=int, default=2, help="boards the players are split over (2)")
    p.add_argument("--windows", type=_windows, default=["all", "daily"], help="all,daily")
    p.add_argument("--mix", type=parse_mix, default=parse_mix(DEFAULT_MIX), help=DEFAULT_MIX)
    p.add_argument("--batch", type=int, default=50, help="submissions per batch request (50)")
    p.add_argument("--friends", type=int, default=50, help="ids per friends request (50)")
    p.add_argument("--probes-per-s", type=float, default=4.0, help="visibility probes/s (4)")
    p.add_argument("--probe-poll-ms", type=float, default=20.0, help="probe poll interval (20)")
    p.add_argument("--api-workers", type=int, default=2, help="granian workers (2)")
    p.add_argument("--consumer-workers", type=int, default=1, help="consumer processes (1)")
    p.add_argument(
        "--drain-timeout", type=float, default=300, help="max wait for the consumers (300 s)"
    )
    p.add_argument(
        "--quiet-timeout",
        type=float,
        default=60,
        help="max wait before a run for the service to go idle after the previous one (60 s)",
    )
    p.add_argument("--redis-url", default="", help="use this Redis instead of an embedded one")
    p.add_argument("--database-url", default="", help="use this Postgres instead of embedded")
    p.add_argument(
        "--base-url",
        default="",
        help="an API already running on --redis-url/--database-url (with its consumers): "
        "start neither here",
    )
    p.add_argument(
        "--pid",
        type=_pid_option,
        action="append",
        default=[],
        metavar="NAME=PID[,PID]",
        help="also sample these processes (and children) as NAME, e.g. consumer=1234",
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        default=results.RESULTS_DIR,
        help="where the JSON, PNG and RESULTS.md go (default loadtest/results, RESULTS.md "
        "beside it); point elsewhere for trial runs",
    )
    add_stack_arguments(p)


def add_all_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=_counts, default=_counts("10k,100k,1M,10M"))
    p.add_argument(
        "--connections",
        type=_counts,
        default=_counts("1,64,256,1000"),
        help="connection counts of the connections curve (1,64,256,1000)",
    )
    p.add_argument(
        "--curve-size",
        type=dataset.parse_count,
        default=dataset.parse_count("1M"),
        help="players at which the connections curve and the soak run (1M)",
    )
    p.add_argument(
        "--size-connections",
        type=int,
        default=64,
        help="connections of the size curve (64)",
    )
    p.add_argument(
        "--scenarios",
        type=_names,
        default=list(SCENARIOS),
        help=",".join(SCENARIOS),
    )
    p.add_argument(
        "--soak", type=float, default=600, help="seconds of the mixed soak (600; 0: none)"
    )
    p.add_argument("--soak-every", type=float, default=10, help="soak sample interval (10 s)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate; stop")
    add_common_arguments(p)


def add_soak_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--players", type=dataset.parse_count, default=dataset.parse_count("1M"))
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--seconds", type=float, default=600, help="soak length (600)")
    p.add_argument("--soak-every", type=float, default=10, help="sample interval (10 s)")
    add_common_arguments(p)


# --- the soak ----------------------------------------------------------------------------


def soak_record(run: RunRecord, points: list[SoakPoint]) -> SoakRecord:
    """Memory of each group (and Redis' used_memory) from the first reading to the last."""
    growth: list[Growth] = []
    hours = max(run.usage.seconds, 1.0) / 3600
    series: dict[str, list[float]] = {}
    for p in points:
        for name, mib in p.memory_mib.items():
            series.setdefault(name, []).append(mib)
        if p.redis_used_mib is not None:
            series.setdefault("redis used_memory", []).append(p.redis_used_mib)
    for name, values in series.items():
        if not values:
            continue
        delta = round(values[-1] - values[0], 1)
        growth.append(
            Growth(name, values[0], values[-1], max(values), delta, round(delta / hours, 1))
        )
    lengths = [p.stream_length for p in points] or [0]
    return SoakRecord(
        run=run,
        points=points,
        growth=growth,
        stream_length_min=min(lengths),
        stream_length_max=max(lengths),
    )


# --- running it all ----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """The runs of one size."""

    players: int
    connections: list[int]
    soak_s: float


def plan_steps(args: argparse.Namespace) -> tuple[list[Step], list[str]]:
    """Which connection counts run at which size, and lines saying so."""
    sizes = sorted(set(args.sizes))
    curve = args.curve_size if args.curve_size in sizes else max(sizes)
    size_conns = args.size_connections
    steps = []
    for n in sizes:
        conns = sorted(set(args.connections) | {size_conns}) if n == curve else [size_conns]
        steps.append(Step(n, conns, args.soak if n == curve else 0.0))
    lines = [
        "size curve: "
        + ", ".join(dataset.short_count(n) for n in sizes)
        + f" players at {size_conns} connections",
        f"connections curve: {', '.join(str(c) for c in steps[sizes.index(curve)].connections)}"
        f" connections at {dataset.short_count(curve)} players (only there, to keep the run short)",
        f"scenarios: {', '.join(args.scenarios)}; {args.warmup:g}s warm-up + {args.duration:g}s "
        "measured each",
        f"soak: {args.soak:g}s of the mixed profile at {dataset.short_count(curve)} players, "
        f"{size_conns} connections"
        if args.soak
        else "soak: none",
    ]
    if args.curve_size not in sizes:
        lines.append(
            f"--curve-size {dataset.short_count(args.curve_size)} is not among the sizes: "
            f"the connections curve runs at {dataset.short_count(curve)}"
        )
    return steps, lines


# Seconds per million players to load (COPY of 2 windows + rebuild), measured on the 2-core
# machine of RESULTS.md; a rough guide for the estimate printed before a run.
PREP_S_PER_MILLION = 80.0


def estimate_s(steps: list[Step], args: argparse.Namespace) -> float:
    total = 0.0
    for step in steps:
        total += 10 + PREP_S_PER_MILLION * step.players / 1e6 * len(args.windows) / 2
        runs = len(step.connections) * len(args.scenarios)
        total += runs * (args.warmup + args.duration + 3)
        submitting = sum(1 for s in args.scenarios if s in ("submit", "batch", "mixed"))
        total += len(step.connections) * submitting * 8  # waiting for the consumers
        total += step.soak_s
    return total


def _start(scenario: str, args: argparse.Namespace) -> tuple[SuiteResult, str]:
    binary, how = wrk.ensure_wrk()
    if binary is None:
        raise SystemExit(f"wrk is needed and could not be installed: {how}")
    _raise_fd_limit()
    result = SuiteResult(
        scenario=scenario,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine=machine.describe(),
        load={"at_start": machine.loadavg(), "busy_processes_at_start": machine.busy_processes()},
        parameters={k: _plain(v) for k, v in vars(args).items() if k != "func"},
        load_generator=f"{machine.wrk_version() or 'wrk'} ({how}), up to {args.threads} threads, "
        "Lua scripts generated by loadtest/wrk.py",
    )
    return result, binary


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return msgspec.to_builtins(value)


def _raise_fd_limit() -> None:
    """1,000 connections need more descriptors than some shells allow by default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:
        target = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _setup_lines(args: argparse.Namespace, harness: Harness) -> list[str]:
    s = harness.settings
    external = bool(args.redis_url or args.database_url)
    lines = [
        f"data: players split over {args.boards} board(s) (desc, best, shared ties), windows "
        f"{', '.join(args.windows)}; ids `p<size>-<i>`; Postgres rows by COPY, Redis by "
        "`rankstream rebuild`'s code",
        "Redis: "
        + ("given URL" if args.redis_url else "embedded Valkey")
        + (f", appendfsync {s.embedded_redis_appendfsync}" if not args.redis_url else ""),
        "Postgres: "
        + ("given URL" if args.database_url else "embedded")
        + (f", fsync {'off' if args.no_fsync else 'on'}" if not args.database_url else ""),
    ]
    if args.base_url:
        lines.append(f"API: {args.base_url} (not started here)")
    else:
        lines.append(
            f"API: granian, {args.api_workers} worker(s); consumer: {args.consumer_workers} "
            f"process(es); rate limits {harness.rate_limits}"
            + (" (servers shared by every size)" if external else " (fresh servers per size)")
        )
    return lines


def _check_args(args: argparse.Namespace) -> None:
    if args.base_url and not (args.redis_url and args.database_url):
        raise SystemExit("--base-url needs --redis-url and --database-url (to load the data)")


class Servers:
    """Fresh embedded servers for each size, or one harness on the given servers for all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.shared_servers = bool(args.redis_url or args.database_url)
        self._shared: Harness | None = None

    def get(self) -> Harness:
        if self._shared is not None:
            return self._shared
        a = self.args
        h = Harness(
            keep_data=a.keep_data,
            fsync=not a.no_fsync,
            redis_url=a.redis_url,
            database_url=a.database_url,
        )
        h.rate_limits = a.rate_limits
        try:
            h.start_servers()
        except BaseException:
            h.close()
            raise
        if self.shared_servers:
            self._shared = h
        return h

    def release(self, h: Harness) -> None:
        """Done with one size: stop its children, and its servers unless shared."""
        if h is not self._shared:
            h.close()
            return
        for child in list(h.stack.children):
            h.stop_child(child)
            h.stack.children.remove(child)

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None


def run_all(args: argparse.Namespace) -> int:
    _check_args(args)
    steps, plan = plan_steps(args)
    minutes = estimate_s(steps, args) / 60
    plan.append(f"estimated {minutes:.0f} min on a 2-core machine like the one in RESULTS.md")
    print("loadtest all:\n  " + "\n  ".join(plan), flush=True)
    if args.dry_run:
        return 0
    t0 = time.monotonic()
    result, binary = _start("all", args)
    result.plan = plan
    run_tag = secrets.token_hex(4)
    servers = Servers(args)

    def work() -> None:
        for step in steps:
            harness = servers.get()
            try:
                if not result.setup:
                    result.setup = _setup_lines(args, harness)
                session = _session(args, servers, harness, step.players, binary, run_tag)
                try:
                    asyncio.run(_run_step(session, step, args, result))
                finally:
                    result.notes += session.notes
            finally:
                servers.release(harness)
            _write(result, args)

    failed = _guarded(result, servers, work)
    if not args.no_plot and result.runs:
        result.plot = _plot(result, args)
    result.plan.append(f"took {(time.monotonic() - t0) / 60:.0f} min")
    path = _write(result, args)
    print(f"results: {path}\nsummary: {_md_path(args)}", flush=True)
    return 1 if failed else 0


async def _run_step(
    session: Session, step: Step, args: argparse.Namespace, out: SuiteResult
) -> None:
    out.datasets.append(await session.open())
    curve_size = step.soak_s > 0 or len(step.connections) > 1
    for conns in step.connections:
        if conns == args.size_connections:
            curve = "both" if curve_size else "size"
        else:
            curve = "connections"
        for name in args.scenarios:
            record, _ = await session.measure(name, conns, args.duration, curve, None)
            out.runs.append(record)
    if step.soak_s:
        print(f"[{session.label}] soak: {step.soak_s:g}s of the mixed profile", flush=True)
        record, points = await session.measure(
            "mixed", args.size_connections, step.soak_s, "soak", args.soak_every
        )
        out.soak = soak_record(record, points)
        _print_soak(out.soak)


def _print_soak(soak: SoakRecord) -> None:
    for g in soak.growth:
        print(
            f"    {g.name}: {g.start_mib} -> {g.end_mib} MiB (max {g.max_mib}, "
            f"{g.growth_mib:+} MiB, {g.per_hour_mib:+} MiB/h)",
            flush=True,
        )
    print(f"    stream length {soak.stream_length_min}..{soak.stream_length_max}", flush=True)


def run_soak(args: argparse.Namespace) -> int:
    _check_args(args)
    result, binary = _start("soak", args)
    result.plan = [
        f"soak: {args.seconds:g}s of the mixed profile at {dataset.short_count(args.players)} "
        f"players, {args.connections} connections, sampled every {args.soak_every:g}s"
    ]
    print(result.plan[0], flush=True)
    servers = Servers(args)

    def work() -> None:
        harness = servers.get()
        result.setup = _setup_lines(args, harness)
        session = _session(args, servers, harness, args.players, binary, secrets.token_hex(4))

        async def go() -> None:
            result.datasets.append(await session.open())
            record, points = await session.measure(
                "mixed", args.connections, args.seconds, "soak", args.soak_every
            )
            result.soak = soak_record(record, points)
            _print_soak(result.soak)

        try:
            asyncio.run(go())
        finally:
            result.notes += session.notes
            servers.release(harness)

    failed = _guarded(result, servers, work)
    path = _write(result, args)
    print(f"results: {path}\nsummary: {_md_path(args)}", flush=True)
    return 1 if failed else 0


def _session(
    args: argparse.Namespace,
    servers: Servers,
    harness: Harness,
    players: int,
    binary: str,
    run_tag: str,
) -> Session:
    """A session on a dataset of `players`; on servers shared across runs its ids carry the
    run's tag, so they cannot meet an earlier run's data."""
    tag = dataset.short_count(players)
    if servers.shared_servers:
        tag += f"-{run_tag}"
    ds = dataset.plan(players, args.boards, tuple(args.windows), tag, args.seed)
    return Session(args, harness, ds, binary, run_tag)


def _guarded(result: SuiteResult, servers: Servers, work: Callable[[], None]) -> bool:
    """Run `work` while sampling the load; a failure becomes a note. The servers are closed
    and the run's end recorded either way. True when it failed."""
    sampler = machine.LoadSampler(5.0).start()
    failed = False
    try:
        work()
    except Exception as exc:
        result.notes.append(f"the run failed: {type(exc).__name__}: {exc}"[:2000])
        print(f"loadtest {result.scenario} failed: {exc}", flush=True)
        failed = True
    finally:
        servers.close()
        result.load.update(sampler.stop())
        result.finished_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return failed


def _stem(result: SuiteResult) -> str:
    """`<date>-<host>` for `all` (the issue's file name), `<date>-<host>-soak` for `soak`."""
    return results.stem(None if result.scenario == "all" else result.scenario)


def _write(result: SuiteResult, args: argparse.Namespace) -> Path:
    return results.write(
        result.scenario, msgspec.to_builtins(result), folder=args.results_dir, name=_stem(result)
    )


def _md_path(args: argparse.Namespace) -> Path:
    return results.markdown_path(args.results_dir)


def _plot(result: SuiteResult, args: argparse.Namespace) -> str | None:
    from loadtest import plot

    path = args.results_dir / f"{_stem(result)}.png"
    try:
        plot.render(result, path)
    except ImportError:
        result.notes.append("no plot: matplotlib is missing (pip install -e '.[loadtest]')")
        return None
    print(f"plot: {path}", flush=True)
    return str(path.name)
