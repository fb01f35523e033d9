"""docker-compose.yml and the Dockerfile agree with the app's configuration.

There is no Docker engine here, so the file is validated by a real Compose implementation
(Debian's ``docker-compose``; ``config`` needs no engine) and its normalised output is
checked against :mod:`fmnist_faust.config`: the services exist, every variable set on the
app's containers is one the app reads, Kafka / the Pub/Sub emulator are reached on the
ports they listen on, and the web ports are the config defaults, published on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fmnist_faust import config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DEFAULTS = config.load_settings({})
APP_SERVICES = ("model", "worker", "bridge", "producer")  # services running our image


def _compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found:
        return found
    if os.access("/usr/bin/docker-compose", os.X_OK):
        return "/usr/bin/docker-compose"
    message = "docker-compose not found (tools/install.sh installs Debian's docker-compose)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """``docker-compose -f docker-compose.yml config``, parsed."""
    binary = _compose_binary()
    # Only the file decides: no COMPOSE_*/DOCKER_* overrides from whoever runs the tests.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"docker-compose config exited {result.returncode}:\n{result.stderr}{result.stdout}"
    parsed = yaml.safe_load(result.stdout)
    assert isinstance(parsed, dict) and isinstance(parsed.get("services"), dict), result.stdout
    return parsed


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as ``{name: value}`` (mapping or ``NAME=value`` list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str, int | None, int]]:
    """``(host_ip, published, target)`` for each port, short ("ip:pub:target/proto") or long syntax."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            out.append((str(entry.get("host_ip", "")), int(published) if published else None, int(entry["target"])))
            continue
        parts = str(entry).split("/", 1)[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append(("", int(parts[0]), int(parts[1])))
        else:
            out.append(("", None, int(parts[0])))
    return out


def command_text(service: dict[str, Any]) -> str:
    cmd = service.get("command") or []
    return cmd if isinstance(cmd, str) else shlex.join(str(c) for c in cmd)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> ``{NAME: (host, port)}``."""
    out = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


# -- the list of variables itself ------------------------------------------------------


def test_env_var_list_matches_load_settings() -> None:
    assert set(config.ENV_VARS) == set(config.env_var_names())
    # And, independently of running it, the names in load_settings' source.
    source = Path(config.__file__).read_text()
    in_source = set(re.findall(r'_(?:get|int|float|path|choice)\(env, "([A-Z0-9_]+)"', source))
    assert in_source == set(config.ENV_VARS)
    assert all(meaning.strip() and "\n" not in meaning for meaning in config.ENV_VARS.values())


# -- the compose file ----------------------------------------------------------------------


def test_services_exist(services: dict[str, Any]) -> None:
    for name in ("kafka", "pubsub", "model", "worker", "bridge", "producer"):
        assert name in services, f"service {name!r} missing from docker-compose.yml"
    assert "demo" in (services["producer"].get("profiles") or [])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_env_vars_are_read_by_config(services: dict[str, Any], name: str) -> None:
    env = environment(services[name])
    unknown = sorted(set(env) - set(config.ENV_VARS))
    assert not unknown, f"{name} sets variables fmnist_faust.config never reads: {unknown}"
    config.load_settings(env)  # and their values are valid


def test_kafka_is_single_node_kraft(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:")
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    for name in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env.get(name) == "1", f"{name} must be 1 on a single broker"


def test_kafka_bootstrap_points_at_kafka_listener(services: dict[str, Any]) -> None:
    env = environment(services["kafka"])
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    kafka_names = {"kafka", str(services["kafka"].get("hostname", "kafka"))}
    # Listeners the other containers can reach: advertised under the service's name.
    internal = {
        port
        for name, (host, port) in advertised.items()
        if host in kafka_names and bound.get(name, ("", None))[1] == port
    }
    assert internal, f"no listener advertised as kafka:PORT in {env['KAFKA_ADVERTISED_LISTENERS']}"
    users = [n for n in APP_SERVICES if "KAFKA_BOOTSTRAP_SERVERS" in environment(services[n])]
    assert "worker" in users
    for name in users:
        for server in environment(services[name])["KAFKA_BOOTSTRAP_SERVERS"].split(","):
            host, _, port = server.strip().rpartition(":")
            assert host in kafka_names and int(port) in internal, (
                f"{name}: KAFKA_BOOTSTRAP_SERVERS={server} is not kafka's listener {sorted(internal)}"
            )


def test_kafka_reachable_from_host(services: dict[str, Any]) -> None:
    """A listener advertised as 127.0.0.1/localhost whose port is published on the same port."""
    env = environment(services["kafka"])
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    ports = {(pub, target) for _, pub, target in published_ports(services["kafka"])}
    host_listeners = [(name, port) for name, (host, port) in advertised.items() if host in ("127.0.0.1", "localhost")]
    assert any((port, bound[name][1]) in ports for name, port in host_listeners), (
        f"no advertised host listener published as PORT:PORT ({host_listeners}, ports {ports})"
    )
    # The app's default bootstrap (127.0.0.1:9092) then works from the host.
    default_port = int(DEFAULTS.kafka.bootstrap_servers.rpartition(":")[2])
    assert any(port == default_port for _, port in host_listeners)


def test_pubsub_emulator_host_points_at_pubsub(services: dict[str, Any]) -> None:
    pubsub = services["pubsub"]
    assert str(pubsub["image"]).startswith("gcr.io/google.com/cloudsdktool/google-cloud-cli:")
    cmd = command_text(pubsub)
    assert "emulators pubsub start" in cmd
    match = re.search(r"--host-port[= ]0\.0\.0\.0:(\d+)", cmd)
    assert match, f"the emulator must listen on 0.0.0.0: {cmd}"
    port = int(match.group(1))
    project = re.search(r"--project[= ](\S+)", cmd)
    assert project, cmd
    users = [n for n in APP_SERVICES if "PUBSUB_EMULATOR_HOST" in environment(services[n])]
    assert "bridge" in users
    for name in users:
        env = environment(services[name])
        assert env["PUBSUB_EMULATOR_HOST"] == f"pubsub:{port}", name
        assert env.get("GOOGLE_CLOUD_PROJECT", DEFAULTS.pubsub.project) == project.group(1), name


@pytest.mark.parametrize(
    "name, port_var, default",
    [
        ("worker", "FMNIST_WEB_PORT", DEFAULTS.web.port),
        ("bridge", "BRIDGE_WEB_PORT", DEFAULTS.bridge.web_port),
    ],
)
def test_web_ports_match_config_on_loopback(services: dict[str, Any], name: str, port_var: str, default: int) -> None:
    assert (default, name) in ((6066, "worker"), (6067, "bridge"))
    env = environment(services[name])
    settings = config.load_settings(env)
    port = settings.bridge.web_port if port_var == "BRIDGE_WEB_PORT" else settings.web.port
    assert port == default, f"{name}: {port_var}={port}, the config default is {default}"
    # Reachable through the published port: listen on every interface inside the container.
    assert settings.web.host == "0.0.0.0", f"{name}: FMNIST_WEB_HOST must be 0.0.0.0 in the container"
    assert ("127.0.0.1", default, default) in published_ports(services[name]), (
        f"{name}: port {default} must be published as 127.0.0.1:{default}:{default}"
    )


def test_every_published_port_is_loopback(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for host_ip, published, target in published_ports(service):
            assert host_ip == "127.0.0.1" and published, f"{name}: port {target} must be published on 127.0.0.1 only"


def test_healthchecks_and_start_order(services: dict[str, Any]) -> None:
    for name in ("kafka", "pubsub", "worker", "bridge"):
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    # The app's checks are the image's command, which reads the configured host and port and
    # asks /healthz and /readyz.
    for name, checked in (("worker", []), ("bridge", ["bridge"]), ("bridge-2", ["bridge"])):
        if name in services:
            assert services[name]["healthcheck"]["test"] == ["CMD", "fmnist-health", *checked, "--ready"], name

    def condition(name: str, on: str) -> str | None:
        depends = services[name].get("depends_on") or {}
        return depends.get(on, {}).get("condition") if isinstance(depends, dict) else None

    assert condition("worker", "kafka") == "service_healthy"
    assert condition("worker", "model") == "service_completed_successfully"
    assert condition("bridge", "pubsub") == "service_healthy"
    assert condition("bridge", "model") == "service_completed_successfully"
    assert condition("producer", "kafka") == "service_healthy"


def test_model_volume_is_shared(services: dict[str, Any]) -> None:
    assert command_text(services["model"]).startswith("fmnist-train")
    model_path = Path(config.load_settings(environment(services["model"])).model.path)

    def mount_of(name: str) -> tuple[str, str]:
        for volume in services[name].get("volumes") or []:
            source, target = (
                (volume.get("source"), volume.get("target")) if isinstance(volume, dict) else str(volume).split(":")[:2]
            )
            if model_path.is_relative_to(target):
                return str(source), str(target)
        raise AssertionError(f"{name} does not mount the volume holding {model_path}")

    trained = mount_of("model")
    for name in ("worker", "bridge"):
        assert config.load_settings(environment(services[name])).model.path == model_path, name
        assert mount_of(name) == trained, name


def test_bridge_runs_setup_then_run(services: dict[str, Any]) -> None:
    cmd = command_text(services["bridge"])
    setup, run = cmd.find("pubsub_bridge setup"), cmd.find("pubsub_bridge run")
    assert 0 <= setup < run, cmd
    assert "-A fmnist_faust worker" in command_text(services["worker"])


# -- the Dockerfile ----------------------------------------------------------------------


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [
        line.strip()
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    # The official image unless the build says otherwise (tools/container.sh: a Debian base).
    assert instructions[:2] == ["ARG BASE=python:3.11-slim-bookworm", "FROM ${BASE}"]
    assert any(i.startswith("RUN ") and "apt-get install" in i and "dataset-fashion-mnist" in i for i in instructions)
    assert any(i.startswith("RUN ") and "pip install --require-hashes -r requirements.lock" in i for i in instructions)
    assert any(i.startswith("RUN ") and re.search(r"pip install (?:--?\S+ )*\.(?:\s|$)", i) for i in instructions)
    users = [i.split()[1] for i in instructions if i.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    # Variables the image sets for the app are ones the app reads.
    env_names = set()
    for i in instructions:
        if i.startswith("ENV "):
            env_names |= set(re.findall(r"([A-Z][A-Z0-9_]*)=", i))
    app_like = {n for n in env_names if n.startswith(("FMNIST_", "KAFKA_", "PUBSUB_", "BRIDGE_", "GOOGLE_"))}
    assert app_like <= set(config.ENV_VARS), sorted(app_like - set(config.ENV_VARS))
    assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY=", "\n".join(instructions)), "no secrets in the image"
    env = [i for i in instructions if i.startswith("ENV ")]
    assert any(re.search(r"\bFMNIST_WEB_HOST=0\.0\.0\.0\b", i) for i in env), (
        "docker run -p 6066:6066 must reach the views"
    )
    health = [i for i in instructions if i.startswith("HEALTHCHECK ")]
    assert len(health) == 1 and health[0].endswith(' CMD ["fmnist-health", "--ready"]'), health
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "models", ".env"):
        assert entry in ignored, f".dockerignore must exclude {entry}"
