"""Configuration from the environment: Kafka TLS/SASL, validation, safe defaults.

For each supported combination, ``KafkaSecurity`` must hand Faust the right credential
object and aiokafka the right keyword arguments, and both must describe the same
connection (checked through Faust's own ``credentials_to_aiokafka_auth``). Unusable
values fail at start-up with :class:`ConfigError`, naming the variable.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from fmnist_faust.config import ConfigError, FaultSettings, KafkaSecurity, load_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA certificate and a client certificate/key pair (PEM), via openssl."""
    directory = tmp_path_factory.mktemp("pki")
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca_key", "cert", "key")}
    for cert, key, cn in ((files["ca"], files["ca_key"], "fmnist-test-ca"), (files["cert"], files["key"], "client")):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                f"/CN={cn}",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
    files["garbage"] = directory / "garbage.pem"
    files["garbage"].write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    return files


def _security(**env: str) -> KafkaSecurity:
    return load_settings(env).kafka.security


def _same_connection(security: KafkaSecurity) -> dict[str, Any]:
    """Faust's view of our credentials equals our aiokafka kwargs (ssl_context aside)."""
    ours = security.aiokafka_kwargs()
    faust_view = dict(credentials_to_aiokafka_auth(security.faust_credentials()))
    faust_context = faust_view.pop("ssl_context", None)
    our_context = ours.get("ssl_context")
    assert {k: v for k, v in ours.items() if k != "ssl_context"} == faust_view
    assert (faust_context is None) == (our_context is None)
    return ours


