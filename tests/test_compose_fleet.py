"""docker-compose.yml's profile "fleet": PostgreSQL and a second bridge replica on one store."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_compose import COMPOSE_FILE, _compose_binary, environment, published_ports

from fmnist_faust import config

URL = "postgresql://fmnist:fmnist-local@postgres:5432/fmnist"


def compose_config(**env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_", "BRIDGE_", "FMNIST_PG"))}
    result = subprocess.run(
        [_compose_binary(), "-f", str(COMPOSE_FILE), "config"],
        cwd=Path(COMPOSE_FILE).parent,
        env=dict(clean, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


@pytest.fixture(scope="module")
def fleet() -> dict[str, Any]:
    return compose_config(BRIDGE_STATE_URL=URL)


def test_fleet_services_are_behind_the_profile(fleet: dict[str, Any]) -> None:
    for name in ("postgres", "bridge-2"):
        assert "fleet" in (fleet[name].get("profiles") or []), name
    assert not fleet["bridge"].get("profiles"), "the first bridge runs without the profile"
    assert not published_ports(fleet["postgres"]), "postgres is reached inside the compose network only"
    assert (fleet["bridge-2"]["depends_on"]["postgres"] or {}).get("condition") == "service_healthy"


def test_both_replicas_share_the_subscription_and_the_store(fleet: dict[str, Any]) -> None:
    first = config.load_settings(environment(fleet["bridge"]))
    second = config.load_settings(environment(fleet["bridge-2"]))
    assert set(environment(fleet["bridge-2"])) <= set(config.ENV_VARS)
    assert first.bridge.state_url == second.bridge.state_url == URL
    assert first.pubsub.images_subscription == second.pubsub.images_subscription
    assert first.pubsub.emulator_host == second.pubsub.emulator_host
    postgres = environment(fleet["postgres"])
    assert URL.endswith(f"@postgres:5432/{postgres['POSTGRES_DB']}")
    assert f"{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@" in URL
    assert ("127.0.0.1", 6068, 6067) in published_ports(fleet["bridge-2"])


def test_without_the_url_the_first_bridge_keeps_its_sqlite_file() -> None:
    bridge = config.load_settings(environment(compose_config()["bridge"]))
    assert bridge.bridge.state_url == "sqlite:////var/lib/fmnist/bridge-state.sqlite3"
