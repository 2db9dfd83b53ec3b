"""The scale curves as a PNG: throughput and p99 against players (size curve) and against
connections (connections curve), one line per scenario. Needs matplotlib (the `loadtest`
extra: `pip install -e '.[loadtest]'`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from loadtest import results
from loadtest.dataset import short_count
from loadtest.records import RunRecord, SuiteResult


def _series(
    runs: list[RunRecord], x: Callable[[RunRecord], int]
) -> dict[str, list[tuple[int, float, float | None]]]:
    out: dict[str, list[tuple[int, float, float | None]]] = {}
    for r in runs:
        out.setdefault(r.label, []).append((x(r), r.requests_per_s, r.latency_ms.p99))
    return {k: sorted(v) for k, v in out.items()}


def render(result: SuiteResult, path: Path) -> Path:
    """Draw the four panels into `path` (ImportError without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    by_size = [r for r in result.runs if r.curve in ("size", "both")]
    by_conns = [r for r in result.runs if r.curve in ("connections", "both")]
    fig, axes = plt.subplots(2, 2, figsize=(14, 10), squeeze=False)
    Panel = tuple[Any, list[RunRecord], Callable[[RunRecord], int], str, str, int]
    panels: list[Panel] = [
        (axes[0][0], by_size, lambda r: r.players, "players", "throughput (req/s)", 1),
        (axes[1][0], by_size, lambda r: r.players, "players", "p99 latency (ms)", 2),
        (axes[0][1], by_conns, lambda r: r.connections, "connections", "throughput (req/s)", 1),
        (axes[1][1], by_conns, lambda r: r.connections, "connections", "p99 latency (ms)", 2),
    ]
    for ax, runs, x, xlabel, ylabel, column in panels:
        for label, points in _series(runs, x).items():
            xs = [p[0] for p in points if p[column] is not None]
            ys = [p[column] for p in points if p[column] is not None]
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if runs:
            fixed = (
                f"at {runs[0].connections} connections"
                if xlabel == "players"
                else f"at {short_count(runs[0].players)} players"
            )
            ax.set_title(f"{ylabel.split(' (')[0]} against {xlabel}, {fixed}")
            ticks = sorted({x(r) for r in runs})
            ax.set_xticks(ticks)
            ax.set_xticklabels([short_count(t) if xlabel == "players" else str(t) for t in ticks])
    handles, labels = axes[0][0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize="small")
    m = result.machine
    fig.suptitle(
        f"rankstream `python -m loadtest all`, {result.started_at} on {m.get('hostname')} "
        f"({m.get('cpu_model')}, {m.get('cores')} cores)"
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="results JSON of an `all` run (default: the newest in --results-dir)",
    )
    p.add_argument("--results-dir", type=Path, default=results.RESULTS_DIR)


def run(args: argparse.Namespace) -> int:
    """`python -m loadtest plot`: (re)draw the PNG beside its JSON and refresh the summary."""
    path: Path | None = args.file
    if path is None:
        found = []
        for candidate in args.results_dir.glob("*.json"):
            raw = json.loads(candidate.read_text())
            if raw.get("scenario") == "all":
                found.append((str(raw.get("started_at", "")), candidate))
        if not found:
            print(f"no `all` results in {args.results_dir}")
            return 1
        path = max(found)[1]
    raw = json.loads(path.read_text())
    result = msgspec.convert(raw, SuiteResult)
    png = render(result, path.with_suffix(".png"))
    raw["plot"] = png.name
    path.write_text(json.dumps(raw, indent=2) + "\n")
    results.render_markdown(path.parent)
    print(png)
    return 0
