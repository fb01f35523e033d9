"""``fmnist-health``, the image's health check: it asks ``/healthz`` (and with ``--ready``
``/readyz``) where the configured service listens (FMNIST_WEB_HOST, FMNIST_WEB_PORT /
BRIDGE_WEB_PORT), not at a fixed port."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fmnist_faust.cli import health_main
from support import free_port


class HealthViews(BaseHTTPRequestHandler):
    """``/healthz`` 200 and ``/readyz`` 503 (a process still recovering), anything else 404,
    with the JSON body the worker and the bridge serve."""

    def do_GET(self) -> None:
        status = {"/healthz": 200, "/readyz": 503}.get(self.path)
        if status is None:
            self.send_error(404)
            return
        body = json.dumps({"status": "ok" if status == 200 else "failing", "checks": {}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet in the test output
        pass


@pytest.fixture
def serving_port() -> Iterator[int]:
    """A loopback port serving the health views (a service bound to 0.0.0.0 answers there too)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), HealthViews)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_worker_check_follows_the_configured_host_and_port(monkeypatch, serving_port: int, host: str) -> None:
    monkeypatch.setenv("FMNIST_WEB_HOST", host)
    monkeypatch.setenv("FMNIST_WEB_PORT", str(serving_port))
    assert health_main([]) == 0
    monkeypatch.setenv("FMNIST_WEB_PORT", str(free_port()))
    assert health_main([]) == 1


def test_bridge_check_reads_the_bridge_port(monkeypatch, serving_port: int, capsys) -> None:
    monkeypatch.setenv("FMNIST_WEB_HOST", "0.0.0.0")
    monkeypatch.setenv("BRIDGE_WEB_PORT", str(serving_port))
    monkeypatch.setenv("FMNIST_WEB_PORT", str(free_port()))
    assert health_main(["bridge"]) == 0
    assert health_main(["worker"]) == 1
    assert "the worker at http://127.0.0.1:" in capsys.readouterr().err


def test_ready_asks_readyz_too(monkeypatch, serving_port: int, capsys) -> None:
    monkeypatch.setenv("FMNIST_WEB_PORT", str(serving_port))
    assert health_main([]) == 0  # alive
    assert health_main(["--ready"]) == 1  # not ready: /readyz answers 503
    assert "/readyz does not answer 200" in capsys.readouterr().err
