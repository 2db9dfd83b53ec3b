"""Results: one JSON file per run, and a Markdown table regenerated from all of them."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from loadtest import machine

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"


def stem(scenario: str | None) -> str:
    """`<YYYY-MM-DD>-<hostname>[-<scenario>]`: a rerun on the same day replaces its file."""
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    name = f"{today}-{socket.gethostname()}"
    return f"{name}-{scenario}" if scenario else name


def add_tag_argument(p: argparse.ArgumentParser, example: str) -> None:
    """`--tag`: a results file (and section) of its own for a run made to compare."""
    p.add_argument(
        "--tag",
        default="",
        help=f"suffix of the results file and section (e.g. `{example}`), so that a run made "
        "to compare sits beside the day's results instead of replacing them",
    )


class Record:
    """The results of one scenario's run: the machine, the load before and during it (sampled
    from here until `save`), its parameters; the scenario adds figures and notes."""

    def __init__(
        self, scenario: str, args: argparse.Namespace, load_generator: str = "", **sections: Any
    ) -> None:
        self.scenario = scenario
        self.tag: str = getattr(args, "tag", "")
        info = machine.describe()
        started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        load_start = machine.loadavg()
        busy = machine.busy_processes()
        print(f"{scenario}: load average at start {load_start}", flush=True)
        self.out: dict[str, Any] = {
            "scenario": scenario + (f" ({self.tag})" if self.tag else ""),
            "started_at": started_at,
            "machine": info,
            "load": {"at_start": load_start, "busy_processes_at_start": busy},
            "parameters": {k: v for k, v in vars(args).items() if k != "func"},
            "load_generator": load_generator,
            "figures": [],
            **sections,
            "notes": [],
        }
        self.sampler = machine.LoadSampler().start()

    def failed(self, exc: Exception) -> None:
        """The run broke off: say why in the file."""
        self.out["notes"].append(f"the run failed: {type(exc).__name__}: {exc}"[:2000])
        print(f"{self.scenario} failed: {exc}", flush=True)

    def save(self) -> Path:
        """Write the results file (`-<tag>` in its name when tagged) and the summary."""
        self.out["load"].update(self.sampler.stop())
        self.out["machine"]["reference_loop_ms_at_end"] = machine.reference_loop_ms()
        name = stem(self.scenario) + (f"-{self.tag}" if self.tag else "")
        path = write(self.scenario, self.out, name=name)
        print(f"results: {path}\n{RESULTS_MD}", flush=True)
        return path


def markdown_path(folder: Path = RESULTS_DIR) -> Path:
    """RESULTS.md beside loadtest/results; in any other results folder, inside it."""
    return RESULTS_MD if folder.resolve() == RESULTS_DIR else folder / "RESULTS.md"


def write(
    scenario: str,
    payload: dict[str, Any],
    folder: Path = RESULTS_DIR,
    name: str | None = None,
) -> Path:
    """Write `<folder>/<name>.json` (default name `<date>-<hostname>-<scenario>`) and
    refresh the Markdown summary of that folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or stem(scenario)}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    render_markdown(folder)
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _verdict(fig: dict[str, Any]) -> str:
    if fig.get("target") is None or fig.get("value") is None:
        return "no target"
    ratio = fig.get("ratio_to_target")
    value, target = fig["value"], fig["target"]
    if fig["op"] == ">=":
        pct = (value / target - 1) * 100
        word = "met" if fig["met"] else "missed"
        return f"{word}: {ratio:.2f}x target ({pct:+.0f}%)"
    pct = (target - value) / target * 100
    if fig["met"]:
        return f"met: {pct:.0f}% under the bound ({ratio:.2f}x)"
    return f"missed: {-pct:.0f}% over the bound ({ratio:.2f}x)"


