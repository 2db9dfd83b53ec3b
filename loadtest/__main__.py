"""`python -m loadtest <scenario> [options]`."""

from __future__ import annotations

import argparse
import sys

from loadtest import ingest, reads, rebuild


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("ingest", help="consumer throughput and submit → visible latency")
    ingest.add_arguments(p)
    p.set_defaults(func=ingest.run)
    p = sub.add_parser("reads", help="top-10, player rank and around-me with wrk")
    reads.add_arguments(p)
    p.set_defaults(func=reads.run)
    p = sub.add_parser("rebuild", help="rebuild of a 1,000,000-player board from Postgres")
    rebuild.add_arguments(p)
    p.set_defaults(func=rebuild.run)
    sub.add_parser("report", help="regenerate RESULTS.md from results/*.json").set_defaults(
        func=lambda _args: _report()
    )
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def _report() -> int:
    from loadtest import results

    results.render_markdown()
    print(results.RESULTS_MD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
