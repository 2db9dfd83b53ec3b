"""`/metrics`: the named series, added up over two granian workers and a consumer process
(prometheus-client multiprocess mode), and deploy/ only uses series that exist."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from service import metrics, poolstats
from service.settings import Settings
from service.state import Services
from tests.support import ADMIN, drained
from tests.test_ratelimit import free_port, start_api

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SCORES = "/v1/leaderboards/{board_id}/scores"
TOP = "/v1/leaderboards/{board_id}/top"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    hits = [v for (n, ls), v in found.items() if n == name and wanted <= set(ls)]
    assert hits, f"no sample {name}{labels}"
    return sum(hits)


def _requests_arrived(found: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> bool:
    try:
        return (
            value(found, "rankstream_http_requests_total", route=SCORES, status="202") == 10
            and value(found, "rankstream_http_requests_total", route=SCORES, status="422") == 1
            and value(found, "rankstream_http_request_duration_seconds_count", route=TOP) == 3
        )
    except AssertionError:  # a series not there yet
        return False


async def test_series_after_traffic_across_workers_and_consumer(
    spawn: Callable[..., Any], tmp_path: Path, settings: Settings, redis: Redis
) -> None:
    folder = tmp_path / "metrics"
    url = await start_api(spawn, tmp_path)
    spawn("consume", env_overrides={"PROMETHEUS_MULTIPROC_DIR": str(folder),
                                    "RANKSTREAM_METRICS_DIR": str(folder)})  # fmt: skip
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=no_reuse, timeout=10) as http:
        assert (
            await http.post("/v1/leaderboards", json={"id": "m"}, headers=ADMIN)
        ).status_code == 201
        for i in range(10):
            answer = await http.post(
                "/v1/leaderboards/m/scores", json={"player_id": f"p{i}", "score": i}, headers=ADMIN
            )
            assert answer.status_code == 202
        batch = [{"board_id": "m", "player_id": f"b{i}", "score": i} for i in range(5)]
        answer = await http.post("/v1/scores/batch", json={"submissions": batch}, headers=ADMIN)
        assert answer.status_code == 202
        bad = await http.post(
            "/v1/leaderboards/m/scores", json={"player_id": "p", "score": "1"}, headers=ADMIN
        )
        assert bad.status_code == 422
        for _ in range(3):
            assert (await http.get("/v1/leaderboards/m/top")).status_code == 200
        await redis.xadd(settings.stream_key, {b"junk": b"not an event"})
        await drained(redis, settings)
        # Each worker hands its request counts over once a second (service.metrics): wait
        # until the other worker's have arrived, then check everything.
        deadline = time.monotonic() + 5
        while True:
            answer = await http.get("/metrics")
            found = samples(answer.text)
            if _requests_arrived(found) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert answer.headers["content-type"].startswith("text/plain")
    assert value(found, "rankstream_http_requests_total", route=SCORES, status="202") == 10
    assert value(found, "rankstream_http_requests_total", route=SCORES, status="422") == 1
    assert value(found, "rankstream_http_request_duration_seconds_count", route=TOP) == 3
    assert (
        value(found, "rankstream_http_request_duration_seconds_bucket", route=TOP, le="+Inf") == 3
    )
    assert value(found, "rankstream_submissions_accepted_total") == 15
    assert value(found, "rankstream_submissions_rejected_total", status="422") == 1
    assert value(found, "rankstream_consumer_events_total", kind="new") == 15
    assert value(found, "rankstream_consumer_batch_size_count") >= 1
    assert value(found, "rankstream_consumer_batch_size_sum") == 16  # 15 events + the junk
    assert value(found, "rankstream_consumer_batch_duration_seconds_count") >= 1
    assert value(found, "rankstream_dead_letters_total", reason="undecodable") == 1
    assert value(found, "rankstream_stream_length") >= 0
    assert value(found, "rankstream_consumer_lag") == 0
    assert value(found, "rankstream_consumer_pending") == 0
    assert_pool_series(found, settings, processes=2)


def assert_pool_series(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], settings: Settings, processes: int
) -> None:
    """Pool gauges of each API worker (label `pid`), none of the consumer, with values that
    fit the pools' bounds."""
    by_pid: dict[str, dict[tuple[str, str, str], float]] = {}
    for (name, labels), number in found.items():
        if name in ("rankstream_pool_connections", "rankstream_pool_max_connections"):
            tags = dict(labels)
            key = (name, tags["pool"], tags.get("state", ""))
            by_pid.setdefault(tags["pid"], {})[key] = number
    assert len(by_pid) == processes, by_pid
    for series in by_pid.values():
        redis_in_use = series[("rankstream_pool_connections", "redis", "in_use")]
        redis_idle = series[("rankstream_pool_connections", "redis", "idle")]
        redis_max = series[("rankstream_pool_max_connections", "redis", "")]
        pg_in_use = series[("rankstream_pool_connections", "postgres", "in_use")]
        pg_idle = series[("rankstream_pool_connections", "postgres", "idle")]
        pg_max = series[("rankstream_pool_max_connections", "postgres", "")]
        assert redis_max == settings.redis_pool_size
        assert 0 <= redis_in_use <= redis_max and 0 <= redis_idle <= redis_max
        assert redis_in_use + redis_idle <= redis_max
        assert pg_max == settings.pg_pool_max
        assert settings.pg_pool_min <= pg_in_use + pg_idle <= pg_max
        assert pg_in_use >= 0 and pg_idle >= 0
    # Every worker opened Redis connections for the traffic; they wait in the pools now.
    total_redis = sum(
        v for (n, ls), v in found.items()
        if n == "rankstream_pool_connections" and ("pool", "redis") in ls
    )  # fmt: skip
    assert total_redis >= 1


