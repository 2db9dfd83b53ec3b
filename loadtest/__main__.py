"""`python -m loadtest <scenario> [options]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from loadtest import (
    baseline,
    clients,
    fallback,
    ingest,
    limiter,
    plot,
    reads,
    rebuild,
    results,
    suite,
)

Entry = Callable[[argparse.Namespace], int]


# name, help, options, entry point
_SCENARIOS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Entry]] = [
    (
        "all",
        "the full suite: dataset per size, every scenario over sizes and connections, "
        "soak, results JSON + RESULTS.md + PNG",
        suite.add_all_arguments,
        suite.run_all,
    ),
    (
        "soak",
        "the mixed profile for a long while: memory and stream",
        suite.add_soak_arguments,
        suite.run_soak,
    ),
    ("plot", "(re)draw the PNG of an `all` results file", plot.add_arguments, plot.run),
    (
        "ingest",
        "consumer throughput and submit → visible latency",
        ingest.add_arguments,
        ingest.run,
    ),
    ("reads", "top-10, player rank and around-me with wrk", reads.add_arguments, reads.run),
    (
        "baseline",
        "Litestar on granian answering a constant JSON: this machine against issue 4's",
        baseline.add_arguments,
        baseline.run,
    ),
    (
        "limiter",
        "the rate limiter's Redis and client CPU per check, by strategy and window fill",
        limiter.add_arguments,
        limiter.run,
    ),
    (
        "rebuild",
        "rebuild of a 1,000,000-player board from Postgres",
        rebuild.add_arguments,
        rebuild.run,
    ),
    (
        "fallback",
        "the Postgres fallback reads (service.pgranking) on a 1,000,000-player board",
        fallback.add_arguments,
        fallback.run,
    ),
    (
        "clients",
        "client CPU per Redis command: redis-py vs the read link",
        clients.add_arguments,
        clients.run,
    ),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)
    for name, help_text, add_arguments, run in _SCENARIOS:
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        p.set_defaults(func=run)
    p = sub.add_parser("report", help="regenerate RESULTS.md from results/*.json")
    p.add_argument("--results-dir", type=Path, default=results.RESULTS_DIR)
    p.set_defaults(func=_report)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def _report(args: argparse.Namespace) -> int:
    print(results.render_markdown(args.results_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
