"""Loopback helpers shared by the demos, the benchmark and the tests: a free port, and
"start a process, then poll its JSON view until it answers" (no Faust, no Pub/Sub)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any


class NotReady(RuntimeError):
    """A started process exited, or did not answer in time; the message points at its log."""


def free_port() -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # 127.0.0.1 only
        return json.load(response)


def wait_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float = 120.0) -> float:
    """Seconds until ``url`` answers with JSON; :class:`NotReady` if ``proc`` dies or stalls first."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise NotReady(f"{proc.args!r} exited with {proc.returncode}; see {log_path}")
        try:
            get_json(url, timeout=2)
            return time.monotonic() - started
        except (OSError, ValueError):
            time.sleep(0.05)
    raise NotReady(f"{proc.args!r} did not answer {url} within {timeout:.0f} s; see {log_path}")
