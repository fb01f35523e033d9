"""Fixtures for the bridge: per-test Pub/Sub names on the real emulator, the bridge as a
subprocess (see bridge_helpers.Bridge), readers for what it publishes."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.local_postgres import LocalPostgres, find_bin_dir
from bridge_helpers import Bridge, Collector
from fmnist_faust.config import Settings, load_settings, run_names
from support import IN_CI, free_port


@pytest.fixture
def bridge_env(pubsub_emulator: str, tiny_model: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for one isolated bridge: unique topic/subscription names, own state and port."""
    tag = uuid.uuid4().hex[:8]
    env = dict(os.environ, **run_names(tag))
    env.update(
        PUBSUB_EMULATOR_HOST=pubsub_emulator,
        GOOGLE_CLOUD_PROJECT=os.environ.get("GOOGLE_CLOUD_PROJECT", "fmnist-local"),
        PUBSUB_ACK_DEADLINE_SECONDS="10",  # redelivery after a SIGKILL within seconds, not a minute
        FMNIST_MODEL_PATH=str(tiny_model),
        FMNIST_BATCH_LINGER="0.02",
        BRIDGE_STATE_PATH=str(tmp_path / "bridge-state.sqlite3"),
        BRIDGE_WEB_PORT=str(free_port()),
        FMNIST_WEB_HOST="127.0.0.1",
        FMNIST_LOG_LEVEL="info",
    )
    return env


@pytest.fixture
def bridge_settings(bridge_env: dict[str, str]) -> Settings:
    return load_settings(bridge_env)


@pytest.fixture
def pubsub_setup(bridge_settings: Settings) -> Iterator[Settings]:
    """Runs the bridge's own setup for this test's names; deletes them afterwards."""
    from pubsub_bridge.admin import setup, teardown

    setup(bridge_settings)
    yield bridge_settings
    teardown(bridge_settings)


@pytest.fixture
def start_bridge(bridge_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    """Factory: ``start_bridge(**env_overrides)``; every bridge is killed at teardown."""
    bridges: list[Bridge] = []

    def start(**overrides: str) -> Bridge:
        bridge = Bridge(dict(bridge_env, **overrides), tmp_path / f"bridge{len(bridges)}.log")
        bridges.append(bridge)
        return bridge.start()

    yield start
    for bridge in bridges:
        if bridge.proc is not None and bridge.proc.poll() is None:
            bridge.proc.kill()
            bridge.proc.wait(10)


@pytest.fixture
def collect(pubsub_setup: Settings) -> Iterator[Callable[[str], Collector]]:
    collectors: list[Collector] = []

    def start(subscription: str) -> Collector:
        collectors.append(Collector(pubsub_setup, subscription))
        return collectors[-1]

    yield start
    for collector in collectors:
        collector.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server for the session (Debian's ``postgresql``; fail in CI, else skip)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL not installed: no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    server = LocalPostgres(bin_dir)
    try:
        server.init().start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        server.cleanup()
        if IN_CI:
            pytest.fail(f"PostgreSQL did not start: {exc}")
        pytest.skip(f"PostgreSQL did not start: {exc}")
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(postgres: LocalPostgres) -> str:
    """A fresh, empty database on the session's server."""
    return postgres.create_database()
