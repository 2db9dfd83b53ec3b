"""Circuit breakers: after repeated failures a dependency is skipped for a moment.

While Redis or PostgreSQL is down, every call to it would wait out its connect timeout
and retries before failing; with the breaker open, callers fail at once (503, or a read
goes straight to the other store) and one call per cool-down probes for recovery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from redis.exceptions import ConnectionError as RedisConnectionError


def pool_exhausted(exc: BaseException) -> bool:
    """redis-py's pool had no free connection within its timeout: this process is busy,
    which says nothing about Redis, so breakers must not count it as a failure."""
    return isinstance(exc, RedisConnectionError) and str(exc) == "No connection available."


class BreakerOpen(Exception):
    """The dependency failed repeatedly and is being skipped."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is unavailable (circuit open)")
        self.name = name


@dataclass
class Breaker:
    """Opens after `threshold` failures in a row; half-opens after `cooldown_s`."""

    name: str
    threshold: int = 5
    cooldown_s: float = 2.0
    failures: int = 0
    opened_at: float = field(default=float("-inf"))

    @property
    def skipping(self) -> bool:
        """Open and still cooling down (asks without taking the probe)."""
        return (
            self.failures >= self.threshold and time.monotonic() - self.opened_at < self.cooldown_s
        )

    def allow(self) -> bool:
        """May a call go to the dependency now? (After the cool-down: one probe at a time.)"""
        if self.failures < self.threshold:
            return True
        now = time.monotonic()
        if now - self.opened_at >= self.cooldown_s:
            self.opened_at = now  # this caller probes; the others keep failing fast
            return True
        return False

    def check(self) -> None:
        """Raise BreakerOpen instead of calling a dependency that is being skipped."""
        if not self.allow():
            raise BreakerOpen(self.name)

    def success(self) -> None:
        """The dependency answered."""
        self.failures = 0

    def failure(self) -> None:
        """The dependency failed (connection refused, timed out...)."""
        self.failures += 1
        if self.failures == self.threshold:
            self.opened_at = time.monotonic()


@dataclass
class Breakers:
    """One breaker per dependency of an API process."""

    redis: Breaker = field(default_factory=lambda: Breaker("redis"))
    postgres: Breaker = field(default_factory=lambda: Breaker("postgres"))

    def of(self, name: str | None) -> Breaker | None:
        """The breaker of `redis` or `postgres`."""
        return {"redis": self.redis, "postgres": self.postgres}.get(name or "")
