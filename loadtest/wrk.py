"""wrk as the load generator: install, Lua scripts, run, parse.

The Lua script picks a random ranked player per request for rank and around-me, and
prints a JSON summary (exact percentiles from wrk's HdrHistogram) in `done()`; wrk's own
text report (`--latency`) is parsed too and kept beside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

MARK = "LOADTEST_JSON "

_LUA = r"""
local n = __N__
local kind = "__KIND__"
local board = "__BOARD__"
local prefix = "__PREFIX__"
local query = "__QUERY__"
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

local fixed = nil
function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  if kind == "top" then
    fixed = wrk.format("GET", "/v1/leaderboards/" .. board .. "/top" .. query)
  end
end

function request()
  if fixed then return fixed end
  local pid = prefix .. math.random(0, n - 1)
  local path = "/v1/leaderboards/" .. board .. "/players/" .. pid
  if kind == "around" then path = path .. "/around" end
  return wrk.format("GET", path .. query)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '__MARK__{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


def ensure_wrk() -> tuple[str | None, str]:
    """wrk's path, installing Debian's package as root when missing; and what happened."""
    path = shutil.which("wrk")
    if path:
        return path, "found"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "wrk missing and apt-get unavailable (not root)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, env=env)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env)
        done = subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, env=env)
    path = shutil.which("wrk")
    if path:
        return path, "installed with apt-get"
    return None, "apt-get install wrk failed: " + done.stderr.decode(errors="replace")[-300:]


def script(folder: Path, kind: str, board: str, players: int, prefix: str, query: str) -> Path:
    """Write the Lua script of one scenario (kind: top, rank, around)."""
    text = (
        _LUA.replace("__N__", str(players))
        .replace("__KIND__", kind)
        .replace("__BOARD__", board)
        .replace("__PREFIX__", prefix)
        .replace("__QUERY__", query)
        .replace("__MARK__", MARK)
    )
    path = folder / f"wrk-{kind}.lua"
    path.write_text(text)
    return path


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float | None:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_text(report: str) -> dict[str, Any]:
    """Figures from wrk's text report (`--latency`)."""
    out: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", report)
    if m:
        out["requests_per_s"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", report)
    if m:
        out["requests"] = int(m.group(1))
        out["duration_ms"] = _ms(m.group(2))
    dist = re.search(r"Latency Distribution\s+(.*?)\n\s*\d+ requests", report, re.S)
    if dist:
        for pct, value in re.findall(r"([\d.]+)%\s+([\d.]+\w+)", dist.group(1)):
            out[f"p{pct.rstrip('0').rstrip('.')}_ms"] = _ms(value)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    out["non_2xx_3xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", report)
    if m:
        out["socket_errors"] = m.group(1).strip()
    return out


def run(
    binary: str,
    url: str,
    lua: Path,
    connections: int,
    threads: int,
    duration_s: int,
) -> dict[str, Any]:
    """One wrk run; figures in ms and req/s."""
    cmd = [
        binary, "-t", str(threads), "-c", str(connections), "-d", f"{duration_s}s",
        "--latency", "--timeout", "5s", "-s", str(lua), url,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-500:]}")
    text_part, _, json_part = done.stdout.partition(MARK)
    parsed = parse_text(text_part)
    exact = json.loads(json_part.strip().splitlines()[0]) if json_part else {}
    result: dict[str, Any] = {"command": " ".join(cmd), "wrk_text": parsed, "wrk_report": text_part}
    if exact:
        lat = exact["latency_us"]
        seconds = exact["duration_us"] / 1e6
        errors = exact["errors"]
        result.update(
            {
                "requests": exact["requests"],
                "duration_s": round(seconds, 3),
                "requests_per_s": round(exact["requests"] / seconds, 1),
                "errors": errors,
                "failed_requests": sum(errors.values()),
                "latency_ms": {
                    k: round(lat[k] / 1000, 3)
                    for k in ("min", "mean", "p50", "p75", "p90", "p99", "p999", "max")
                },
            }
        )
    else:  # no Lua summary: fall back to the text report
        result.update(
            {
                "requests": parsed.get("requests"),
                "requests_per_s": parsed.get("requests_per_s"),
                "failed_requests": parsed.get("non_2xx_3xx"),
                "latency_ms": {"p50": parsed.get("p50_ms"), "p99": parsed.get("p99_ms")},
            }
        )
    return result
