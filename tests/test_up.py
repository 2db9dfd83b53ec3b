"""`rankstream up` end to end, as real processes on a fresh data folder with no URLs set."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from service import apikeys, embedded

READY_WITHIN_S = 15.0
BOOTSTRAP_KEY = "rs_up-test-bootstrap-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    """True while pid runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _descendants(root: int) -> set[int]:
    """Every live process below root in the process tree."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return {pid for pid in found if _alive(pid)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _record(data_dir: Path, name: str) -> dict[str, int]:
    record: dict[str, int] = json.loads((data_dir / name / "server.json").read_text())
    return record


def _env(data_dir: Path) -> dict[str, str]:
    """The caller's environment without any RANKSTREAM_* variable, on data_dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKSTREAM_")}
    env["RANKSTREAM_DATA_DIR"] = str(data_dir)
    env["RANKSTREAM_BOOTSTRAP_ADMIN_KEY"] = BOOTSTRAP_KEY
    return env


def _rankstream(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
    )


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def _wait_ready(port: int, proc: subprocess.Popen[bytes], started_at: float) -> float:
    """Seconds from start until /health/ready answered 200; fails after READY_WITHIN_S."""
    url = f"http://127.0.0.1:{port}/health/ready"
    while time.monotonic() - started_at < READY_WITHIN_S:
        assert proc.poll() is None, f"rankstream up exited early with {proc.returncode}"
        try:
            status, body = _get(url)
        except OSError:
            status, body = 0, {}
        if status == 200:
            assert body["status"] == "ok"
            assert body["down"] == []
            return time.monotonic() - started_at
        time.sleep(0.1)
    pytest.fail(f"/health/ready did not answer 200 within {READY_WITHIN_S:.0f}s")


