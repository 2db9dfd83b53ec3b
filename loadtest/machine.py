"""What the figures were measured on: hardware, software versions, and how busy it was."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from importlib import metadata
from typing import Any

PACKAGES = (
    "redis",
    "hiredis",
    "litestar",
    "granian",
    "asyncpg",
    "faststream",
    "msgspec",
    "uvloop",
    "httpx",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return list(os.getloadavg())


def cpu_jiffies() -> tuple[int, int]:
    """(steal, all) clock ticks of every CPU since boot, from /proc/stat; (0, 0) elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


REFERENCE_LOOPS = 300_000


def reference_loop_ms(repeats: int = 5) -> float:
    """The best of `repeats` timings of a fixed pure-Python loop: the same work every run, so
    that results from one machine at different times can be told apart from a change in
    the code. On the shared VM of 2026-11-23 it moved between 15 and 29 ms within minutes,
    with no steal reported (the host's other guests share caches and cores' siblings)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        total = 0
        for i in range(REFERENCE_LOOPS):
            total += i * i % 7
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 2)


def busy_processes(limit: int = 5) -> list[str]:
    """The processes using the most CPU right now (ps's lifetime %CPU), for context."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,pcpu,etimes,comm", "--sort=-pcpu", "--no-headers"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [" ".join(line.split()) for line in out.splitlines()[:limit]]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def wrk_version() -> str | None:
    """`wrk -v`'s first line, if wrk is installed."""
    path = shutil.which("wrk")
    if not path:
        return None
    done = subprocess.run([path, "-v"], capture_output=True, text=True)
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else None


def describe() -> dict[str, Any]:
    """The machine and software the run used."""
    return {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_mib": _mem_total_mib(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": {name: _version(name) for name in PACKAGES},
        "reference_loop_ms": reference_loop_ms(),
    }


class LoadSampler:
    """Samples /proc/loadavg every `interval_s` in a thread while a run is under way."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()
        self._jiffies = cpu_jiffies()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.monotonic() - self._t0, 1), loadavg()[0]))
            self._stop.wait(self.interval_s)

    def start(self) -> LoadSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop sampling; the 1-minute load average's max and mean during the run, and the
        share of CPU time the hypervisor gave to others (steal) meanwhile."""
        self._stop.set()
        self._thread.join(timeout=5)
        values = [v for _, v in self.samples]
        steal, total = (b - a for a, b in zip(self._jiffies, cpu_jiffies(), strict=True))
        return {
            "steal_percent": round(100 * steal / total, 2) if total else None,
            "samples": len(values),
            "max_1min": max(values) if values else None,
            "mean_1min": round(sum(values) / len(values), 2) if values else None,
            "at_end": loadavg(),
        }