def _header(path: Path, run: dict[str, Any]) -> list[str]:
    """The heading and the lines on machine, load and generator every run section starts with."""
    m = run.get("machine", {})
    load = run.get("load", {})
    return [
        f"## {run.get('scenario')} — {run.get('started_at', '?')} on {m.get('hostname')}",
        "",
        f"- machine: {m.get('cpu_model')}, {m.get('cores')} cores, "
        f"{_fmt(m.get('memory_mib'))} MiB, kernel {m.get('kernel')}, Python {m.get('python')}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in (m.get("packages") or {}).items() if v),
        f"- load average at start: {load.get('at_start')}; during the run (1-min): "
        f"max {load.get('max_1min')}, mean {load.get('mean_1min')}; "
        f"at end {load.get('at_end')}; CPU steal during the run "
        f"{_fmt(load.get('steal_percent'))}%",
        f"- speed of the machine: a fixed Python loop in {_fmt(m.get('reference_loop_ms'))} ms"
        f" at the start, {_fmt(m.get('reference_loop_ms_at_end'))} ms at the end"
        " (best of 5 each; lower is faster)",
        f"- load generator: {run.get('load_generator', '—')}",
        f"- file: `loadtest/results/{path.name}`",
        "",
    ]


def _figures(run: dict[str, Any]) -> list[str]:
    lines = [
        "| figure | measured | target | verdict | note |",
        "|---|---|---|---|---|",
    ]
    for fig in run.get("figures", []):
        target = (
            f"{fig['op']} {_fmt(fig['target'])} {fig['unit']}"
            if fig.get("target") is not None
            else "—"
        )
        lines.append(
            f"| {fig['name']} | {_fmt(fig['value'])} {fig['unit']} | {target} | "
            f"{_verdict(fig)} | {fig.get('note') or ''} |"
        )
    for note in run.get("notes", []):
        lines.append("")
        lines.append(f"> {note}")
    lines += _profile(run)
    return lines


def _profile(run: dict[str, Any], top: int = 6) -> list[str]:
    """Where the profiled process spent its time (py-spy, self time), per scenario."""
    profiles = run.get("profile") or {}
    if not isinstance(profiles, dict) or not profiles:
        return []
    title = "Profile of the 1-worker API (py-spy, share of samples by self time):"
    if "self" in profiles:  # ingest: one summary, of the consumer, not one per scenario
        profiles = {"consumer": profiles}
        title = "Profile of the consumer while it drained (py-spy, share of samples by self time):"
    lines = ["", title, ""]
    for kind, found in profiles.items():
        entries = (found or {}).get("self", [])[:top]
        shares = "; ".join(f"{e['function']} {100 * e['share']:.1f}%" for e in entries)
        lines.append(f"- {kind}: {shares}")
    return lines


def render_markdown(folder: Path = RESULTS_DIR) -> Path:
    """The Markdown summary of a results folder: every run, newest first."""
    from loadtest import summary

    runs = []
    for path in folder.glob("*.json"):
        try:
            runs.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    runs.sort(key=lambda pr: (str(pr[1].get("started_at", "")), pr[0].name), reverse=True)
    lines = [
        "# rankstream benchmark results",
        "",
        "Generated by `python -m loadtest` from `loadtest/results/*.json` (one file per",
        "date, host and scenario; a rerun on the same day replaces its file). Only measured",
        "figures appear here; targets are those of issue 3 (ingest), issue 4 (reads) and",
        "issue 5 (rebuild). `all` is the full suite (`python -m loadtest all`): every",
        "scenario over sizes and connection counts, and a soak.",
        "",
    ]
    out = markdown_path(folder)
    plotted = [
        (path, run) for path, run in runs if run.get("scenario") == "all" and run.get("plot")
    ]
    if plotted:  # a stable place for README to link: the newest full run's curves
        path, run = plotted[0]
        href = os.path.relpath(path.parent / run["plot"], out.parent)
        lines += [
            "## Scale curves",
            "",
            f"Throughput and p99 against players and connections, from the `all` run of "
            f"{run.get('started_at')} on {run.get('machine', {}).get('hostname')} (its tables "
            "below).",
            "",
            f"![throughput and p99 against players and connections]({href})",
            "",
        ]
    for path, run in runs:
        lines += _header(path, run)
        if run.get("scenario") in summary.SUITES:
            lines += summary.render(run, path, out.parent)
        else:
            lines += _figures(run)
        lines.append("")
    out.write_text("\n".join(lines))
    return out