async def test_pool_gauges_follow_the_connections_held(
    client: AsyncTestClient,  # type: ignore[type-arg]
    settings: Settings,
) -> None:
    services: Services = client.app.state.services
    redis_pool = services.redis.connection_pool

    async def hold() -> tuple[Any, Any]:
        return await services.pg.acquire(), await redis_pool.get_connection()

    async def let_go(pg_connection: Any, redis_connection: Any) -> None:
        await redis_pool.release(redis_connection)
        await services.pg.release(pg_connection)

    # The app runs on the test client's own event loop (a portal thread): its pools must
    # be used from there.
    portal = client.blocking_portal
    held = portal.call(hold)
    try:
        busy = samples((await client.get("/metrics")).text)
    finally:
        portal.call(let_go, *held)
    free = samples((await client.get("/metrics")).text)
    assert value(busy, "rankstream_pool_connections", pool="redis", state="in_use") == 1
    assert value(busy, "rankstream_pool_connections", pool="postgres", state="in_use") == 1
    assert value(free, "rankstream_pool_connections", pool="redis", state="in_use") == 0
    assert value(free, "rankstream_pool_connections", pool="postgres", state="in_use") == 0
    assert value(free, "rankstream_pool_connections", pool="redis", state="idle") >= 1
    assert value(free, "rankstream_pool_connections", pool="postgres", state="idle") >= 1
    assert value(free, "rankstream_pool_max_connections", pool="redis") == settings.redis_pool_size
    assert value(free, "rankstream_pool_max_connections", pool="postgres") == settings.pg_pool_max


WRITE_POOL_GAUGE = """
import sys
from service import metrics
metrics.POOL_MAX.labels("redis").set(7)
print("set", flush=True)
sys.stdin.read()
"""


def test_pool_series_of_a_process_that_is_gone_are_forgotten(tmp_path: Path) -> None:
    def exposed() -> str:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
        return generate_latest(registry).decode()

    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITE_POOL_GAUGE],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert writer.stdout is not None and writer.stdin is not None
    assert writer.stdout.readline() == b"set\n"
    series = f'rankstream_pool_max_connections{{pid="{writer.pid}",pool="redis"}} 7.0'
    assert poolstats.forget_dead(str(tmp_path)) == []  # alive: kept
    assert series in exposed()
    writer.stdin.close()
    assert writer.wait(10) == 0
    assert poolstats.forget_dead(str(tmp_path)) == [writer.pid]
    assert "rankstream_pool_max_connections{" not in exposed()


