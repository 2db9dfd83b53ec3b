"""The embedded server launcher, on data folders of its own (not the session's servers)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from redis import Redis

from service import embedded


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


def _children(pid: int) -> set[int]:
    """Pids whose parent is pid."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains text (PostgreSQL's shows its data folder;
    valkey-server rewrites its own to `valkey-server 127.0.0.1:<port>`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _ensure_in_other_process(data_dir: Path, name: str) -> dict[str, object]:
    """What a second, separate process gets from ensure_<name>(data_dir)."""
    code = (
        "import json, sys; from pathlib import Path; from service import embedded; "
        f"s = embedded.ensure_{name}(Path(sys.argv[1])); "
        "print(json.dumps({'started': s.started, 'pid': s.pid, 'port': s.port, 'url': s.url}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)], capture_output=True, check=True, timeout=60
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data folder of this test; whatever it started there is stopped afterwards."""
    folder = tmp_path / "data"
    yield folder
    embedded.stop_all(folder)
    assert [pid for pid in _recorded_pids(folder) if _alive(pid)] == []
    assert _processes_mentioning(str(folder)) == []


def _recorded_pids(data_dir: Path) -> list[int]:
    """Pids that the launcher's server.json records under data_dir point at."""
    return [json.loads(record.read_text())["pid"] for record in data_dir.glob("*/server.json")]


def test_redis_start_reuse_stop_restart_keeps_data(data_dir: Path) -> None:
    first = embedded.ensure_redis(data_dir)
    assert first.started is True
    assert first.name == "redis"
    assert first.url == f"redis://127.0.0.1:{first.port}/0"
    assert _alive(first.pid)
    record = json.loads((data_dir / "redis" / "server.json").read_text())
    assert (record["pid"], record["port"]) == (first.pid, first.port)

    client = Redis.from_url(first.url)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("lazyfree-lazy-server-del") == {"lazyfree-lazy-server-del": "yes"}
        assert str(client.config_get("bind")["bind"]).split() == ["127.0.0.1"]
        client.set("kept", "across restarts")
        client.zadd("board", {"alice": 10, "bob": 7})
    finally:
        client.close()

    again = embedded.ensure_redis(data_dir)
    assert again.started is False
    assert (again.pid, again.port, again.url) == (first.pid, first.port, first.url)
    other = _ensure_in_other_process(data_dir, "redis")
    assert other == {"started": False, "pid": first.pid, "port": first.port, "url": first.url}

    embedded.stop(first)
    assert not _alive(first.pid)
    assert not _port_open(first.port)
    assert list((data_dir / "redis").rglob("*.aof")), "no AOF file was written"

    restarted = embedded.ensure_redis(data_dir)
    assert restarted.started is True
    assert restarted.pid != first.pid
    client = Redis.from_url(restarted.url)
    try:
        assert client.get("kept") == b"across restarts"
        assert client.zrange("board", 0, -1, withscores=True) == [(b"bob", 7.0), (b"alice", 10.0)]
    finally:
        client.close()
    embedded.stop(restarted)
    assert not _alive(restarted.pid)


async def test_postgres_start_reuse_stop_restart_keeps_data(data_dir: Path) -> None:
    first = embedded.ensure_postgres(data_dir, fsync=False)
    assert first.started is True
    assert first.name == "postgres"
    assert first.url == f"postgresql://postgres@127.0.0.1:{first.port}/rankstream"
    workers = _children(first.pid)
    assert workers, "a running PostgreSQL has background processes"

    conn = await asyncpg.connect(first.url)
    try:
        assert await conn.fetchval("SELECT current_database()") == "rankstream"
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        await conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text NOT NULL)")
        await conn.execute("INSERT INTO kept VALUES (1, 'across restarts')")
    finally:
        await conn.close()

    again = embedded.ensure_postgres(data_dir, fsync=False)
    assert again.started is False
    assert (again.pid, again.port, again.url) == (first.pid, first.port, first.url)
    other = _ensure_in_other_process(data_dir, "postgres")
    assert other == {"started": False, "pid": first.pid, "port": first.port, "url": first.url}

    assert first.pid in _processes_mentioning(str(data_dir))
    embedded.stop(first)
    assert not _alive(first.pid)
    assert [pid for pid in workers if _alive(pid)] == []
    assert not _port_open(first.port)
    assert _processes_mentioning(str(data_dir)) == []

    restarted = embedded.ensure_postgres(data_dir, fsync=False)
    assert restarted.started is True
    assert restarted.pid != first.pid
    conn = await asyncpg.connect(restarted.url)
    try:
        assert await conn.fetch("SELECT id, note FROM kept") == [(1, "across restarts")]
    finally:
        await conn.close()
    embedded.stop(restarted)
    assert not _alive(restarted.pid)


def test_stop_all_stops_what_the_records_point_at(data_dir: Path) -> None:
    redis = embedded.ensure_redis(data_dir)
    postgres = embedded.ensure_postgres(data_dir, fsync=False)
    assert _alive(redis.pid) and _alive(postgres.pid)
    assert sorted(embedded.stop_all(data_dir)) == ["postgres", "redis"]
    assert not _alive(redis.pid)
    assert not _alive(postgres.pid)
    assert embedded.stop_all(data_dir) == []


def test_record_of_a_pid_that_is_not_the_server_is_ignored(data_dir: Path) -> None:
    # server.json names a live pid (this test process) on an open port: not a Redis.
    folder = data_dir / "redis"
    folder.mkdir(parents=True)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fake = {"pid": os.getpid(), "port": listener.getsockname()[1], "binary": "valkey-server"}
        (folder / "server.json").write_text(json.dumps(fake))
        server = embedded.ensure_redis(data_dir)
    assert server.started is True
    assert server.pid != os.getpid()
    assert server.port != fake["port"]
    client = Redis.from_url(server.url)
    try:
        assert client.ping() is True
    finally:
        client.close()


@pytest.mark.parametrize("name", ["redis", "postgres"])
def test_requested_port_in_use_is_a_clear_error(data_dir: Path, name: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(embedded.EmbeddedError) as caught:
            if name == "redis":
                embedded.ensure_redis(data_dir, port=port)
            else:
                embedded.ensure_postgres(data_dir, port=port, fsync=False)
    assert f"port {port}" in str(caught.value)
    assert "in use" in str(caught.value)
    assert not (data_dir / name / "server.json").exists()
    assert _processes_mentioning(str(data_dir)) == []


@pytest.mark.parametrize("name", ["redis", "postgres"])
@pytest.mark.parametrize("where", ["under_a_file", "is_a_file"])
def test_unusable_data_folder_is_a_clear_error(tmp_path: Path, name: str, where: str) -> None:
    plain_file = tmp_path / "not-a-folder"
    plain_file.write_text("just a file")
    data_dir = plain_file / "data" if where == "under_a_file" else plain_file
    ensure = embedded.ensure_redis if name == "redis" else embedded.ensure_postgres
    with pytest.raises(embedded.EmbeddedError) as caught:
        ensure(data_dir)
    message = str(caught.value)
    assert "data folder" in message
    assert str(plain_file) in message
    assert plain_file.read_text() == "just a file"
    assert _processes_mentioning(str(plain_file)) == []
