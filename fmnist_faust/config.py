"""The one place that reads environment variables, and the one place for their defaults.

Every knob of fmnist-faust (Kafka, Pub/Sub, the bridge, the model, the web views) is read
here into a :class:`Settings` made of one small record per part, so each part is handed
only what it uses. :data:`VARIABLES` holds each variable's default and meaning once; the
table of docs/configuration.md is generated from it (``tools/config_table.py``) and the
parsing is checked by ``tests/test_config.py``.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.contract import BATCH_IMAGES_LIMIT

# name -> (default, meaning). "{default}" in a meaning shows the default. A relative path,
# given or default, is relative to the working directory, as Faust's datadir is: after a
# plain ``pip install`` the package's own directory is site-packages.
VARIABLES: dict[str, tuple[str, str]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("127.0.0.1:9092", "Kafka brokers, host:port[,host:port] (default {default})"),
    "KAFKA_SECURITY_PROTOCOL": ("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default {default})"),
    "KAFKA_SASL_MECHANISM": ("PLAIN", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (default {default})"),
    "KAFKA_SASL_USERNAME": ("", "SASL user name (required for SASL_*)"),
    "KAFKA_SASL_PASSWORD": ("", "SASL password"),
    "KAFKA_SSL_CAFILE": ("", "CA bundle for TLS to Kafka"),
    "KAFKA_SSL_CERTFILE": ("", "client certificate for TLS to Kafka"),
    "KAFKA_SSL_KEYFILE": ("", "client key for TLS to Kafka"),
    "FMNIST_IMAGES_TOPIC": ("images", "topic of incoming images (default {default})"),
    "FMNIST_PREDICTIONS_TOPIC": ("predictions", "topic of predictions (default {default})"),
    "FMNIST_DLQ_TOPIC": ("images-dlq", "dead-letter topic for bad messages (default {default})"),
    "FMNIST_LABELS_TOPIC": (
        "labels",
        'topic of delayed labels, `{{"id": str, "label": 0-9}}` keyed by image id, on Kafka (as many '
        "partitions as the images topic) and Pub/Sub (default {default}; see [Delayed labels](labels.md)); "
        "the Kafka worker reads none with FMNIST_PROCESSING_GUARANTEE=exactly_once, which refuses this variable set",
    ),
    "FMNIST_PARTITIONS": ("4", "partitions of the app's topics (default {default})"),
    "FMNIST_APP_ID": ("fmnist-faust", "Faust app id / consumer group (default {default})"),
    "FMNIST_WORKER_DATADIR": (".run/worker", "Faust worker data directory (default {default})"),
    "FMNIST_BATCH_SIZE": (
        "1000",
        "most records per classification batch (default {default}); the worker's batch is what has been "
        "fetched up to this, it never waits for more",
    ),
    "FMNIST_BATCH_LINGER": (
        "0.01",
        "bridge: seconds to wait filling a batch (default {default}); the Kafka worker does not wait",
    ),
    "FMNIST_MAX_MESSAGE_BYTES": (str(1 << 20), "largest accepted message in bytes (default 1 MiB)"),
    "FMNIST_MAX_BATCH_IMAGES": (
        "1000",
        "most images in one batch record, 1-2000 (default {default}); a record must also fit in "
        "FMNIST_MAX_MESSAGE_BYTES: about 1,000 images with short ids per MiB (see [Wire contract](wire-contract.md))",
    ),
    "FMNIST_WINDOW_SECONDS": ("10", "width of the accuracy and drift windows in seconds (default {default})"),
    "FMNIST_LABEL_WAIT_SECONDS": (
        "3600",
        "both backends: how long a prediction waits for its label and a label for its image, by record time, "
        "before it counts as expired (default {default}, minimum 1); bounds the join state: each id is held "
        "this long after it is first seen (see [Delayed labels](labels.md))",
    ),
    "FMNIST_DEDUPE_SECONDS": (
        "3600",
        "dedupe horizon, both backends: an image id re-sent within it is counted once, after it counts again; "
        "bounds the seen-ids state and the images subscription's retention (default {default}, minimum 1; "
        "see [Long runs](long-runs.md))",
    ),
    "FMNIST_SESSION_TIMEOUT": (
        "60",
        "Kafka consumer session timeout in seconds, minimum 6 (default {default}): a worker silent for longer "
        "loses its partitions to the others; heartbeats every tenth of it, at most 3 s",
    ),
    "FMNIST_PROCESSING_GUARANTEE": (
        "at_least_once",
        "Kafka worker: at_least_once (default) or exactly_once: each batch's predictions, dead letters, score "
        "rows, seen-id marks and input offsets committed in one transaction per input partition, so a "
        "read_committed consumer sees each image's output once (see [Exactness](exactness.md)); without "
        "delayed labels (FMNIST_LABELS_TOPIC set with exactly_once is a configuration error)",
    ),
    "FMNIST_STALL_SECONDS": (
        "60",
        "an assigned partition with images waiting and none counted for this long is logged, shown in "
        "`/stats/` (`stalled_partitions`) and `/metrics` (`fmnist_stalled_partitions`), and read again "
        "from its last counted offset (default {default})",
    ),
    "FMNIST_WEB_HOST": ("127.0.0.1", "address the web views bind to (default {default})"),
    "FMNIST_WEB_PORT": ("6066", "port of the Faust worker's web views (default {default})"),
    "FMNIST_MODEL_PATH": ("models/fmnist-mlp.joblib", "model file (.joblib; manifest beside it as .json)"),
    "FMNIST_MODEL_DIR": (
        "",
        "trusted model directory: the versions `fmnist-model` can shadow and promote, each a .joblib with "
        "its manifest (default: the folder of FMNIST_MODEL_PATH; see [Live rollout](rollout.md))",
    ),
    "FMNIST_DATA_DIR": ("", "folder with the Fashion-MNIST IDX files (default: Debian's package)"),
    "FMNIST_LOG_LEVEL": ("info", "log level (default {default})"),
    "GOOGLE_CLOUD_PROJECT": ("fmnist-local", "Google Cloud project for Pub/Sub (default {default})"),
    "GOOGLE_APPLICATION_CREDENTIALS": (
        "",
        "Google's standard key file for Pub/Sub, read by the client library (Application Default Credentials); "
        "takes precedence over PUBSUB_CONFIG_PATH",
    ),
    "PUBSUB_CONFIG_PATH": (
        "",
        "the seed demo's JSON file: a service-account key, whose credentials Pub/Sub uses unless "
        "GOOGLE_APPLICATION_CREDENTIALS is set, with `kafka_servers` (a list or a comma-separated string), the Kafka "
        "brokers unless KAFKA_BOOTSTRAP_SERVERS is set",
    ),
    "PUBSUB_EMULATOR_HOST": ("", "host:port of the Pub/Sub emulator (empty: real Pub/Sub)"),
    "PUBSUB_IMAGES_SUBSCRIPTION": ("images-sub", "subscription the bridge pulls images from (default {default})"),
    "PUBSUB_PREDICTIONS_SUBSCRIPTION": (
        "prediction-receiver",
        "subscription for reading predictions (default {default})",
    ),
    "PUBSUB_DLQ_SUBSCRIPTION": ("images-dlq-sub", "subscription on the dead-letter topic (default {default})"),
    "PUBSUB_LABELS_SUBSCRIPTION": (
        "labels-sub",
        "subscription the bridge pulls delayed labels from, on FMNIST_LABELS_TOPIC (default {default})",
    ),
    "BRIDGE_MAX_MESSAGES": ("2000", "bridge flow control: messages outstanding (default {default})"),
    "BRIDGE_MAX_BYTES": (str(64 << 20), "bridge flow control: bytes outstanding (default 64 MiB)"),
    "BRIDGE_STREAMS": (
        "4",
        "streaming pulls the bridge opens on its subscription, sharing BRIDGE_MAX_MESSAGES and BRIDGE_MAX_BYTES "
        "between them (default {default}: the emulator serves each stream at about 2,000 messages/s)",
    ),
    "BRIDGE_STATE_PATH": (
        ".run/bridge-state.sqlite3",
        "bridge state database, a SQLite file; alias of BRIDGE_STATE_URL=sqlite:///PATH (default {default})",
    ),
    "BRIDGE_STATE_URL": (
        "",
        "the bridge's state store: sqlite:///PATH (relative; sqlite:////PATH absolute) or "
        "postgresql://USER:PASSWORD@HOST:PORT/DB, shared by a fleet of replicas (default: the SQLite file "
        "BRIDGE_STATE_PATH; see [Bridge fleet](bridge-fleet.md))",
    ),
    "BRIDGE_WEB_PORT": ("6067", "port of the bridge's web views (default {default})"),
    "PUBSUB_DEAD_LETTER_TOPIC": (
        "images-dead-letter",
        "where images-sub moves a message that failed too often (default {default})",
    ),
    "PUBSUB_DEAD_LETTER_SUBSCRIPTION": (
        "images-dead-letter-sub",
        "subscription keeping those dead letters (default {default})",
    ),
    "PUBSUB_MAX_DELIVERY_ATTEMPTS": (
        "5",
        "deliveries of one message on images-sub before it is dead-lettered, 5-100 (default {default})",
    ),
    "PUBSUB_ACK_DEADLINE_SECONDS": (
        "60",
        "ack deadline of the subscriptions and the bridge's lease renewals, 10-600 (default {default})",
    ),
    "FMNIST_FAULT_WHITE_IMAGES": (
        "",
        "fault injection for drills and tests, never in production: 1 makes the worker's and the bridge's "
        "predict raise on any batch holding an all-white image (see [Operations](operations.md))",
    ),
    "FMNIST_FAULT_CRASH_AGENT_AFTER": (
        "0",
        "fault injection for drills and tests, never in production: the classify agent raises once it has "
        "taken this many records (default {default}: never; see [Operations](operations.md))",
    ),
}
ENV_VARS: dict[str, str] = {name: meaning.format(default=default) for name, (default, meaning) in VARIABLES.items()}
# The variables only the Kafka side reads; the bridge's --help lists every other one.
KAFKA_ONLY = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
    "FMNIST_PARTITIONS",
    "FMNIST_APP_ID",
    "FMNIST_WORKER_DATADIR",
    "FMNIST_SESSION_TIMEOUT",
    "FMNIST_PROCESSING_GUARANTEE",
    "FMNIST_STALL_SECONDS",
    "FMNIST_WEB_PORT",
    "FMNIST_FAULT_CRASH_AGENT_AFTER",
)
# The topics and subscriptions a run can rename: see :func:`run_names`.
NAMED_RESOURCES = (
    "FMNIST_IMAGES_TOPIC",
    "FMNIST_PREDICTIONS_TOPIC",
    "FMNIST_DLQ_TOPIC",
    "FMNIST_LABELS_TOPIC",
    "PUBSUB_DEAD_LETTER_TOPIC",
    "PUBSUB_IMAGES_SUBSCRIPTION",
    "PUBSUB_LABELS_SUBSCRIPTION",
    "PUBSUB_PREDICTIONS_SUBSCRIPTION",
    "PUBSUB_DLQ_SUBSCRIPTION",
    "PUBSUB_DEAD_LETTER_SUBSCRIPTION",
)


def run_names(tag: str) -> dict[str, str]:
    """Every topic and subscription name suffixed with ``-tag``, as environment variables: a
    demo, a test or a benchmark run gets streams and totals of its own."""
    return {name: f"{VARIABLES[name][0]}-{tag}" for name in NAMED_RESOURCES}


class ConfigError(ValueError):
    """An environment variable holds a value we cannot use."""


def _get(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    return value if value != "" else VARIABLES[name][0]


def _path(env: Mapping[str, str], name: str) -> Path:
    return Path(_get(env, name))


def _number(
    env: Mapping[str, str], name: str, minimum: float, maximum: float | None, cast: Callable[[str], Any], kind: str
) -> Any:
    raw = _get(env, name)
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {kind}") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    if maximum is not None and value > maximum:  # e.g. Pub/Sub's limits: fail before setup does
        raise ConfigError(f"{name}={value} must be <= {maximum}")
    return value


def _int(env: Mapping[str, str], name: str, minimum: int = 0, maximum: int | None = None) -> int:
    return int(_number(env, name, minimum, maximum, int, "an integer"))


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = _get(env, name).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _float(env: Mapping[str, str], name: str, minimum: float = 0.0) -> float:
    return float(_number(env, name, minimum, None, float, "a number"))


AT_LEAST_ONCE, EXACTLY_ONCE = "at_least_once", "exactly_once"
PROCESSING_GUARANTEES = (AT_LEAST_ONCE, EXACTLY_ONCE)
_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS / SASL settings for Kafka, from ``KAFKA_SECURITY_PROTOCOL`` and friends."""

    protocol: str
    sasl_mechanism: str
    sasl_username: str
    sasl_password: str = field(repr=False)
    ssl_cafile: str
    ssl_certfile: str
    ssl_keyfile: str

    def ssl_context(self) -> ssl.SSLContext | None:
        if "SSL" not in self.protocol:
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile or None)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
        return context

    def faust_credentials(self) -> Any:
        """The ``broker_credentials`` value faust expects, or None for PLAINTEXT."""
        # Import the submodule: ``faust.auth`` is not an attribute of a fresh ``import faust``.
        from faust.auth import SASLCredentials, SSLCredentials

        if self.protocol == "PLAINTEXT":
            return None
        if self.protocol == "SSL":
            return SSLCredentials(self.ssl_context())
        return SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password,
            ssl_context=self.ssl_context(),
            mechanism=self.sasl_mechanism,
        )

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (producer/consumer/admin)."""
        if self.protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if "SSL" in self.protocol:
            kwargs["ssl_context"] = self.ssl_context()
        if self.protocol.startswith("SASL"):
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kwargs


@dataclass(frozen=True)
class KafkaSettings:
    """How the worker and the Kafka clients reach the broker, and the worker's own identity."""

    bootstrap_servers: str
    security: KafkaSecurity
    partitions: int
    app_id: str
    worker_datadir: Path
    session_timeout_s: float
    stall_seconds: float
    processing_guarantee: str = "at_least_once"

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == EXACTLY_ONCE

    @property
    def reads_labels(self) -> bool:
        """Whether the worker reads the delayed-labels topic: not with exactly_once, whose
        per-partition transactions do not hold the label-join state (see ``_check_labels``)."""
        return not self.exactly_once

    @property
    def pointer_topic(self) -> str:
        """The compacted topic holding the rollout pointer of this app's workers (live/shadow)."""
        return f"{self.app_id}-model-pointer"

    @property
    def broker_url(self) -> str:
        """Faust's broker URL list: ``kafka://h1:p1;kafka://h2:p2``."""
        hosts = [h.strip() for h in self.bootstrap_servers.split(",") if h.strip()]
        return ";".join(f"kafka://{h}" for h in hosts)


