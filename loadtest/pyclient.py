"""Fallback load generator when wrk is unavailable: closed-loop httpx asyncio workers.

Much slower than wrk (it shares the CPUs with the server and spends far more per request),
so its figures understate the server; results say which generator was used.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

from loadtest.stats import percentile


async def _run(
    base_url: str, kind: str, board: str, players: int, prefix: str, query: str,
    connections: int, duration_s: float,
) -> dict[str, Any]:  # fmt: skip
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=5) as http:
        deadline = time.perf_counter() + duration_s

        async def worker(seed: int) -> None:
            nonlocal failures
            rng = random.Random(seed)
            while time.perf_counter() < deadline:
                if kind == "top":
                    path = f"/v1/leaderboards/{board}/top{query}"
                else:
                    path = f"/v1/leaderboards/{board}/players/{prefix}{rng.randrange(players)}"
                    path += ("/around" if kind == "around" else "") + query
                t0 = time.perf_counter()
                try:
                    answer = await http.get(path)
                    ok = answer.status_code < 400
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - t0) * 1000)
                failures += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        elapsed = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "duration_s": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "failed_requests": failures,
        "latency_ms": {q: percentile(latencies, float(q[1:])) for q in ("p50", "p90", "p99")},
    }


def run(**kwargs: Any) -> dict[str, Any]:
    """One scenario with the Python client (same figures as `loadtest.wrk.run`)."""
    return asyncio.run(_run(**kwargs))
