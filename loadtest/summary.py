"""Markdown tables of an `all` or `soak` run, for RESULTS.md: datasets and rebuilds, each
scenario by size and by connections (throughput, p50/p95/p99, errors, CPU of each process,
consumer lag, and what limited the figure), visibility probes, and the soak."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from loadtest.dataset import short_count
from loadtest.records import RunRecord, SoakRecord, SuiteResult

SUITES = ("all", "soak")
CPU_ORDER = ("api", "consumer", "redis", "postgres", "wrk", "harness", "other")


def _n(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) or digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def cpu_cell(cpu: dict[str, float]) -> str:
    """`api 120 · redis 30 · …` in % of one core, biggest users in a fixed order."""
    names = [n for n in CPU_ORDER if n in cpu] + sorted(set(cpu) - set(CPU_ORDER))
    return " · ".join(f"{n} {cpu[n]:.0f}" for n in names if cpu[n] >= 0.5) or "—"


def errors_cell(r: RunRecord) -> str:
    if not r.failed_requests:
        return "0"
    kinds = ", ".join(f"{k} {v:,}" for k, v in r.errors.items() if v)
    return f"{r.failed_requests:,} ({kinds})"


def _table(head: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


RUN_HEAD = [
    "scenario",
    "players",
    "conns",
    "req/s",
    "submissions/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "errors",
    "CPU, % of a core",
    "lag max / end",
    "drain s",
    "limited by",
]


def _submissions(r: RunRecord) -> str:
    """Rate, and how many of the submissions sent the consumers recorded."""
    if r.submissions_per_s is None:
        return "—"
    if r.events_recorded is None:
        return _n(r.submissions_per_s)
    return f"{_n(r.submissions_per_s)} ({r.events_recorded:,} of {r.submissions_sent:,} recorded)"


def run_row(r: RunRecord) -> list[str]:
    lat = r.latency_ms
    u = r.usage
    return [
        r.label,
        short_count(r.players),
        str(r.connections),
        _n(r.requests_per_s),
        _submissions(r),
        _ms(lat.p50),
        _ms(lat.p95),
        _ms(lat.p99),
        errors_cell(r),
        cpu_cell(u.cpu_pct),
        f"{_n(u.lag_max)} / {_n(u.lag_end)}",
        _n(r.drain_s, 1) if r.drain_s is not None else "—",
        r.limited_by,
    ]


def _ordered(
    runs: list[RunRecord], scenarios: list[str], key: Callable[[RunRecord], int]
) -> list[RunRecord]:
    """Grouped by scenario (in the order they ran), then by `key`."""
    names = list(dict.fromkeys(scenarios + [r.scenario for r in runs]))
    return [r for name in names for r in sorted(runs, key=key) if r.scenario == name]


def render(raw: dict[str, Any], path: Path, md_dir: Path) -> list[str]:
    """The lines of one suite run's section (after the common header); links relative to
    `md_dir`, the folder of the Markdown file."""
    run = msgspec.convert(raw, SuiteResult)
    lines: list[str] = []
    lines += [f"- {line}" for line in run.setup + run.plan]
    if run.finished_at:
        lines.append(f"- finished at {run.finished_at}")
    if run.plot:  # the newest run's is shown under "Scale curves" at the top
        href = os.path.relpath(path.parent / run.plot, md_dir)
        lines.append(
            f"- plot of throughput and p99 against players and connections: [{run.plot}]({href})"
        )
    lines.append("")
    if run.datasets:
        lines += ["### Datasets and rebuild times", ""]
        lines += _table(
            [
                "players",
                "boards x windows",
                "ranked entries",
                "COPY to Postgres s",
                "rebuild s",
                "rebuilt entries/s",
                "settle s",
                "Redis used_memory",
                "bytes per ranked entry",
                "of which (one board): set / versions / names",
            ],
            (
                [
                    short_count(d.players),
                    f"{len(d.boards)} x {len(d.windows)} ({', '.join(d.windows)})",
                    _n(d.ranked_entries),
                    _n(d.postgres_copy_s, 1),
                    _n(d.rebuild_s, 1),
                    _n(d.ranked_entries / d.rebuild_s if d.rebuild_s else None),
                    _n(d.settle_s, 1),
                    f"{d.redis_used_bytes / 2**20:,.0f} MiB",
                    _n(d.redis_bytes_per_entry),
                    _key_split(d.key_bytes, d.players // max(1, len(d.boards))),
                ]
                for d in run.datasets
            ),
        )
        lines.append("")
    scenarios = list(run.parameters.get("scenarios") or [])
    shown: set[int] = set()
    size_runs = [r for r in run.runs if r.curve in ("size", "both")]
    if len({r.players for r in size_runs}) > 1:
        lines += [f"### By players, at {size_runs[0].connections} connections", ""]
        ordered = _ordered(size_runs, scenarios, key=lambda r: r.players)
        lines += [*_table(RUN_HEAD, (run_row(r) for r in ordered)), ""]
        shown |= {id(r) for r in ordered}
    conn_runs = [r for r in run.runs if r.curve in ("connections", "both")]
    if len({r.connections for r in conn_runs}) > 1:
        lines += [f"### By connections, at {short_count(conn_runs[0].players)} players", ""]
        ordered = _ordered(conn_runs, scenarios, key=lambda r: r.connections)
        lines += [*_table(RUN_HEAD, (run_row(r) for r in ordered)), ""]
        shown |= {id(r) for r in ordered}
    rest = [r for r in run.runs if id(r) not in shown]
    if rest:
        lines += ["### Runs", "", *_table(RUN_HEAD, (run_row(r) for r in rest)), ""]
    probed = [r for r in run.runs if r.visibility is not None]
    if run.soak is not None:
        probed.append(run.soak.run)
    if probed:
        lines += [
            "### Submit → visible (probes: POST a fresh player, poll its rank until 200)",
            "",
        ]
        lines += _table(
            ["run", "players", "conns", "probes sent / visible", "poll ms", "p50", "p95", "p99",
             "max ms"],
            (
                [
                    "soak" if r.curve == "soak" else r.scenario,
                    short_count(r.players),
                    str(r.connections),
                    f"{v.sent} / {v.visible}",
                    _n(v.poll_ms),
                    _ms(v.p50_ms),
                    _ms(v.p95_ms),
                    _ms(v.p99_ms),
                    _ms(v.max_ms),
                ]
                for r in probed
                if (v := r.visibility) is not None
            ),
        )  # fmt: skip
        lines.append("")
    if run.soak is not None:
        lines += soak_lines(run.soak)
    for note in run.notes:
        lines += ["", f"> {note}"]
    return lines


def _key_split(key_bytes: dict[str, int], players_per_board: int) -> str:
    """Bytes per player of one board's set and versions hash (one window) and its names
    hash, from MEMORY USAGE (sampled)."""
    if not key_bytes or not players_per_board:
        return "—"
    parts = [key_bytes.get(k, 0) for k in ("sorted_set", "versions_hash", "names_hash")]
    return " / ".join(f"{p / players_per_board:.0f}" for p in parts)


def soak_lines(soak: SoakRecord) -> list[str]:
    r = soak.run
    lat = r.latency_ms
    span = r.usage.seconds
    length = f"{span / 60:.0f} min" if span >= 120 else f"{span:.0f} s"
    lines = [
        f"### Soak: {length} of the mixed profile at {short_count(r.players)} players, "
        f"{r.connections} connections",
        "",
        f"{_n(r.requests_per_s)} req/s ({_n(r.submissions_per_s)} submissions/s"
        + (
            f"; {r.events_recorded:,} of {r.submissions_sent:,} recorded"
            if r.events_recorded is not None
            else ""
        )
        + "), p50 "
        f"{_ms(lat.p50)} / p95 {_ms(lat.p95)} / p99 {_ms(lat.p99)} ms, errors {errors_cell(r)}; "
        f"CPU {cpu_cell(r.usage.cpu_pct)}; stream length {soak.stream_length_min:,} to "
        f"{soak.stream_length_max:,}, lag max {_n(r.usage.lag_max)}; limited by {r.limited_by}.",
        "",
    ]
    lines += _table(
        ["memory (PSS; Redis also its used_memory)", "start MiB", "end MiB", "max MiB",
         "growth MiB", "growth MiB/h"],
        (
            [g.name, _n(g.start_mib, 1), _n(g.end_mib, 1), _n(g.max_mib, 1),
             f"{g.growth_mib:+,.1f}", f"{g.per_hour_mib:+,.1f}"]
            for g in soak.growth
        ),
    )  # fmt: skip
    lines.append("")
    step = max(1, len(soak.points) // 12)
    shown = soak.points[::step]
    if soak.points and shown[-1] is not soak.points[-1]:
        shown.append(soak.points[-1])
    names = sorted({n for p in shown for n in p.memory_mib})
    lines += _table(
        ["t s", "stream length", "lag", "pending", "Redis used MiB"] + [f"{n} MiB" for n in names],
        (
            [_n(p.t_s), _n(p.stream_length), _n(p.lag), _n(p.pending), _n(p.redis_used_mib, 1)]
            + [_n(p.memory_mib.get(n), 1) for n in names]
            for p in shown
        ),
    )
    lines.append("")
    return lines