@dataclass(frozen=True)
class TopicSettings:
    """The wire contract's topic names, the same on Kafka and Pub/Sub."""

    images: str
    predictions: str
    dlq: str
    labels: str


@dataclass(frozen=True)
class PipelineSettings:
    """How both adapters batch, validate and score (the core's parameters)."""

    batch_size: int
    batch_linger_s: float
    max_message_bytes: int
    max_batch_images: int
    window_seconds: int
    dedupe_seconds: float
    label_wait_s: float


@dataclass(frozen=True)
class ModelSettings:
    path: Path  # the default model: live until a version is promoted
    data_dir: Path | None  # Fashion-MNIST IDX files; None: Debian's package
    directory: Path = Path("models")  # the trusted versions a pointer may name


@dataclass(frozen=True)
class WebSettings:
    host: str  # both the worker and the bridge bind here
    port: int  # the worker's port (the bridge's is BridgeSettings.web_port)


@dataclass(frozen=True)
class PubSubSettings:
    project: str
    emulator_host: str
    images_subscription: str
    predictions_subscription: str
    dlq_subscription: str
    labels_subscription: str
    dead_letter_topic: str
    dead_letter_subscription: str
    max_delivery_attempts: int
    ack_deadline_s: int
    # The seed demo's key file (PUBSUB_CONFIG_PATH) when GOOGLE_APPLICATION_CREDENTIALS is
    # unset; None: the library's Application Default Credentials.
    key_file: Path | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the Pub/Sub clients: the key file's credentials, or none (the
        library's default credentials; anonymous ones on the emulator)."""
        if self.key_file is None or self.emulator_host:
            return {}
        from google.oauth2 import service_account

        try:
            credentials = service_account.Credentials.from_service_account_file(str(self.key_file))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"PUBSUB_CONFIG_PATH={self.key_file}: not a usable service-account key ({exc})") from None
        return {"credentials": credentials}


