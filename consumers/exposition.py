"""The consumer's own `/metrics`, for a `rankstream consume` with no API beside it.

The supervising `rankstream consume` process serves, on RANKSTREAM_CONSUMER_METRICS_PORT,
the sum of its workers' prometheus-client multiprocess files, kept in a folder private to
that process (see run_workers). prometheus-client's own small threaded HTTP server is
enough for a scrape every few seconds, and keeps the supervisor free of an event loop.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from service.settings import SettingsError


@dataclass
class Exposition:
    """A running metrics server and the folder it reads."""

    server: WSGIServer
    folder: str

    def close(self) -> None:
        """Stop serving and remove the folder (its counters die with this process)."""
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.folder, ignore_errors=True)


def serve(host: str, port: int) -> Exposition:
    """Serve, on host:port, the metrics of every process writing into a new folder (hand
    it to them as PROMETHEUS_MULTIPROC_DIR)."""
    # Fresh for each run: counters of an earlier run must not be added to this one's.
    folder = tempfile.mkdtemp(prefix="rankstream-consumer-metrics-")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise SettingsError(
            f"RANKSTREAM_CONSUMER_METRICS_PORT={port}: cannot listen on {host}:{port}:"
            f" {exc.strerror or exc}"
        ) from None
    return Exposition(server, folder)
