"""py-spy sampling of a running process, summarised as text (self and inclusive time)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    """The py-spy binary beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def start(pid: int, seconds: int, out: Path, subprocesses: bool = False) -> subprocess.Popen[bytes]:
    """Record `seconds` of samples of pid (and its children) as collapsed stacks."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    cmd = [
        binary, "record", "--pid", str(pid), "--duration", str(seconds),
        "--format", "raw", "--output", str(out), "--nonblocking", "--rate", "200",
    ]  # fmt: skip
    if subprocesses:
        cmd.append("--subprocesses")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)": merge lines of one function
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    short = "/".join(file.split("/")[-2:]) if file else ""
    return f"{name} ({short})" if short else name


def summarize(path: Path, top: int = 20) -> dict[str, Any]:
    """Top functions by self samples and by inclusive samples of a raw py-spy file."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return {"error": str(exc)}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if f]
        # py-spy puts "process 123:..." and thread names first
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "share": round(n / total, 3) if total else 0}
            for name, n in counter.most_common(top)
        ]

    return {"samples": total, "self": table(self_time), "inclusive": table(inclusive)}


def finish(proc: subprocess.Popen[bytes], out: Path, timeout_s: float = 60) -> dict[str, Any]:
    """Wait for py-spy, then summarise what it recorded."""
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    summary = summarize(out)
    summary["raw_file"] = str(out)
    if proc.returncode:
        summary["py_spy_stderr"] = err.decode(errors="replace")[-2000:]
    return summary


def render(summary: dict[str, Any], top: int = 12) -> str:
    """A short text table for the console."""
    if "error" in summary:
        return f"profile: {summary['error']}"
    lines = [f"profile: {summary['samples']} samples"]
    for kind in ("self", "inclusive"):
        lines.append(f"  top by {kind} time:")
        for row in summary[kind][:top]:
            lines.append(f"    {row['share'] * 100:5.1f}%  {row['function']}")
    return "\n".join(lines)