@dataclass(frozen=True)
class BridgeSettings:
    max_messages: int
    max_bytes: int
    streams: int
    state_path: Path
    web_port: int
    # sqlite:///... or postgresql://...; may hold a password, so never in a repr (log
    # pubsub_bridge.store.redact_url(state_url) instead).
    state_url: str = field(default="", repr=False)


@dataclass(frozen=True)
class FaultSettings:
    """Faults a drill or a test injects into a real worker or bridge; both off by default."""

    white_images: bool  # predict raises on a batch holding an all-white image
    crash_agent_after: int  # the classify agent raises once it has taken this many records; 0: never


@dataclass(frozen=True)
class Settings:
    """All runtime settings, one record per part; build with :func:`load_settings`."""

    kafka: KafkaSettings
    topics: TopicSettings
    pipeline: PipelineSettings
    model: ModelSettings
    web: WebSettings
    pubsub: PubSubSettings
    bridge: BridgeSettings
    log_level: str
    faults: FaultSettings


def _check_tls_files(security: KafkaSecurity) -> None:
    """Unusable TLS files fail here, naming the variables, not deep inside Faust later."""
    files = {
        "KAFKA_SSL_CAFILE": security.ssl_cafile,
        "KAFKA_SSL_CERTFILE": security.ssl_certfile,
        "KAFKA_SSL_KEYFILE": security.ssl_keyfile,
    }
    given = ", ".join(name for name, value in files.items() if value)
    if not given:
        return
    if "SSL" not in security.protocol:  # e.g. SASL_PLAINTEXT: a CA set here would protect nothing
        raise ConfigError(
            f"{given} set but KAFKA_SECURITY_PROTOCOL={security.protocol} does not use TLS (use SSL or SASL_SSL)"
        )
    if security.ssl_keyfile and not security.ssl_certfile:
        raise ConfigError("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE")
    try:
        security.ssl_context()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"{given}: cannot build a TLS context ({exc})") from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from ``env`` (default: ``os.environ``), validating as we go."""
    env = os.environ if env is None else env
    data_dir = _get(env, "FMNIST_DATA_DIR")
    _check_labels(env)
    seed_config = _seed_config(env)
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=_bootstrap_servers(env, seed_config),
            security=_kafka_security(env),
            partitions=_int(env, "FMNIST_PARTITIONS", minimum=1),
            app_id=_get(env, "FMNIST_APP_ID"),
            worker_datadir=_path(env, "FMNIST_WORKER_DATADIR"),
            session_timeout_s=_float(env, "FMNIST_SESSION_TIMEOUT", minimum=6.0),
            stall_seconds=_float(env, "FMNIST_STALL_SECONDS", minimum=1.0),
            processing_guarantee=_choice(env, "FMNIST_PROCESSING_GUARANTEE", PROCESSING_GUARANTEES),
        ),
        topics=TopicSettings(
            images=_get(env, "FMNIST_IMAGES_TOPIC"),
            predictions=_get(env, "FMNIST_PREDICTIONS_TOPIC"),
            dlq=_get(env, "FMNIST_DLQ_TOPIC"),
            labels=_get(env, "FMNIST_LABELS_TOPIC"),
        ),
        pipeline=PipelineSettings(
            batch_size=_int(env, "FMNIST_BATCH_SIZE", minimum=1),
            batch_linger_s=_float(env, "FMNIST_BATCH_LINGER", minimum=0.001),
            max_message_bytes=_int(env, "FMNIST_MAX_MESSAGE_BYTES", minimum=1024),
            max_batch_images=_int(env, "FMNIST_MAX_BATCH_IMAGES", minimum=1, maximum=BATCH_IMAGES_LIMIT),
            window_seconds=_int(env, "FMNIST_WINDOW_SECONDS", minimum=1),
            dedupe_seconds=_float(env, "FMNIST_DEDUPE_SECONDS", minimum=1.0),
            label_wait_s=_float(env, "FMNIST_LABEL_WAIT_SECONDS", minimum=1.0),
        ),
        model=_model_settings(env, data_dir),
        web=WebSettings(host=_get(env, "FMNIST_WEB_HOST"), port=_int(env, "FMNIST_WEB_PORT", minimum=1)),
        pubsub=PubSubSettings(
            project=_get(env, "GOOGLE_CLOUD_PROJECT"),
            emulator_host=_get(env, "PUBSUB_EMULATOR_HOST"),
            images_subscription=_get(env, "PUBSUB_IMAGES_SUBSCRIPTION"),
            predictions_subscription=_get(env, "PUBSUB_PREDICTIONS_SUBSCRIPTION"),
            dlq_subscription=_get(env, "PUBSUB_DLQ_SUBSCRIPTION"),
            labels_subscription=_get(env, "PUBSUB_LABELS_SUBSCRIPTION"),
            dead_letter_topic=_get(env, "PUBSUB_DEAD_LETTER_TOPIC"),
            dead_letter_subscription=_get(env, "PUBSUB_DEAD_LETTER_SUBSCRIPTION"),
            max_delivery_attempts=_int(env, "PUBSUB_MAX_DELIVERY_ATTEMPTS", minimum=5, maximum=100),
            ack_deadline_s=_int(env, "PUBSUB_ACK_DEADLINE_SECONDS", minimum=10, maximum=600),
            key_file=_key_file(env),
        ),
        bridge=BridgeSettings(
            max_messages=_int(env, "BRIDGE_MAX_MESSAGES", minimum=1),
            max_bytes=_int(env, "BRIDGE_MAX_BYTES", minimum=1024),
            streams=_int(env, "BRIDGE_STREAMS", minimum=1, maximum=64),
            state_path=_path(env, "BRIDGE_STATE_PATH"),
            state_url=_state_url(env),
            web_port=_int(env, "BRIDGE_WEB_PORT", minimum=1),
        ),
        log_level=_get(env, "FMNIST_LOG_LEVEL"),
        faults=FaultSettings(
            white_images=_get(env, "FMNIST_FAULT_WHITE_IMAGES") == "1",
            crash_agent_after=_int(env, "FMNIST_FAULT_CRASH_AGENT_AFTER"),
        ),
    )


def _check_labels(env: Mapping[str, str]) -> None:
    """The Kafka worker reads no delayed labels with exactly_once (``KafkaSettings.reads_labels``):
    naming a labels topic there is refused rather than half-supported."""
    labels = env.get("FMNIST_LABELS_TOPIC", "")
    if labels and _choice(env, "FMNIST_PROCESSING_GUARANTEE", PROCESSING_GUARANTEES) == EXACTLY_ONCE:
        raise ConfigError(
            f"FMNIST_LABELS_TOPIC={labels!r} with FMNIST_PROCESSING_GUARANTEE=exactly_once: delayed labels are "
            "not supported with exactly_once; unset FMNIST_LABELS_TOPIC or use at_least_once"
        )


def _seed_config(env: Mapping[str, str]) -> dict[str, Any]:
    """The JSON object in ``PUBSUB_CONFIG_PATH`` ({} when unset)."""
    path = _get(env, "PUBSUB_CONFIG_PATH")
    if not path:
        return {}
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # never echo the content: it holds a private key
        raise ConfigError(f"PUBSUB_CONFIG_PATH={path}: cannot read a JSON file ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"PUBSUB_CONFIG_PATH={path}: not a JSON object")
    return config


def _bootstrap_servers(env: Mapping[str, str], seed_config: Mapping[str, Any]) -> str:
    """``KAFKA_BOOTSTRAP_SERVERS``, else the seed config's ``kafka_servers``, else the default."""
    if env.get("KAFKA_BOOTSTRAP_SERVERS", ""):
        return _get(env, "KAFKA_BOOTSTRAP_SERVERS")
    servers = seed_config.get("kafka_servers")
    if servers is None:
        return _get(env, "KAFKA_BOOTSTRAP_SERVERS")
    if isinstance(servers, str):
        servers = servers.split(",")
    if not isinstance(servers, list) or not all(isinstance(s, str) and s.strip() for s in servers) or not servers:
        raise ConfigError("PUBSUB_CONFIG_PATH: kafka_servers must be host:port strings, as a list or comma-separated")
    return ",".join(s.strip() for s in servers)


