"""`baseline`: Litestar on granian answering a constant JSON, as issue 4 times it "here".

Issue 4 quotes ~18,000 req/s for this on the machine its goals were set on. The same
measurement here (granian with the API's own flags and 2 workers, wrk with 64 connections
on the same machine) tells how this machine, right now, compares with that one: the
ratio puts the other scenarios' figures in proportion, and tells a slower or busier
host from a change in the code.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from loadtest import machine, results, wrk
from loadtest.stack import Harness, free_port, http_status
from loadtest.stats import figure
from service import up
from service.settings import Settings

ISSUE_REQ_S = 18_000  # issue 4: "Litestar on granian answers a constant JSON at ~18,000 req/s"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=2, help="granian workers (2)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    p.add_argument("--repeat", type=int, default=3, help="runs; the figure is their median (3)")
    results.add_tag_argument(p, "busy")


def _command(port: int, workers: int) -> list[str]:
    """service.up.api_command (the API's own flags), serving the constant answer instead."""
    api = up.api_command(Settings(host="127.0.0.1", port=port, api_workers=workers))
    at = api.index("--factory")
    return [*api[:at], "loadtest.baseline_app:app", *api[at + 2 :]]


def _wait(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while http_status(url) != 200:
        if proc.poll() is not None:
            raise RuntimeError(f"granian exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("granian did not answer")
        time.sleep(0.1)


def run(args: argparse.Namespace) -> int:
    binary, found = wrk.ensure_wrk()
    record = results.Record(
        "baseline",
        args,
        f"{machine.wrk_version()} ({found}), {args.connections} connections, "
        f"{args.threads} threads, {args.duration:g}s per run after 2s warm-up",
        runs=[],
    )
    out = record.out
    failed = False
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen(
        _command(port, args.workers),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group, which Harness.stop_child ends with it
    )
    try:
        if binary is None:
            raise RuntimeError(found)
        _wait(url, proc)
        with tempfile.TemporaryDirectory() as folder:
            lua = Path(folder) / "plain.lua"
            lua.write_text("-- every request the same GET\n")
            wrk.run(binary, url, lua, args.connections, args.threads, 2)  # warm-up
            for i in range(args.repeat):
                got = wrk.run(binary, url, lua, args.connections, args.threads, args.duration)
                out["runs"].append(got)
                print(f"  run {i + 1}: {got['requests_per_s']:,.0f} req/s", flush=True)
        rates = [r["requests_per_s"] for r in out["runs"]]
        median = statistics.median(rates)
        out["figures"].append(
            figure(
                f"constant JSON, Litestar on granian, {args.workers} workers",
                round(median),
                "req/s",
                None,
                note=f"median of {len(rates)}: "
                + ", ".join(f"{r:,.0f}" for r in rates)
                + f"; issue 4 quotes ~{ISSUE_REQ_S:,} req/s on its machine: "
                f"{median / ISSUE_REQ_S:.2f}x that",
            )
        )
    except Exception as exc:
        record.failed(exc)
        failed = True
    finally:
        Harness.stop_child(proc)
    record.save()
    return 1 if failed else 0
