"""CPU time and memory of process trees, read from /proc (Linux).

A `Group` is a named set of processes: roots and, with `tree`, every descendant found at
each reading (granian workers, Postgres backends that connect later). CPU is counted per
pid from the first time the pid is seen, so a backend born during a run counts whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PROC = Path("/proc")


@dataclass(frozen=True)
class Group:
    """Processes measured together; `cores`: how many cores they can keep busy at most
    (a single-threaded server: 1), so a figure can say which group was the limit."""

    name: str
    roots: tuple[int, ...]
    tree: bool = True
    cores: float = 1.0


@dataclass(frozen=True)
class Stat:
    """What /proc/<pid>/stat says of one process."""

    pid: int
    ppid: int
    ticks: int  # utime + stime
    rss_bytes: int


def parse_stat(pid: int, line: str) -> Stat:
    """One /proc/<pid>/stat line (comm may hold spaces and parentheses: split at the last)."""
    rest = line.rpartition(")")[2].split()
    # rest[0] is field 3 (state): utime is field 14, stime 15, rss 24.
    return Stat(pid, int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[21]) * PAGE)


def read_stat(pid: int) -> Stat | None:
    try:
        return parse_stat(pid, (PROC / str(pid) / "stat").read_text())
    except (OSError, IndexError, ValueError):
        return None


def all_stats() -> dict[int, Stat]:
    """Every process we can read."""
    out: dict[int, Stat] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                out[stat.pid] = stat
    return out


def members(group: Group, stats: dict[int, Stat]) -> list[int]:
    """The group's live pids: its roots and, for a tree, their descendants."""
    found = [p for p in group.roots if p in stats]
    if not group.tree:
        return found
    children: dict[int, list[int]] = {}
    for s in stats.values():
        children.setdefault(s.ppid, []).append(s.pid)
    out: list[int] = []
    todo = list(found)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def memory_bytes(pid: int, fallback: int) -> int:
    """Proportional set size: shared pages (Postgres' shared buffers) split between the
    processes that map them, so a group's sum is not counted once per backend."""
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return fallback


def machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


class CpuMeter:
    """CPU seconds of each group since the meter started, and memory on demand."""

    def __init__(self, groups: Iterable[Group]) -> None:
        self.groups = list(groups)
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._owner: dict[int, str] = {}
        self._machine0 = machine_ticks()
        self._machine = self._machine0
        self.read(start=True)

    def read(self, start: bool = False) -> dict[str, list[int]]:
        """Take a reading; the live pids of each group."""
        stats = all_stats()
        live: dict[str, list[int]] = {}
        for g in self.groups:
            pids = members(g, stats)
            live[g.name] = pids
            for pid in pids:
                if pid not in self._first:
                    # seen at the start: count from now; born later: count all its life
                    self._first[pid] = stats[pid].ticks if start else 0
                    self._owner[pid] = g.name
                self._last[pid] = stats[pid].ticks
        self._machine = machine_ticks()
        return live

    def cpu_seconds(self) -> dict[str, float]:
        """Per group, CPU seconds between the start and the last reading."""
        out = {g.name: 0.0 for g in self.groups}
        for pid, last in self._last.items():
            out[self._owner[pid]] += (last - self._first[pid]) / CLK_TCK
        return out

    def machine_busy_share(self) -> float:
        """Share (0..1) of all CPUs' time that was busy between start and last reading."""
        busy = self._machine[0] - self._machine0[0]
        total = self._machine[1] - self._machine0[1]
        return busy / total if total > 0 else 0.0

    def memory_mib(self) -> dict[str, float]:
        """Per group, its processes' proportional memory now, in MiB."""
        stats = all_stats()
        out: dict[str, float] = {}
        for g in self.groups:
            total = sum(memory_bytes(p, stats[p].rss_bytes) for p in members(g, stats))
            out[g.name] = round(total / 2**20, 1)
        return out


def _listen_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def listening_pids(port: int) -> tuple[int, ...]:
    """Top-most pids holding a listening socket on `port` on this host (for servers this
    harness did not start); () when none is visible."""
    wanted = {f"socket:[{i}]" for i in _listen_inodes(port)}
    if not wanted:
        return ()
    holders: set[int] = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    holders.add(int(entry.name))
                    break
        except OSError:
            continue
    stats = all_stats()
    return tuple(sorted(p for p in holders if p in stats and stats[p].ppid not in holders))