def _key_file(env: Mapping[str, str]) -> Path | None:
    """The seed config as the Pub/Sub key, unless the standard variable names one."""
    if _get(env, "GOOGLE_APPLICATION_CREDENTIALS"):
        return None
    path = _get(env, "PUBSUB_CONFIG_PATH")
    return Path(path) if path else None


def _model_settings(env: Mapping[str, str], data_dir: str) -> ModelSettings:
    path = _path(env, "FMNIST_MODEL_PATH")
    directory = _get(env, "FMNIST_MODEL_DIR")
    return ModelSettings(
        path=path,
        data_dir=Path(data_dir) if data_dir else None,
        directory=Path(directory) if directory else path.parent,
    )


_STATE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


def _state_url(env: Mapping[str, str]) -> str:
    """``BRIDGE_STATE_URL``, or ``sqlite:///`` + ``BRIDGE_STATE_PATH`` when it is unset."""
    url = _get(env, "BRIDGE_STATE_URL")
    if not url:
        return f"sqlite:///{_path(env, 'BRIDGE_STATE_PATH')}"
    if not url.lower().startswith(_STATE_SCHEMES) or url.lower() == "sqlite:///":
        scheme = url.partition("://")[0] if "://" in url else "no scheme"  # never echo the URL: it may hold a password
        raise ConfigError(
            f"BRIDGE_STATE_URL must be sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB ({scheme!r} given)"
        )
    return url


