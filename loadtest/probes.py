"""End-to-end visibility probes: submit a score for a fresh player through the API, then poll
that player's rank through the API until it answers 200. The time from sending the
submission to that answer is what a player waits to see their score on the board."""

from __future__ import annotations

import asyncio
import time

import httpx
import msgspec

from loadtest.records import Visibility
from loadtest.stats import percentile
from service import background


class Probes:
    """`rate_per_s` probes a second on `board` until `stop()`; outstanding probes then get
    `timeout_s` to become visible."""

    def __init__(
        self,
        base_url: str,
        board: str,
        key: str,
        tag: str,
        rate_per_s: float = 4.0,
        poll_ms: float = 20.0,
        timeout_s: float = 30.0,
    ) -> None:
        self.base_url = base_url
        self.board = board
        self.key = key
        self.tag = tag
        self.rate_per_s = rate_per_s
        self.poll_s = poll_ms / 1000
        self.timeout_s = timeout_s
        self.sent = 0
        self.accepted = 0
        self.seen: list[tuple[float, float]] = []  # (seconds into the run, latency ms)
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._encoder = msgspec.json.Encoder()

    def start(self) -> Probes:
        self._t0 = time.perf_counter()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"authorization": f"Bearer {self.key}"},
            timeout=10,
            limits=httpx.Limits(max_connections=32),
        )
        self._runner = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        n = 0
        next_at = time.perf_counter()
        while not self._stop.is_set():
            task = asyncio.create_task(self._probe(f"probe-{self.tag}-{n}", n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
            next_at += 1 / self.rate_per_s
            delay = max(0.0, next_at - time.perf_counter())
            await background.wait_set(self._stop, delay)

    async def _probe(self, player: str, n: int) -> None:
        body = self._encoder.encode(
            {"player_id": player, "score": 1_000 + n, "event_id": f"{player}-e"}
        )
        sent = time.perf_counter()
        self.sent += 1
        try:
            answer = await self._http.post(f"/v1/leaderboards/{self.board}/scores", content=body)
        except httpx.HTTPError:
            return
        if answer.status_code != 202:
            return
        self.accepted += 1
        path = f"/v1/leaderboards/{self.board}/players/{player}"
        while time.perf_counter() - sent < self.timeout_s:
            try:
                if (await self._http.get(path)).status_code == 200:
                    now = time.perf_counter()
                    self.seen.append((round(sent - self._t0, 2), round((now - sent) * 1000, 1)))
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(self.poll_s)

    async def stop(self) -> Visibility:
        """Stop sending; wait for the outstanding probes; the percentiles."""
        self._stop.set()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.timeout_s + 10)
        await self._http.aclose()
        ms = [m for _, m in self.seen]
        return Visibility(
            sent=self.sent,
            accepted=self.accepted,
            visible=len(ms),
            poll_ms=self.poll_s * 1000,
            p50_ms=percentile(ms, 50),
            p95_ms=percentile(ms, 95),
            p99_ms=percentile(ms, 99),
            max_ms=max(ms) if ms else None,
            samples=sorted(self.seen),
        )