def _aiokafka_accepts(kwargs: dict[str, Any]) -> None:
    """aiokafka validates these arguments in its constructors (no connection is made)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    async def build() -> None:
        AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", **kwargs)
        AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", **kwargs)
        AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9", **kwargs)

    asyncio.run(build())


def test_plaintext_is_the_default() -> None:
    security = _security()
    assert security.protocol == "PLAINTEXT" and security.ssl_context() is None
    assert security.faust_credentials() is None
    assert security.aiokafka_kwargs() == {}


def test_sasl_ssl_scram_sha_512(pki: dict[str, Path]) -> None:
    security = _security(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="fmnist",
        KAFKA_SASL_PASSWORD="s3cret",
        KAFKA_SSL_CAFILE=str(pki["ca"]),
    )
    credentials = security.faust_credentials()
    assert isinstance(credentials, faust.auth.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.username, credentials.password) == ("fmnist", "s3cret")
    context = credentials.ssl_context
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(
        dict(rdn[0] for rdn in ca["subject"]).get("commonName") == "fmnist-test-ca" for ca in context.get_ca_certs()
    )

    kwargs = _same_connection(security)
    assert {k: v for k, v in kwargs.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "fmnist",
        "sasl_plain_password": "s3cret",
    }
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    _aiokafka_accepts(kwargs)


def test_sasl_plaintext_plain() -> None:
    security = _security(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="fmnist",
        KAFKA_SASL_PASSWORD="s3cret",
    )
    credentials = security.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_PLAINTEXT" and credentials.mechanism.value == "PLAIN"
    assert credentials.ssl_context is None
    assert (credentials.username, credentials.password) == ("fmnist", "s3cret")
    kwargs = _same_connection(security)
    assert kwargs == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "fmnist",
        "sasl_plain_password": "s3cret",
    }
    _aiokafka_accepts(kwargs)


def test_sasl_plaintext_scram_sha_256_lower_case_values() -> None:
    security = _security(
        KAFKA_SECURITY_PROTOCOL="sasl_plaintext",
        KAFKA_SASL_MECHANISM="scram-sha-256",
        KAFKA_SASL_USERNAME="u",
        KAFKA_SASL_PASSWORD="p",
    )
    credentials = security.faust_credentials()
    assert credentials.mechanism.value == "SCRAM-SHA-256" and credentials.protocol.value == "SASL_PLAINTEXT"
    assert _same_connection(security)["sasl_mechanism"] == "SCRAM-SHA-256"


def test_ssl_with_client_certificate(pki: dict[str, Path]) -> None:
    security = _security(
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CAFILE=str(pki["ca"]),
        KAFKA_SSL_CERTFILE=str(pki["cert"]),
        KAFKA_SSL_KEYFILE=str(pki["key"]),
    )
    credentials = security.faust_credentials()
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol.value == "SSL"
    assert isinstance(credentials.context, ssl.SSLContext)
    assert credentials.context.verify_mode == ssl.CERT_REQUIRED
    kwargs = _same_connection(security)
    assert kwargs["security_protocol"] == "SSL" and isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert not any(k.startswith("sasl") for k in kwargs)
    _aiokafka_accepts(kwargs)


def test_ssl_without_files_uses_the_system_trust_store() -> None:
    security = _security(KAFKA_SECURITY_PROTOCOL="SSL")
    context = security.ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert _same_connection(security)["security_protocol"] == "SSL"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, ["KAFKA_SECURITY_PROTOCOL", "TLS"]),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL"}, ["KAFKA_SECURITY_PROTOCOL"]),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, ["KAFKA_SASL_MECHANISM", "GSSAPI"]),
        ({"KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, ["KAFKA_SASL_MECHANISM"]),
        ({"KAFKA_SASL_MECHANISM": "SCRAM-SHA-1"}, ["KAFKA_SASL_MECHANISM"]),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, ["KAFKA_SASL_USERNAME"]),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_PASSWORD": "p"}, ["KAFKA_SASL_USERNAME"]),
        ({"FMNIST_PARTITIONS": "0"}, ["FMNIST_PARTITIONS"]),
        ({"FMNIST_PARTITIONS": "four"}, ["FMNIST_PARTITIONS"]),
        ({"FMNIST_WEB_PORT": "http"}, ["FMNIST_WEB_PORT"]),
        ({"FMNIST_BATCH_SIZE": "0"}, ["FMNIST_BATCH_SIZE"]),
        ({"FMNIST_BATCH_LINGER": "soon"}, ["FMNIST_BATCH_LINGER"]),
        ({"FMNIST_MAX_MESSAGE_BYTES": "100"}, ["FMNIST_MAX_MESSAGE_BYTES"]),
        ({"FMNIST_FAULT_CRASH_AGENT_AFTER": "-1"}, ["FMNIST_FAULT_CRASH_AGENT_AFTER"]),
        ({"FMNIST_FAULT_CRASH_AGENT_AFTER": "soon"}, ["FMNIST_FAULT_CRASH_AGENT_AFTER"]),
    ],
)
def test_bad_values_raise_config_error_naming_the_variable(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    for name in names:
        assert name in str(caught.value)


@pytest.mark.parametrize(
    "files",
    [
        {"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
        {"KAFKA_SSL_CAFILE": "garbage"},
        {"KAFKA_SSL_CERTFILE": "/nonexistent/cert.pem"},
        {"KAFKA_SSL_CERTFILE": "cert", "KAFKA_SSL_KEYFILE": "ca_key"},  # key of another certificate
        {"KAFKA_SSL_CERTFILE": "cert", "KAFKA_SSL_KEYFILE": "/nonexistent/key.pem"},
        {"KAFKA_SSL_KEYFILE": "key"},  # a key without its certificate
    ],
)
@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_unusable_tls_files_raise_config_error(pki: dict[str, Path], files: dict[str, str], protocol: str) -> None:
    """Caught when the settings are read, not as an ssl/OS error deep inside Faust at start."""
    env = {"KAFKA_SECURITY_PROTOCOL": protocol, "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}
    env.update({k: v if v.startswith("/") else str(pki[v]) for k, v in files.items()})
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert any(name in str(caught.value) for name in files)


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_files_with_a_protocol_without_tls_are_refused(pki: dict[str, Path], protocol: str) -> None:
    """Setting a CA but forgetting SASL_SSL would silently send SASL passwords in clear text."""
    env = {
        "KAFKA_SECURITY_PROTOCOL": protocol,
        "KAFKA_SASL_USERNAME": "u",
        "KAFKA_SASL_PASSWORD": "p",
        "KAFKA_SSL_CAFILE": str(pki["ca"]),
    }
    with pytest.raises(ConfigError, match="KAFKA_SSL_CAFILE"):
        load_settings(env)


def test_password_never_appears_in_reprs() -> None:
    settings = load_settings(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_USERNAME": "fmnist",
            "KAFKA_SASL_PASSWORD": "hunter2-very-secret",
        }
    )
    assert "hunter2-very-secret" not in repr(settings)
    assert "hunter2-very-secret" not in repr(settings.kafka.security)
    assert "hunter2-very-secret" not in repr(settings.kafka.security.faust_credentials())


def test_web_views_bind_loopback_by_default() -> None:
    settings = load_settings({})
    assert settings.web.host == "127.0.0.1"
    assert load_settings({"FMNIST_WEB_HOST": "0.0.0.0"}).web.host == "0.0.0.0"
    assert load_settings({"FMNIST_WEB_HOST": ""}).web.host == "127.0.0.1"


def test_faust_app_gets_loopback_bind_and_the_configured_credentials() -> None:
    """A fresh interpreter, as the worker starts: the app's conf comes from the environment."""
    probe = (
        "from fmnist_faust.faust_app import app\n"
        "c = app.conf.broker_credentials\n"
        "print(app.conf.web_bind, app.conf.web_host, type(c).__name__, c.protocol.value, c.mechanism.value,"
        " c.username)\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "fmnist",
        "KAFKA_SASL_PASSWORD": "p",
    }
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [
        "127.0.0.1",
        "127.0.0.1",
        "SASLCredentials",
        "SASL_PLAINTEXT",
        "SCRAM-SHA-512",
        "fmnist",
    ]