def _kafka_security(env: Mapping[str, str]) -> KafkaSecurity:
    protocol = _get(env, "KAFKA_SECURITY_PROTOCOL").upper()
    if protocol not in _SECURITY_PROTOCOLS:
        raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol!r}: use one of {_SECURITY_PROTOCOLS}")
    mechanism = _get(env, "KAFKA_SASL_MECHANISM").upper()
    if mechanism not in _SASL_MECHANISMS:
        raise ConfigError(f"KAFKA_SASL_MECHANISM={mechanism!r}: use one of {_SASL_MECHANISMS}")
    security = KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=_get(env, "KAFKA_SASL_USERNAME"),
        sasl_password=_get(env, "KAFKA_SASL_PASSWORD"),
        ssl_cafile=_get(env, "KAFKA_SSL_CAFILE"),
        ssl_certfile=_get(env, "KAFKA_SSL_CERTFILE"),
        ssl_keyfile=_get(env, "KAFKA_SSL_KEYFILE"),
    )
    if protocol.startswith("SASL") and not security.sasl_username:
        raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME")
    _check_tls_files(security)
    return security


def env_var_names() -> tuple[str, ...]:
    """The names :func:`load_settings` reads, in order, found by running it on a recorder
    (``tests/test_readme.py`` checks them against :data:`VARIABLES`)."""
    seen: dict[str, None] = {}

    class _Recorder(dict):
        def get(self, name: str, default: Any = None) -> Any:
            seen[name] = None
            return default

    load_settings(_Recorder())
    return tuple(seen)