class Up:
    """A `rankstream up --no-consumer` process and what it printed."""

    def __init__(self, data_dir: Path, port: int, cwd: Path) -> None:
        self.port = port
        self.output = cwd / f"up-{port}.log"
        self.started_at = time.monotonic()
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "up", "--port", str(port), "--no-consumer"],
                env=_env(data_dir),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for_output(self, line: str, timeout_s: float = 5.0) -> bool:
        """True once the process has printed line (it polls readiness itself, a bit later)."""
        deadline = time.monotonic() + timeout_s
        while line not in self.text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return line in self.text()
            time.sleep(0.05)
        return True

    def terminate(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal its process group, as a terminal's Ctrl-C does; return its exit code."""
        os.killpg(self.proc.pid, sig)
        return self.proc.wait(60)

    def cleanup(self) -> None:
        """After a failure: stop this process and everything it started, whatever state."""
        if self.proc.poll() is not None:
            return
        tree = _descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in tree:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A folder to run in; the servers recorded under its data/ are stopped afterwards."""
    yield tmp_path
    embedded.stop_all(tmp_path / "data")


async def _bootstrap_key_role(database_url: str) -> tuple[str | None, list[str]]:
    conn = await asyncpg.connect(database_url)
    try:
        role = await conn.fetchval(
            "SELECT role FROM api_keys WHERE key_hash = $1", apikeys.digest(BOOTSTRAP_KEY)
        )
        plain = await conn.fetchval(
            "SELECT count(*) FROM api_keys WHERE key_hash = $1", BOOTSTRAP_KEY.encode()
        )
        assert plain == 0, "the bootstrap key is stored in clear"
        applied = await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
    finally:
        await conn.close()
    return role, [r["version"] for r in applied]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "ctrl-c"])
def test_up_on_a_fresh_machine_is_ready_fast_and_leaves_nothing(
    workdir: Path, sig: signal.Signals
) -> None:
    data_dir = workdir / "data"
    port = _free_port()
    up = Up(data_dir, port, workdir)
    try:
        took = _wait_ready(port, up.proc, up.started_at)
        assert took < READY_WITHIN_S
        assert _get(f"http://127.0.0.1:{port}/health/live") == (200, {"status": "ok"})
        assert up.wait_for_output(f"rankstream is up at http://127.0.0.1:{port}")

        redis, postgres = _record(data_dir, "redis"), _record(data_dir, "postgres")
        tree = _descendants(up.proc.pid)
        assert {redis["pid"], postgres["pid"]} <= tree, "up did not start its own servers"
        assert any("granian" in _cmdline(pid) for pid in tree)

        role, versions = asyncio.run(_bootstrap_key_role(embedded.postgres_url(postgres["port"])))
        assert role == "admin"
        assert versions and versions[0] == "001"
        assert "admin key:" not in up.text()  # the bootstrap key replaces generated ones

        assert up.terminate(sig) == 0, up.text()
        left = [f"{pid}: {_cmdline(pid)}" for pid in tree if _alive(pid)]
        assert left == []
        assert not _alive(redis["pid"])
        assert not _alive(postgres["pid"])
        for open_port in (port, redis["port"], postgres["port"]):
            assert not _port_open(open_port), f"port {open_port} still answers"
    finally:
        up.cleanup()


def test_up_reuses_running_servers_and_leaves_them_running(workdir: Path) -> None:
    data_dir = workdir / "data"
    env = _env(data_dir)
    started = _rankstream("servers", "start", env=env, cwd=workdir)
    assert started.returncode == 0, started.stderr
    redis, postgres = _record(data_dir, "redis"), _record(data_dir, "postgres")
    assert f"RANKSTREAM_REDIS_URL={embedded.redis_url(redis['port'])}" in started.stdout
    assert f"RANKSTREAM_DATABASE_URL={embedded.postgres_url(postgres['port'])}" in started.stdout
    assert _alive(redis["pid"]) and _alive(postgres["pid"])

    port = _free_port()
    up = Up(data_dir, port, workdir)
    try:
        _wait_ready(port, up.proc, up.started_at)
        assert _record(data_dir, "redis") == redis
        assert _record(data_dir, "postgres") == postgres
        tree = _descendants(up.proc.pid)
        assert redis["pid"] not in tree and postgres["pid"] not in tree
        assert any("granian" in _cmdline(pid) for pid in tree)

        assert up.terminate() == 0, up.text()
        assert [pid for pid in tree if _alive(pid)] == []
        assert not _port_open(port)
    finally:
        up.cleanup()

    # The servers it found are not its to stop.
    assert _alive(redis["pid"]) and _alive(postgres["pid"])
    assert _port_open(redis["port"]) and _port_open(postgres["port"])
    role, _ = asyncio.run(_bootstrap_key_role(embedded.postgres_url(postgres["port"])))
    assert role == "admin"

    stopped = _rankstream("servers", "stop", env=env, cwd=workdir)
    assert stopped.returncode == 0, stopped.stderr
    assert "redis" in stopped.stdout and "postgres" in stopped.stdout
    assert not _alive(redis["pid"])
    assert not _alive(postgres["pid"])
    again = _rankstream("servers", "stop", env=env, cwd=workdir)
    assert "nothing was running" in again.stdout


def test_up_on_a_taken_api_port_fails_clearly_and_starts_nothing(workdir: Path) -> None:
    data_dir = workdir / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _rankstream(
            "up", "--port", str(port), "--no-consumer", env=_env(data_dir), cwd=workdir
        )
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(data_dir.glob("*/server.json")), "servers were started for nothing"


def test_up_stops_the_servers_it_started_when_another_fails(workdir: Path) -> None:
    data_dir = workdir / "data"
    env = _env(data_dir)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        pg_port = taken.getsockname()[1]
        env["RANKSTREAM_EMBEDDED_POSTGRES_PORT"] = str(pg_port)
        result = _rankstream("up", "--port", str(_free_port()), env=env, cwd=workdir)
    assert result.returncode == 2
    assert f"port {pg_port}" in result.stderr and "in use" in result.stderr
    redis = _record(data_dir, "redis")  # Redis came up before PostgreSQL failed...
    assert not _alive(redis["pid"])  # ...and was stopped again
    assert not _port_open(redis["port"])
    assert not (data_dir / "postgres" / "server.json").exists()


def test_up_with_a_bad_setting_names_it(workdir: Path) -> None:
    env = _env(workdir / "data") | {"RANKSTREAM_BATCH_SIZE": "0"}
    result = _rankstream("up", "--no-consumer", env=env, cwd=workdir)
    assert result.returncode == 2
    assert "RANKSTREAM_BATCH_SIZE='0'" in result.stderr
    assert not (workdir / "data").exists()
