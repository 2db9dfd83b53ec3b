"""`clients`: client CPU per Redis command, redis-py versions against the API's read link.

Issue 4 asks to choose the Redis client with numbers. 64 concurrent callers read a
100,000-member set: ZREVRANK alone, and ZREVRANK + ZSCORE as a pipelined pair, through
redis-py's BlockingConnectionPool in the installed version and in each version given to
`--compare-redis-py` (installed with pip into a folder of their own and run in a
subprocess, `loadtest.redispy_probe`), then through `service.wire.ReadLink`. The figure is
the client process's CPU per call, which is what an API worker pays per read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis as redis_py
from redis.asyncio import Redis

from loadtest import results
from loadtest.redispy_probe import KEY, fill, measure, redis_py_figures
from loadtest.stack import Harness
from loadtest.stats import figure
from service.wire import ReadLink

REPO = Path(__file__).resolve().parent.parent


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--commands", type=int, default=60_000, help="calls per client (60000)")
    p.add_argument("--callers", type=int, default=64, help="concurrent callers (64)")
    p.add_argument(
        "--compare-redis-py",
        default="5.3.1",
        help="other redis-py versions to measure, comma-separated (5.3.1; '' for none)",
    )


def _other_redis_py(version: str, url: str, commands: int, callers: int) -> dict[str, Any]:
    """The probe's figures under redis-py `version` (pip-installed with its dependencies into
    a folder of its own; hiredis comes from this environment)."""
    target = Path(tempfile.gettempdir()) / f"rankstream-redis-py-{version}"
    if not (target / "redis").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet",
             "--target", str(target), f"redis=={version}"],
            check=True,
        )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.redispy_probe", url, str(commands), str(callers)],
        env=env, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"the probe under redis-py {version} failed: {out.stderr[-2000:]}")
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if found["version"] != version:
        raise RuntimeError(f"asked for redis-py {version}, the probe imported {found['version']}")
    return found


async def _read_link(url: str, commands: int, callers: int) -> dict[str, dict[str, float]]:
    link = ReadLink(url)

    async def pair(m: str) -> Any:  # commands of one loop turn go out in one write
        return await asyncio.gather(
            link.execute("ZREVRANK", KEY, m), link.execute("ZSCORE", KEY, m)
        )

    try:
        return {
            "ZREVRANK": await measure(
                lambda m: link.execute("ZREVRANK", KEY, m), commands, callers
            ),
            "pipelined ZREVRANK + ZSCORE": await measure(pair, commands, callers),
        }
    finally:
        await link.aclose()


async def _installed(
    url: str, commands: int, callers: int
) -> dict[str, dict[str, dict[str, float]]]:
    client = Redis.from_url(url)
    try:
        await fill(client)
    finally:
        await client.aclose()
    return {
        f"redis-py {redis_py.__version__}": await redis_py_figures(url, commands, callers),
        "service.wire.ReadLink": await _read_link(url, commands, callers),
    }


def run(args: argparse.Namespace) -> int:
    record = results.Record("clients", args, "none: the clients run in the harness process")
    out = record.out
    others = [v.strip() for v in args.compare_redis_py.split(",") if v.strip()]
    with Harness() as harness:
        url = harness.start_servers().redis_url
        measured = asyncio.run(_installed(url, args.commands, args.callers))
        for version in others:
            found = _other_redis_py(version, url, args.commands, args.callers)
            measured[f"redis-py {version}"] = found["figures"]
    out["runs"] = [
        {"client": name, "call": call, **m}
        for name, calls in measured.items()
        for call, m in calls.items()
    ]
    for name, calls in measured.items():
        for call, m in calls.items():
            out["figures"].append(
                figure(f"{name}: client CPU per call", m["client_cpu_us"], "µs", note=call)
            )
            out["figures"].append(
                figure(
                    f"{name}: calls/s, {args.callers} callers",
                    m["calls_per_s"],
                    "calls/s",
                    note=call,
                )
            )
            print(
                f"{name:24} {call:28} {m['calls_per_s']:>8,} calls/s  {m['client_cpu_us']} µs CPU"
            )
    record.save()
    return 0