def test_each_default_has_one_source() -> None:
    """An empty environment yields exactly the defaults of VARIABLES, which docs/configuration.md shows."""
    from fmnist_faust.config import ENV_VARS, VARIABLES

    settings = load_settings({})
    assert settings.topics.images == VARIABLES["FMNIST_IMAGES_TOPIC"][0] == "images"
    assert settings.pipeline.max_message_bytes == int(VARIABLES["FMNIST_MAX_MESSAGE_BYTES"][0]) == 1 << 20
    assert settings.pubsub.ack_deadline_s == 60 and "(default 60)" in ENV_VARS["PUBSUB_ACK_DEADLINE_SECONDS"]
    assert settings.bridge.state_path == Path(".run/bridge-state.sqlite3")
    assert settings.model.path == Path("models/fmnist-mlp.joblib") and settings.model.data_dir is None
    assert settings.faults == FaultSettings(white_images=False, crash_agent_after=0)


def test_faults_are_injected_only_when_set() -> None:
    faults = load_settings({"FMNIST_FAULT_WHITE_IMAGES": "1", "FMNIST_FAULT_CRASH_AGENT_AFTER": "1500"}).faults
    assert faults == FaultSettings(white_images=True, crash_agent_after=1500)
    assert not load_settings({"FMNIST_FAULT_WHITE_IMAGES": "yes"}).faults.white_images  # only 1 turns it on


def test_exactly_once_reads_no_labels_and_refuses_a_labels_topic() -> None:
    """exactly_once's transactions do not hold the label-join state: the worker reads no labels
    there, and naming a labels topic with it fails at start-up naming both variables."""
    assert load_settings({}).kafka.reads_labels
    assert not load_settings({"FMNIST_PROCESSING_GUARANTEE": "exactly_once"}).kafka.reads_labels
    assert load_settings({"FMNIST_LABELS_TOPIC": "mine"}).kafka.reads_labels
    with pytest.raises(ConfigError) as caught:
        load_settings({"FMNIST_PROCESSING_GUARANTEE": "exactly_once", "FMNIST_LABELS_TOPIC": "mine"})
    message = str(caught.value)
    assert "FMNIST_LABELS_TOPIC='mine'" in message and "FMNIST_PROCESSING_GUARANTEE=exactly_once" in message
    assert "\n" not in message