async def test_standalone_consumer_serves_its_own_metrics(
    client: AsyncTestClient,  # type: ignore[type-arg]
    spawn: Callable[..., Any],
    redis: Redis,
    settings: Settings,
) -> None:
    port = free_port()
    spawn(
        "consume", "--workers", "2",
        env_overrides={"RANKSTREAM_CONSUMER_METRICS_PORT": str(port)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    assert (
        await client.post("/v1/leaderboards", json={"id": "c"}, headers=ADMIN)
    ).status_code == 201
    batch = [{"board_id": "c", "player_id": f"b{i}", "score": i} for i in range(8)]
    answer = await client.post("/v1/scores/batch", json={"submissions": batch}, headers=ADMIN)
    assert answer.status_code == 202
    for i in range(4):
        answer = await client.post(
            "/v1/leaderboards/c/scores", json={"player_id": f"p{i}", "score": i}, headers=ADMIN
        )
        assert answer.status_code == 202
    await drained(redis, settings)
    # A batch's metrics are recorded just after its acknowledgement: poll for them.
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                answer = await http.get(url)
            except httpx.TransportError:  # not listening yet
                await asyncio.sleep(0.1)
                continue
            assert answer.status_code == 200
            found = samples(answer.text)
            if found.get(("rankstream_consumer_events_total", frozenset({("kind", "new")}))) == 12:
                break
            await asyncio.sleep(0.1)
    assert value(found, "rankstream_consumer_events_total", kind="new") == 12
    assert value(found, "rankstream_consumer_batch_size_sum") == 12
    assert value(found, "rankstream_consumer_batch_size_count") >= 1
    assert value(found, "rankstream_consumer_batch_duration_seconds_count") >= 1
    # Only the consumer's processes: the API's counters (in this test process) are not there.
    assert value(found, "rankstream_submissions_accepted_total") == 0


async def test_in_process_registry_and_dependency_errors(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    metrics.dependency_error("postgres", "test")
    await client.get("/health/live")
    text = (await client.get("/metrics")).text
    assert 'rankstream_dependency_errors_total{dependency="postgres",where="test"}' in text
    assert "rankstream_http_requests_total" in text
    assert "rankstream_consumer_lag 0.0" in text


def known_series() -> set[str]:
    names = {"rankstream_stream_length", "rankstream_consumer_lag", "rankstream_consumer_pending"}
    for attribute in vars(metrics).values():
        if not isinstance(attribute, MetricWrapperBase):
            continue
        for family in attribute.describe():
            if family.type == "counter":
                names |= {family.name + "_total", family.name}
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
            else:
                names.add(family.name)
    return names


def test_deploy_uses_only_series_that_exist() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["metrics_path"] == "/metrics"
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert {"RankstreamConsumerLagHigh", "RankstreamErrorRateHigh", "RankstreamP99LatencyHigh",
            "RankstreamDeadLetters"} <= set(alerts)  # fmt: skip
    dashboard = (DEPLOY / "grafana" / "rankstream-dashboard.json").read_text()
    used = set(re.findall(r"rankstream_[a-z_]+", " ".join(alerts.values()) + dashboard))
    assert used, "no series referenced"
    unknown = used - known_series()
    assert not unknown, unknown


def test_buffered_series_add_up_like_direct_updates() -> None:
    registry = CollectorRegistry()
    buckets = (1.0, 2.0, 5.0)
    direct = Histogram("direct_seconds", "d", ["route"], buckets=buckets, registry=registry)
    held = Histogram("held_seconds", "h", ["route"], buckets=buckets, registry=registry)
    count = Counter("held_requests", "c", ["route"], registry=registry)
    buffered = metrics.BufferedHistogram(held.labels("r"))
    counter = metrics.BufferedCounter(count.labels("r"))
    for value in (0.5, 1.0, 1.5, 2.0, 4.9, 5.0, 7.0):  # values on a bound belong to its bucket
        direct.labels("r").observe(value)
        buffered.observe(value)
        counter.inc()
    assert registry.get_sample_value("held_requests_total", {"route": "r"}) == 0.0  # held back
    buffered.flush()
    counter.flush()
    buffered.flush()  # nothing new: changes nothing
    for le in ("1.0", "2.0", "5.0", "+Inf"):
        labels = {"route": "r", "le": le}
        assert registry.get_sample_value("held_seconds_bucket", labels) == (
            registry.get_sample_value("direct_seconds_bucket", labels)
        ), le
    assert registry.get_sample_value("held_seconds_sum", {"route": "r"}) == (
        registry.get_sample_value("direct_seconds_sum", {"route": "r"})
    )
    assert registry.get_sample_value("held_seconds_count", {"route": "r"}) == 7
    assert registry.get_sample_value("held_requests_total", {"route": "r"}) == 7
