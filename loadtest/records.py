"""Typed records of a `python -m loadtest all|soak` run, as written to its results JSON and
read back by the Markdown summary and the plot."""

from __future__ import annotations

from typing import Any

import msgspec


class Latency(msgspec.Struct, frozen=True):
    """Request latency in ms (wrk's HdrHistogram: exact percentiles)."""

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    p999: float | None = None
    max: float | None = None


class Usage(msgspec.Struct, frozen=True):
    """What the processes used during a measured window. CPU in % of one core (200 = two
    cores busy); `other` is the machine's busy time nobody in `cpu_pct` accounts for."""

    seconds: float
    cpu_pct: dict[str, float]
    machine_pct: float
    cores: int
    memory_mib_start: dict[str, float]
    memory_mib_end: dict[str, float]
    redis_used_mib_start: float | None
    redis_used_mib_end: float | None
    stream_length_max: int
    stream_length_end: int
    lag_max: int | None
    lag_end: int | None
    pending_end: int


class Visibility(msgspec.Struct, frozen=True):
    """End-to-end probes: submit for a fresh player, poll its rank until it answers 200."""

    sent: int
    accepted: int
    visible: int
    poll_ms: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    samples: list[tuple[float, float]] = []  # (seconds into the run, ms): for the soak timeline


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One measured wrk run of one scenario at one size and connection count."""

    scenario: str
    label: str
    curve: str  # "size", "connections", "both" or "soak"
    players: int
    connections: int
    threads: int
    duration_s: float
    requests: int
    requests_per_s: float
    submissions_per_s: float | None
    # submissions wrk started (and probes answered 202) vs events the consumers recorded
    # meanwhile: equal but for requests cut off by the end of the run; fewer recorded would
    # mean event_ids collided (or were lost)
    submissions_sent: int = 0
    events_recorded: int | None = None
    errors: dict[str, int]
    failed_requests: int
    latency_ms: Latency
    kinds: dict[str, int]
    usage: Usage
    drain_s: float | None
    quiet_wait_s: float = 0.0  # waited before the run for the previous one's work to end
    limited_by: str
    visibility: Visibility | None = None
    command: str = ""


class DataRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A prepared dataset: Postgres rows by COPY, sorted sets by the rebuild."""

    players: int
    boards: list[str]
    windows: list[str]
    ranked_entries: int
    postgres_copy_s: float
    rebuild_s: float
    rebuild_sets: list[dict[str, Any]]
    settle_s: float  # VACUUM, CHECKPOINT and Redis' AOF rewrite after the load
    redis_used_bytes: int
    redis_bytes_per_entry: float
    key_bytes: dict[str, int]  # MEMORY USAGE estimates of one board's keys
    sanity: dict[str, Any]


class SoakPoint(msgspec.Struct, frozen=True):
    """One reading during the soak."""

    t_s: float
    memory_mib: dict[str, float]
    redis_used_mib: float | None
    stream_length: int
    lag: int | None
    pending: int


class Growth(msgspec.Struct, frozen=True):
    """Memory of one process group (or Redis' own accounting) over the soak."""

    name: str
    start_mib: float
    end_mib: float
    max_mib: float
    growth_mib: float
    per_hour_mib: float


class SoakRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The mixed profile held for a long while."""

    run: RunRecord
    points: list[SoakPoint]
    growth: list[Growth]
    stream_length_min: int
    stream_length_max: int


class SuiteResult(msgspec.Struct, kw_only=True):
    """Everything one `python -m loadtest all` (or `soak`) run measured."""

    scenario: str  # "all" or "soak"
    started_at: str
    finished_at: str = ""
    machine: dict[str, Any]
    load: dict[str, Any]
    parameters: dict[str, Any]
    load_generator: str
    setup: list[str] = []  # how the system under test ran, one line each
    plan: list[str] = []
    datasets: list[DataRecord] = []
    runs: list[RunRecord] = []
    soak: SoakRecord | None = None
    plot: str | None = None
    notes: list[str] = []