def test_an_exactly_once_worker_reads_no_labels_and_refuses_a_labels_topic() -> None:
    """The worker as started: exactly_once subscribes to images only and registers no
    label-join table; with a labels topic named it stops before connecting, the error last."""
    root = Path(__file__).resolve().parent.parent
    eos = {
        "PATH": "/usr/bin:/bin",
        "FMNIST_PROCESSING_GUARANTEE": "exactly_once",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    probe = (
        "import json\n"
        "from fmnist_faust import agents\n"
        "from fmnist_faust.faust_app import app\n"
        "from fmnist_faust.tables import join_table\n"
        "print(json.dumps({'inputs': sorted(agents.inputs_topic.topics), 'join_table': join_table is None,\n"
        "  'tables': sorted(app.tables)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120, env=eos)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "inputs": ["images"],
        "join_table": True,
        "tables": ["scores", "seen-ids"],
    }
    worker = [sys.executable, "-m", "faust", "-A", "fmnist_faust", "worker"]
    refused = subprocess.run(
        worker, cwd=root, capture_output=True, text=True, timeout=120, env={**eos, "FMNIST_LABELS_TOPIC": "labels"}
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "fmnist_faust.config.ConfigError: FMNIST_LABELS_TOPIC='labels' with FMNIST_PROCESSING_GUARANTEE=exactly_once: "
        "delayed labels are not supported with exactly_once; unset FMNIST_LABELS_TOPIC or use at_least_once"
    )


def test_relative_paths_resolve_against_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As Faust's datadir: after a plain ``pip install`` the package's directory is
    site-packages, so the defaults must not be taken from there."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"FMNIST_MODEL_PATH": "mine/model.joblib"})
    assert settings.kafka.worker_datadir.resolve() == tmp_path / ".run" / "worker"
    assert settings.bridge.state_path.resolve() == tmp_path / ".run" / "bridge-state.sqlite3"
    assert settings.bridge.state_url == "sqlite:///.run/bridge-state.sqlite3"
    assert settings.model.path.resolve() == tmp_path / "mine" / "model.joblib"
    assert settings.model.directory.resolve() == tmp_path / "mine"


def test_run_names_rename_every_topic_and_subscription() -> None:
    from fmnist_faust.config import run_names

    settings = load_settings(run_names("t1"))
    assert (settings.topics.images, settings.topics.predictions, settings.topics.dlq) == (
        "images-t1",
        "predictions-t1",
        "images-dlq-t1",
    )
    assert settings.pubsub.images_subscription == "images-sub-t1"
    assert settings.pubsub.dead_letter_subscription == "images-dead-letter-sub-t1"


# -- the seed demo's PUBSUB_CONFIG_PATH -------------------------------------------------


@pytest.fixture(scope="module")
def service_account_key(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A service-account key as Google issues one (a throw-away RSA key, via openssl)."""
    pem = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        "type": "service_account",
        "project_id": "seed-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "fmnist@seed-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def _seed_file(tmp_path: Path, content: Any) -> str:
    path = tmp_path / "pubsub-config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


@pytest.mark.parametrize("servers", [["k1:9092", "k2:9093"], "k1:9092,k2:9093", " k1:9092 , k2:9093 "])
def test_seed_config_kafka_servers_are_the_brokers(tmp_path: Path, servers: Any) -> None:
    path = _seed_file(tmp_path, {"kafka_servers": servers})
    settings = load_settings({"PUBSUB_CONFIG_PATH": path})
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9093"
    assert settings.kafka.broker_url == "kafka://k1:9092;kafka://k2:9093"


def test_kafka_bootstrap_servers_takes_precedence_over_the_seed_config(tmp_path: Path) -> None:
    path = _seed_file(tmp_path, {"kafka_servers": ["k1:9092"]})
    env = {"PUBSUB_CONFIG_PATH": path, "KAFKA_BOOTSTRAP_SERVERS": "mine:9092"}
    assert load_settings(env).kafka.bootstrap_servers == "mine:9092"
    assert load_settings({"PUBSUB_CONFIG_PATH": _seed_file(tmp_path, {})}).kafka.bootstrap_servers == "127.0.0.1:9092"


def test_seed_config_key_gives_the_pubsub_credentials(tmp_path: Path, service_account_key: dict[str, Any]) -> None:
    path = _seed_file(tmp_path, dict(service_account_key, kafka_servers=["k1:9092"]))
    pubsub = load_settings({"PUBSUB_CONFIG_PATH": path}).pubsub
    assert pubsub.key_file == Path(path)
    credentials = pubsub.client_kwargs()["credentials"]
    assert credentials.service_account_email == service_account_key["client_email"]
    assert credentials.project_id == "seed-project"


def test_google_application_credentials_and_the_emulator_take_precedence(
    tmp_path: Path, service_account_key: dict[str, Any]
) -> None:
    path = _seed_file(tmp_path, service_account_key)
    standard = load_settings({"PUBSUB_CONFIG_PATH": path, "GOOGLE_APPLICATION_CREDENTIALS": "/keys/other.json"})
    assert standard.pubsub.key_file is None and standard.pubsub.client_kwargs() == {}  # the library reads it
    emulator = load_settings({"PUBSUB_CONFIG_PATH": path, "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085"})
    assert emulator.pubsub.client_kwargs() == {}  # anonymous on the emulator
    assert load_settings({}).pubsub.key_file is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read a JSON file"),
        ("{not json", "cannot read a JSON file"),
        ("[1, 2]", "not a JSON object"),
        ({"kafka_servers": 9092}, "kafka_servers must be"),
        ({"kafka_servers": []}, "kafka_servers must be"),
        ({"kafka_servers": ["k1:9092", ""]}, "kafka_servers must be"),
    ],
)
def test_unusable_seed_config_raises_config_error(tmp_path: Path, content: Any, message: str) -> None:
    path = str(tmp_path / "missing.json") if content is None else _seed_file(tmp_path, content)
    with pytest.raises(ConfigError, match="PUBSUB_CONFIG_PATH") as error:
        load_settings({"PUBSUB_CONFIG_PATH": path})
    assert message in str(error.value)


def test_a_seed_config_without_a_key_fails_when_pubsub_needs_it(tmp_path: Path) -> None:
    """A Kafka-only seed config loads; the Pub/Sub clients ask for the key and name the file,
    never its content."""
    path = _seed_file(tmp_path, {"kafka_servers": ["k1:9092"], "private_key": "SECRET-MATERIAL"})
    pubsub = load_settings({"PUBSUB_CONFIG_PATH": path}).pubsub
    with pytest.raises(ConfigError, match="not a usable service-account key") as error:
        pubsub.client_kwargs()
    assert path in str(error.value) and "SECRET-MATERIAL" not in str(error.value)


def test_every_pubsub_client_gets_the_seed_credentials(
    tmp_path: Path, service_account_key: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge's subscriber, setup's clients and the seed-compatible ``MainManager``."""
    from google.cloud import pubsub_v1

    from fmnist_faust.client import MainManager
    from pubsub_bridge import admin
    from pubsub_bridge.clients import subscriber_client

    received: list[str] = []

    class Client:
        def __init__(self, **kwargs: Any) -> None:
            received.append(kwargs["credentials"].service_account_email)

        def topic_path(self, project: str, topic: str) -> str:
            return f"projects/{project}/topics/{topic}"

    monkeypatch.setattr(pubsub_v1, "PublisherClient", Client)
    monkeypatch.setattr(pubsub_v1, "SubscriberClient", Client)
    settings = load_settings({"PUBSUB_CONFIG_PATH": _seed_file(tmp_path, service_account_key)})
    subscriber_client(settings.pubsub)
    admin._clients(settings)
    MainManager("pubsub", settings).create_producer("images")
    assert received == [service_account_key["client_email"]] * 4
