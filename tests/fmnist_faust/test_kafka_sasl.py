"""SASL end to end: a worker, producer and consumer authenticate to a broker that demands it.

The shared broker (tools/services.sh) has only a PLAINTEXT listener, so this test starts
its own short-lived single-node KRaft broker from the jars in ``.cache/kafka-libs`` with
a SASL_PLAINTEXT listener accepting PLAIN and SCRAM-SHA-512 (the SCRAM user is created
when the storage is formatted). The worker runs with SCRAM-SHA-512, the producer (the
product's MainManager client) and topic creation with PLAIN, all configured only through
the environment variables. A wrong password and a PLAINTEXT client are refused, so the
broker really enforces authentication. TLS (SASL_SSL) is the same code path plus an
``ssl_context``, covered by tests/test_config.py.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fmnist_faust.config import KafkaSecurity, Settings, load_settings
from fmnist_faust.core.contract import decode_prediction, encode_image
from support import IN_CI, ROOT, Worker, free_port, model_cli, wait_for_port, wait_until

pytestmark = pytest.mark.kafka

LIBS = ROOT / ".cache" / "kafka-libs"
PLAIN_USER, PLAIN_PASSWORD = "fmnist-plain", "plain-secret"
SCRAM_USER, SCRAM_PASSWORD = "fmnist-scram", "scram-secret"


def _properties(port: int, controller: int, data: Path) -> str:
    plain_jaas = (
        'org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" '
        f'password="admin-secret" user_admin="admin-secret" user_{PLAIN_USER}="{PLAIN_PASSWORD}";'
    )
    return f"""
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config={plain_jaas}
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs={data}
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


