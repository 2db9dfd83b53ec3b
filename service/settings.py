"""Typed settings, read once from `RANKSTREAM_*` environment variables.

Nothing else in the code base reads the environment: every process builds one
`Settings` with `Settings.from_env()` and passes it down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

PREFIX = "RANKSTREAM_"

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class SettingsError(ValueError):
    """A `RANKSTREAM_*` variable has a value that cannot be used."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of rankstream; see `.env.example` for one line on each."""

    # Where the servers are. Empty means: start the embedded ones under data_dir.
    redis_url: str = ""
    database_url: str = ""
    data_dir: str = ".rankstream"
    embedded_redis_port: Port = 0
    embedded_postgres_port: Port = 0
    embedded_postgres_fsync: bool = True
    # `always`: an accepted submission survives even a crash of the Redis host.
    embedded_redis_appendfsync: Literal["always", "everysec"] = "always"

    # HTTP API.
    host: str = "127.0.0.1"
    port: Port = 8000
    api_workers: Positive = 1
    public_reads: bool = True
    cache_max_age: NonNegative = 1
    page_cache_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    hot_reads: bool = True
    bootstrap_admin_key: str = ""
    key_cache_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    max_body_bytes: Positive = 1_048_576

    # Pools. redis-py's asyncio pool raises when full, so it is sized and blocking.
    redis_pool_size: Positive = 64
    redis_pool_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    pg_pool_min: NonNegative = 1
    pg_pool_max: Positive = 10

    # Stream and consumers.
    stream_key: str = "rankstream:submissions"
    consumer_group: str = "rankstream"
    consumer_workers: Positive = 1
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    batch_block_ms: Positive = 100
    # Transactions a consumer runs side by side per batch, events split by player.
    ingest_lanes: Annotated[int, msgspec.Meta(ge=1, le=16)] = 2
    claim_idle_ms: Positive = 15_000
    claim_interval_ms: Positive = 1_000
    max_deliveries: Positive = 5
    dead_letter_stream: str = "rankstream:dead-letters"
    max_stream_lag: Positive = 200_000
    trim_interval_ms: Positive = 1_000
    wait_timeout_ms: Positive = 2_000
    coldstart_interval_ms: Positive = 2_000

    # Rankings.
    retention_periods: NonNegative = 2
    board_cache_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0

    # Rate limits ("<count>/<second|minute|hour|day>", several joined by ";"), Redis-backed.
    rate_limits_enabled: bool = True
    # The sliding window counter weighs the previous window's count by its overlap with the
    # sliding one: O(1) in Redis, 35 us of Redis CPU a check against the moving window's
    # 56-59 us (a binary search over each client's list of hit times), with no burst of twice
    # the limit across a window's edge as the fixed window allows (`loadtest limiter`).
    rate_limit_strategy: Literal["sliding-window-counter", "moving-window", "fixed-window"] = (
        "sliding-window-counter"
    )
    rate_limit_submissions: str = "60/minute"
    rate_limit_rank_lookups: str = "300/minute"
    rate_limit_board_queries: str = "600/minute"
    rate_limit_per_key: str = "6000/minute"
    # Every route that needs the admin role, per admin key: operations are heavy (rebuilds,
    # erasure, board deletion), so a runaway script must not queue them without bound.
    rate_limit_admin: str = "120/minute"
    trusted_proxies: str = ""
    client_ip_header: str = "x-forwarded-for"

    # Request hygiene.
    cors_origins: str = ""
    hsts_max_age: NonNegative = 31_536_000

    # Observability.
    metrics_dir: str = ""
    # Port (on `host`) where `rankstream consume` serves its own /metrics; 0: off. One port
    # per `rankstream consume`, whatever `--workers`: with it set, that process only
    # supervises and serves, and its workers (one or more) write prometheus-client
    # multiprocess files into a folder of their own, which it adds up at each scrape. That
    # folder is private (not metrics_dir), so consumer series are never also counted by an
    # API's /metrics, under `rankstream up` included.
    consumer_metrics_port: Port = 0

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `RANKSTREAM_*` variables; raise SettingsError on bad ones."""
        env = os.environ if environ is None else environ
        known = {name.upper(): name for name in cls.__struct_fields__}
        raw: dict[str, str] = {}
        unknown: list[str] = []
        for key, value in env.items():
            if not key.startswith(PREFIX):
                continue
            field = known.get(key[len(PREFIX) :])
            if field is None:
                unknown.append(key)
            else:
                raw[field] = value
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(_explain(str(exc), raw)) from None

    @property
    def metrics_path(self) -> str:
        """Folder of prometheus-client's multiprocess files (default: <data_dir>/metrics)."""
        return self.metrics_dir or os.path.join(self.data_dir, "metrics")

    @property
    def embedded(self) -> bool:
        """True when at least one server must come from the embedded launcher."""
        return not (self.redis_url and self.database_url)


def _explain(message: str, raw: Mapping[str, str]) -> str:
    """Turn msgspec's `... - at `$.port`` into a message naming the variable."""
    marker = "at `$."
    if marker in message:
        field = message.split(marker, 1)[1].rstrip("`")
        var = PREFIX + field.upper()
        return f"{var}={raw.get(field, '')!r}: {message.split(' - at ')[0]}"
    return message
