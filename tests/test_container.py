"""The Docker image, built and run for real with podman (``make test-container``).

``tools/container.sh`` builds the Dockerfile on a Debian bookworm base made here by
debootstrap (registries of base images are out of reach; the base is cached by a content
hash). A worker and a bridge run from the image on the host network against this session's
Kafka and Pub/Sub emulator, with the tiny model mounted read-only: their totals must equal
the model's offline predictions, and the image's health check must pass on the ports they
are configured with.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fmnist_faust.client import MainManager
from fmnist_faust.config import load_settings, run_names
from fmnist_faust.core import dataset, model
from fmnist_faust.core.contract import encode_image
from support import IN_CI, ROOT, free_port, offline_confusion, produce_images, wait_until

pytestmark = pytest.mark.container  # not kafka/pubsub: `-m kafka` must not build an image

CONTAINER_TOOL = str(ROOT / "tools" / "container.sh")
IMAGE = "localhost/fmnist-faust:test"
MODELS = "/models"  # where the tiny model is mounted in the containers
WORKER_IMAGES = 3000
BRIDGE_IMAGES = 300


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """podman with the project's containers.conf (through tools/container.sh)."""
    done = subprocess.run([CONTAINER_TOOL, "podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}")
    return done


@pytest.fixture(scope="module")
def image() -> str:
    """The project's image on the debootstrapped base, built once per session (layers cached)."""
    if shutil.which("podman") is None:
        message = "podman not found (`tools/container.sh install` installs it from Debian)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    for step in (["base"], ["build", IMAGE]):  # timed apart: the build finds the base built
        started = time.monotonic()
        done = subprocess.run([CONTAINER_TOOL, *step], capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"tools/container.sh {step[0]} exited {done.returncode}:\n{done.stderr[-4000:]}"
        print(f"CONTAINER {step[0]}: {done.stdout.strip()} in {time.monotonic() - started:.1f} s")
    return IMAGE


@pytest.fixture(scope="module")
def model_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model and its manifest in a directory the image's user (uid 10001) can read:
    pytest's own temporary directories are private to root."""
    directory = tmp_path_factory.mktemp("container-models")
    for source in (tiny_model, model.manifest_path_for(tiny_model)):
        shutil.copy(source, directory / source.name)
        (directory / source.name).chmod(0o644)
    directory.chmod(0o755)
    return directory


class Container:
    """One detached ``podman run`` of the image on the host network; :meth:`remove` ends it."""

    def __init__(self, image: str, env: dict[str, str], models: Path, command: list[str], *options: str) -> None:
        self.name = f"fmnist-test-{uuid.uuid4().hex[:8]}"
        env_args = [arg for name, value in env.items() for arg in ("--env", f"{name}={value}")]
        podman(
            "run", "--detach", "--name", self.name, "--network", "host",
            "--volume", f"{models}:{MODELS}:ro", *env_args, *options, image, *command,
        )  # fmt: skip

    def running(self) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-4000:]

    def wait_answering(self, url: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"container {self.name} exited before {url} answered:\n{self.logs()}")
            try:
                requests.get(url, timeout=2).raise_for_status()
                return
            except requests.RequestException:
                time.sleep(0.5)
        raise AssertionError(f"{url} did not answer within {timeout} s:\n{self.logs()}")

    def healthcheck(self) -> subprocess.CompletedProcess:
        """The container's health check, run now (no systemd here to schedule it)."""
        return podman("healthcheck", "run", self.name, check=False, timeout=60)

    def health_on(self, variable: str, port: int, *service: str) -> int:
        """``fmnist-health SERVICE`` in the container with ``variable`` set to ``port``: its exit code."""
        return podman(
            "exec", "--env", f"{variable}={port}", self.name, "fmnist-health", *service, check=False
        ).returncode

    def remove(self) -> None:
        podman("rm", "--force", "--time", "10", self.name, check=False)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    """Every container a test starts is removed at its end, logs shown on failure by the test."""
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


def listens_on_every_address(port: int) -> bool:
    """A TCP socket in LISTEN state on 0.0.0.0:``port`` in this (the host's) network namespace."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and local == f"00000000:{port:04X}":
            return True
    return False


def accuracy(port: int) -> dict:
    response = requests.get(f"http://127.0.0.1:{port}/accuracy/", timeout=10)
    response.raise_for_status()
    return response.json()


def test_image_declares_its_health_check_and_web_host(image: str) -> None:
    config = podman("image", "inspect", "--format", "{{json .Config.Env}} {{json .HealthCheck}}", image).stdout
    assert '"FMNIST_WEB_HOST=0.0.0.0"' in config
    assert '"fmnist-health"' in config and '"--ready"' in config, config


def test_missing_model_says_what_to_do_in_a_container(image: str, kafka_bootstrap: str, model_dir: Path) -> None:
    done = podman(
        "run", "--rm", "--network", "host", "--volume", f"{model_dir}:{MODELS}:ro",
        "--env", f"KAFKA_BOOTSTRAP_SERVERS={kafka_bootstrap}", "--env", f"FMNIST_MODEL_PATH={MODELS}/absent.joblib",
        "--env", f"FMNIST_WEB_PORT={free_port()}", image,
        timeout=180, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert f"model file missing; {model.TRAIN_HINT}" in output, output[-4000:]
    assert "run `make model`" not in output


def test_worker_container_counts_exactly_and_is_healthy(
    image: str, containers: list[Container], kafka_bootstrap: str, model_dir: Path, tiny_model: Path, test_split
) -> None:
    tag = uuid.uuid4().hex[:8]
    port = free_port()  # not 6066: the health check must follow FMNIST_WEB_PORT
    env = dict(
        run_names(tag),
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        FMNIST_APP_ID=f"fmnist-container-{tag}",
        FMNIST_WEB_PORT=str(port),
        FMNIST_MODEL_PATH=f"{MODELS}/{tiny_model.name}",
    )
    worker = Container(image, env, model_dir, [])  # the image's default command: the worker
    containers.append(worker)
    worker.wait_answering(f"http://127.0.0.1:{port}/accuracy/")
    assert listens_on_every_address(port), "the worker must bind 0.0.0.0 in the image (docker run -p)"

    images, labels = test_split.images[:WORKER_IMAGES], test_split.labels[:WORKER_IMAGES]
    produce_images(kafka_bootstrap, env["FMNIST_IMAGES_TOPIC"], images, labels, prefix="ct")
    wait_until(lambda: accuracy(port)["images"] >= WORKER_IMAGES, timeout=180, what="the worker's count")
    time.sleep(3)  # anything counted twice would show up now
    report = accuracy(port)
    print(f"CONTAINER worker: {report['images']} images, accuracy {report['accuracy']:.4f}")
    assert report["images"] == WORKER_IMAGES, worker.logs()
    assert report["confusion"] == offline_confusion(tiny_model, images, labels)

    health = worker.healthcheck()
    assert health.returncode == 0, f"{health.stdout}{health.stderr}\n{worker.logs()}"
    assert worker.health_on("FMNIST_WEB_PORT", free_port()) == 1, "the check must read FMNIST_WEB_PORT"


def test_bridge_container_counts_exactly_and_is_healthy(
    image: str, containers: list[Container], pubsub_emulator: str, model_dir: Path, tiny_model: Path, test_split
) -> None:
    from pubsub_bridge.admin import teardown

    tag = uuid.uuid4().hex[:8]
    port = free_port()  # not 6067: the health check must follow BRIDGE_WEB_PORT
    env = dict(
        run_names(tag),
        PUBSUB_EMULATOR_HOST=pubsub_emulator,
        GOOGLE_CLOUD_PROJECT="fmnist-local",
        BRIDGE_WEB_PORT=str(port),
        FMNIST_MODEL_PATH=f"{MODELS}/{tiny_model.name}",
    )
    settings = load_settings(env)
    bridge = Container(
        image,
        env,
        model_dir,
        ["sh", "-c", "python -m pubsub_bridge setup && exec python -m pubsub_bridge run"],
        "--health-cmd",
        '["fmnist-health", "bridge", "--ready"]',  # as docker-compose.yml's bridge
    )
    containers.append(bridge)
    try:
        bridge.wait_answering(f"http://127.0.0.1:{port}/accuracy/")
        assert listens_on_every_address(port), "the bridge must bind 0.0.0.0 in the image"
        publish(settings, test_split, BRIDGE_IMAGES)
        wait_until(lambda: accuracy(port)["images"] >= BRIDGE_IMAGES, timeout=120, what="the bridge's count")
        time.sleep(3)  # a redelivery counted twice would show up now
        report = accuracy(port)
        print(f"CONTAINER bridge: {report['images']} images, accuracy {report['accuracy']:.4f}")
        assert report["images"] == BRIDGE_IMAGES, bridge.logs()
        rows = slice(0, BRIDGE_IMAGES)
        assert report["confusion"] == offline_confusion(tiny_model, test_split.images[rows], test_split.labels[rows])

        health = bridge.healthcheck()
        assert health.returncode == 0, f"{health.stdout}{health.stderr}\n{bridge.logs()}"
        assert bridge.health_on("BRIDGE_WEB_PORT", free_port(), "bridge") == 1, "the check must read BRIDGE_WEB_PORT"
    finally:
        bridge.remove()
        teardown(settings)


def publish(settings, split: dataset.Split, count: int) -> None:
    """The first ``count`` test images onto the bridge's Pub/Sub topic, key attribute = id."""
    producer = MainManager("pubsub", settings).create_producer(settings.topics.images)
    try:
        for i in range(count):
            producer.produce(encode_image(f"ct-{i:05d}", split.images[i], int(split.labels[i])), key=f"ct-{i:05d}")
        producer.flush()
    finally:
        producer.close()