@pytest.fixture
def sasl_broker(tmp_path: Path) -> Iterator[str]:
    """A private SASL-only broker on 127.0.0.1; stopped (by its pid) after the test."""
    java = shutil.which("java")
    if java is None or not (LIBS / ".complete").exists():
        message = f"the SASL broker needs java and Kafka's jars in {LIBS} (tools/services.sh fetch)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    port, controller = free_port(), free_port()
    directory = tmp_path / "sasl-kafka"
    (directory / "data").mkdir(parents=True)
    config = directory / "server.properties"
    config.write_text(_properties(port, controller, directory / "data"))
    classpath = f"{LIBS}/*"
    cluster_id = "-"
    while cluster_id.startswith("-"):  # StorageTool would read a leading "-" as an option (1 in 64)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    subprocess.run(
        [
            java,
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(config),
            "--add-scram",
            f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = open(directory / "kafka.log", "wb")
    broker = subprocess.Popen(
        [
            java,
            "-Xms128m",
            "-Xmx384m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        if not wait_for_port("127.0.0.1", port, timeout=60):
            raise RuntimeError(f"the SASL broker did not open its port; see {directory / 'kafka.log'}")
        yield f"127.0.0.1:{port}"
    finally:
        broker.terminate()
        try:
            broker.wait(30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(10)
        log.close()


def _env(bootstrap: str, mechanism: str, user: str, password: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": mechanism,
        "KAFKA_SASL_USERNAME": user,
        "KAFKA_SASL_PASSWORD": password,
        **extra,
    }


async def _metadata(bootstrap: str, security: KafkaSecurity) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000, **security.aiokafka_kwargs())
    try:
        await producer.start()
    finally:
        await producer.stop()


def _refused(bootstrap: str, security: KafkaSecurity) -> bool:
    try:
        asyncio.run(asyncio.wait_for(_metadata(bootstrap, security), 20))
    except Exception:  # authentication failure, or a PLAINTEXT client timing out on a SASL port
        return True
    return False


async def _consume(bootstrap: str, topics: list[str], expected: int, security: KafkaSecurity) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", **security.aiokafka_kwargs()
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(records) < expected and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


@pytest.mark.timeout(180)
def test_worker_and_clients_over_sasl(
    sasl_broker: str, worker_env: dict[str, str], tmp_path: Path, test_split: Any, rollout_models: Any
) -> None:
    from fmnist_faust.client import MainManager
    from fmnist_faust.kafka_admin import ensure_topics_sync

    topics = {k: worker_env[k] for k in ("FMNIST_IMAGES_TOPIC", "FMNIST_PREDICTIONS_TOPIC", "FMNIST_DLQ_TOPIC")}
    plain: Settings = load_settings(_env(sasl_broker, "PLAIN", PLAIN_USER, PLAIN_PASSWORD, **topics))
    scram: Settings = load_settings(_env(sasl_broker, "SCRAM-SHA-512", SCRAM_USER, SCRAM_PASSWORD, **topics))

    # The broker enforces authentication: wrong password, unknown user and no SASL all fail.
    wait_until(lambda: not _refused(sasl_broker, plain.kafka.security), timeout=60, what="SASL broker ready")

    def security(mechanism: str, user: str, password: str) -> KafkaSecurity:
        return load_settings(_env(sasl_broker, mechanism, user, password)).kafka.security

    assert _refused(sasl_broker, security("PLAIN", PLAIN_USER, "wrong"))
    assert _refused(sasl_broker, security("SCRAM-SHA-512", SCRAM_USER, "wrong"))
    assert _refused(sasl_broker, security("SCRAM-SHA-512", PLAIN_USER, PLAIN_PASSWORD))
    assert _refused(sasl_broker, load_settings({}).kafka.security)  # PLAINTEXT

    # Topics (admin client) and images (the product's producer) with PLAIN ...
    ensure_topics_sync(plain)
    images, labels = test_split.images[:30], test_split.labels[:30]
    producer = MainManager("kafka", plain).create_producer(plain.topics.images)
    try:
        for n in range(30):
            producer.produce(encode_image(f"s-{n}", images[n], int(labels[n])), key=f"s-{n}")
        producer.produce(b"not json", key="s-bad")
        producer.flush()
    finally:
        producer.close()

    # ... classified by a worker that authenticates with SCRAM-SHA-512, from the environment only.
    env = dict(worker_env, **_env(sasl_broker, "SCRAM-SHA-512", SCRAM_USER, SCRAM_PASSWORD))
    env["FMNIST_MODEL_DIR"] = str(rollout_models.trusted)
    worker = Worker(env, tmp_path / "sasl-worker.log").start(ready_timeout=90)
    try:
        report = wait_until(
            lambda: (r := worker.accuracy())["images"] >= 30 and r["rejected"] >= 1 and r,
            timeout=90,
            what="30 images and 1 rejection counted over SASL",
        )
        assert report["images"] == 30 and report["rejected_by_kind"] == {"not_json": 1}
        records = asyncio.run(
            _consume(sasl_broker, [scram.topics.predictions, scram.topics.dlq], 31, scram.kafka.security)
        )
        predictions = [decode_prediction(r.value) for r in records if r.topic == scram.topics.predictions]
        assert sorted(p["id"] for p in predictions) == sorted(f"s-{n}" for n in range(30))
        dead = [r for r in records if r.topic == scram.topics.dlq]
        assert [(r.key, r.value) for r in dead] == [(b"s-bad", b"not json")]
        assert worker.proc is not None and worker.proc.poll() is None

        # fmnist-model writes the rollout pointer with the broker's credentials (PLAIN here).
        shadow = rollout_models.versions[1]
        operator = dict(worker_env, **_env(sasl_broker, "PLAIN", PLAIN_USER, PLAIN_PASSWORD))
        refused = model_cli(
            dict(operator, KAFKA_SASL_PASSWORD="wrong"), "shadow", shadow, directory=rollout_models.trusted
        )
        assert refused.returncode == 1 and "cannot reach" in refused.stderr
        done = model_cli(operator, "shadow", shadow, directory=rollout_models.trusted)
        assert done.returncode == 0, done.stderr
        wait_until(lambda: worker.get("/stats/").json()["models"]["shadow"] == shadow, 30, what="shadow over SASL")
    finally:
        worker.stop()
    assert "SaslAuthenticationFailed" not in worker.log_path.read_text(errors="replace")
