"""What limited a measured figure, read off the CPU each process group used.

A group is the limit when it used (nearly) all the cores it can use: one for Redis and a
single consumer process, one per granian worker, one per wrk thread. Otherwise, when the
machine as a whole was (nearly) all busy, the shared CPU was; otherwise nothing was
CPU-bound and the figure is set by round trips (few connections) or by waiting.
"""

from __future__ import annotations

from collections.abc import Mapping

from loadtest.records import Usage

SATURATED = 0.85
OUTSIDE_NOTE_PCT = 25.0


def limited_by(
    usage: Usage,
    capacity: Mapping[str, float],
    connections: int,
    failed: int = 0,
    requests: int = 0,
) -> str:
    """One line: the limiting process (or the machine, or nothing), then caveats."""
    cores = usage.cores
    cpu = usage.cpu_pct

    def share(name: str) -> float:
        return cpu.get(name, 0.0) / (min(capacity[name], cores) * 100)

    known = [n for n in capacity if n in cpu]
    busiest = max(known, key=share) if known else None
    if busiest is not None and share(busiest) >= SATURATED:
        cap = min(capacity[busiest], cores)
        verdict = f"{busiest} CPU ({cpu[busiest]:.0f}% of {cap:g} core{'s' if cap != 1 else ''})"
    elif usage.machine_pct >= SATURATED * cores * 100:
        top = sorted(known, key=lambda n: -cpu[n])[:3]
        verdict = (
            f"machine CPU ({usage.machine_pct:.0f}% of {cores * 100}%: "
            + ", ".join(f"{n} {cpu[n]:.0f}%" for n in top)
            + ")"
        )
    else:
        verdict = (
            f"no process CPU-bound (machine {usage.machine_pct:.0f}% of {cores * 100}%): "
            f"round trips of {connections} connection{'s' if connections != 1 else ''}"
        )
    other = cpu.get("other", 0.0)
    if other >= OUTSIDE_NOTE_PCT:
        verdict += f"; processes outside the test took {other:.0f}% of a core"
    if requests and failed > 0.01 * requests:
        verdict += f"; {failed:,} failed requests"
    return verdict
