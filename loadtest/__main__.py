"""`python -m loadtest <scenario> [options]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtest import clients, ingest, plot, reads, rebuild, results, suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser(
        "all",
        help="the full suite: dataset per size, every scenario over sizes and connections, "
        "soak, results JSON + RESULTS.md + PNG",
    )
    suite.add_all_arguments(p)
    p.set_defaults(func=suite.run_all)
    p = sub.add_parser("soak", help="the mixed profile for a long while: memory and stream")
    suite.add_soak_arguments(p)
    p.set_defaults(func=suite.run_soak)
    p = sub.add_parser("plot", help="(re)draw the PNG of an `all` results file")
    plot.add_arguments(p)
    p.set_defaults(func=plot.run)
    p = sub.add_parser("ingest", help="consumer throughput and submit → visible latency")
    ingest.add_arguments(p)
    p.set_defaults(func=ingest.run)
    p = sub.add_parser("reads", help="top-10, player rank and around-me with wrk")
    reads.add_arguments(p)
    p.set_defaults(func=reads.run)
    p = sub.add_parser("rebuild", help="rebuild of a 1,000,000-player board from Postgres")
    rebuild.add_arguments(p)
    p.set_defaults(func=rebuild.run)
    p = sub.add_parser("clients", help="client CPU per Redis command: redis-py vs the read link")
    clients.add_arguments(p)
    p.set_defaults(func=clients.run)
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
