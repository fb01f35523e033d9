"""The one place that reads environment variables.

Every knob of fmnist-faust (Kafka, Pub/Sub, model, web) is read here, so the README's
configuration table and the code cannot drift apart: ``tests/test_config.py`` checks that
each variable below is documented.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

_REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """An environment variable holds a value we cannot use."""


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "")
    return value if value != "" else default


def _number(env: Mapping[str, str], name: str, default: float, minimum: float,
            cast: Callable[[str], Any], kind: str) -> Any:
    raw = _get(env, name, str(default))
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {kind}") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    return int(_number(env, name, default, minimum, int, "an integer"))


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    return float(_number(env, name, default, minimum, float, "a number"))


_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS / SASL settings for Kafka, from ``KAFKA_SECURITY_PROTOCOL`` and friends."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

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
class Settings:
    """All runtime settings; build with :func:`load_settings`."""

    kafka_bootstrap_servers: str
    kafka_security: KafkaSecurity
    images_topic: str
    predictions_topic: str
    dlq_topic: str
    partitions: int
    app_id: str
    data_dir: Path
    batch_size: int
    batch_linger_s: float
    max_message_bytes: int
    window_seconds: int
    stall_seconds: float
    session_timeout_s: float
    web_host: str
    web_port: int
    model_path: Path
    fmnist_data_dir: str
    log_level: str
    gcp_project: str
    pubsub_emulator_host: str
    images_subscription: str
    predictions_subscription: str
    dlq_subscription: str
    bridge_max_messages: int
    bridge_max_bytes: int
    bridge_state_path: Path
    bridge_web_port: int
    dead_letter_topic: str = "images-dead-letter"
    dead_letter_subscription: str = "images-dead-letter-sub"
    max_delivery_attempts: int = 5
    ack_deadline_s: int = 60
    dedupe_seconds: float = 3600.0

    @property
    def manifest_path(self) -> Path:
        return self.model_path.with_suffix(".json")

    @property
    def kafka_broker_url(self) -> str:
        """Faust's broker URL list: ``kafka://h1:p1;kafka://h2:p2``."""
        hosts = [h.strip() for h in self.kafka_bootstrap_servers.split(",") if h.strip()]
        return ";".join(f"kafka://{h}" for h in hosts)


def _check_tls_files(security: KafkaSecurity) -> None:
    """Unusable TLS files fail here, naming the variables, not deep inside Faust later."""
    files = {"KAFKA_SSL_CAFILE": security.ssl_cafile, "KAFKA_SSL_CERTFILE": security.ssl_certfile,
             "KAFKA_SSL_KEYFILE": security.ssl_keyfile}
    given = ", ".join(name for name, value in files.items() if value)
    if not given:
        return
    if "SSL" not in security.protocol:  # e.g. SASL_PLAINTEXT: a CA set here would protect nothing
        raise ConfigError(f"{given} set but KAFKA_SECURITY_PROTOCOL={security.protocol} does not use TLS "
                          "(use SSL or SASL_SSL)")
    if security.ssl_keyfile and not security.ssl_certfile:
        raise ConfigError("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE")
    try:
        security.ssl_context()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"{given}: cannot build a TLS context ({exc})") from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from ``env`` (default: ``os.environ``), validating as we go."""
    env = os.environ if env is None else env
    protocol = _get(env, "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol not in _SECURITY_PROTOCOLS:
        raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol!r}: use one of {_SECURITY_PROTOCOLS}")
    mechanism = _get(env, "KAFKA_SASL_MECHANISM", "PLAIN").upper()
    if mechanism not in _SASL_MECHANISMS:
        raise ConfigError(f"KAFKA_SASL_MECHANISM={mechanism!r}: use one of {_SASL_MECHANISMS}")
    security = KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=_get(env, "KAFKA_SASL_USERNAME", ""),
        sasl_password=_get(env, "KAFKA_SASL_PASSWORD", ""),
        ssl_cafile=_get(env, "KAFKA_SSL_CAFILE", ""),
        ssl_certfile=_get(env, "KAFKA_SSL_CERTFILE", ""),
        ssl_keyfile=_get(env, "KAFKA_SSL_KEYFILE", ""),
    )
    if protocol.startswith("SASL") and not security.sasl_username:
        raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME")
    _check_tls_files(security)
    return Settings(
        kafka_bootstrap_servers=_get(env, "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        kafka_security=security,
        images_topic=_get(env, "FMNIST_IMAGES_TOPIC", "images"),
        predictions_topic=_get(env, "FMNIST_PREDICTIONS_TOPIC", "predictions"),
        dlq_topic=_get(env, "FMNIST_DLQ_TOPIC", "images-dlq"),
        partitions=_int(env, "FMNIST_PARTITIONS", 4, minimum=1),
        app_id=_get(env, "FMNIST_APP_ID", "fmnist-faust"),
        data_dir=Path(_get(env, "FMNIST_WORKER_DATADIR", str(_REPO_ROOT / ".run" / "worker"))),
        batch_size=_int(env, "FMNIST_BATCH_SIZE", 500, minimum=1),
        batch_linger_s=_float(env, "FMNIST_BATCH_LINGER", 0.01, minimum=0.001),
        max_message_bytes=_int(env, "FMNIST_MAX_MESSAGE_BYTES", 1 << 20, minimum=1024),
        window_seconds=_int(env, "FMNIST_WINDOW_SECONDS", 10, minimum=1),
        stall_seconds=_float(env, "FMNIST_STALL_SECONDS", 60.0, minimum=1.0),
        session_timeout_s=_float(env, "FMNIST_SESSION_TIMEOUT", 60.0, minimum=6.0),
        web_host=_get(env, "FMNIST_WEB_HOST", "127.0.0.1"),
        web_port=_int(env, "FMNIST_WEB_PORT", 6066, minimum=1),
        model_path=Path(_get(env, "FMNIST_MODEL_PATH", str(_REPO_ROOT / "models" / "fmnist-mlp.joblib"))),
        fmnist_data_dir=_get(env, "FMNIST_DATA_DIR", ""),
        log_level=_get(env, "FMNIST_LOG_LEVEL", "info"),
        gcp_project=_get(env, "GOOGLE_CLOUD_PROJECT", "fmnist-local"),
        pubsub_emulator_host=_get(env, "PUBSUB_EMULATOR_HOST", ""),
        images_subscription=_get(env, "PUBSUB_IMAGES_SUBSCRIPTION", "images-sub"),
        predictions_subscription=_get(env, "PUBSUB_PREDICTIONS_SUBSCRIPTION", "prediction-receiver"),
        dlq_subscription=_get(env, "PUBSUB_DLQ_SUBSCRIPTION", "images-dlq-sub"),
        bridge_max_messages=_int(env, "BRIDGE_MAX_MESSAGES", 2000, minimum=1),
        bridge_max_bytes=_int(env, "BRIDGE_MAX_BYTES", 64 << 20, minimum=1024),
        bridge_state_path=Path(_get(env, "BRIDGE_STATE_PATH", str(_REPO_ROOT / ".run" / "bridge-state.sqlite3"))),
        bridge_web_port=_int(env, "BRIDGE_WEB_PORT", 6067, minimum=1),
        dead_letter_topic=_get(env, "PUBSUB_DEAD_LETTER_TOPIC", "images-dead-letter"),
        dead_letter_subscription=_get(env, "PUBSUB_DEAD_LETTER_SUBSCRIPTION", "images-dead-letter-sub"),
        max_delivery_attempts=_at_most(
            "PUBSUB_MAX_DELIVERY_ATTEMPTS", _int(env, "PUBSUB_MAX_DELIVERY_ATTEMPTS", 5, minimum=5), 100),
        ack_deadline_s=_at_most(
            "PUBSUB_ACK_DEADLINE_SECONDS", _int(env, "PUBSUB_ACK_DEADLINE_SECONDS", 60, minimum=10), 600),
        dedupe_seconds=_float(env, "FMNIST_DEDUPE_SECONDS", 3600.0, minimum=1.0),
    )


def _at_most(name: str, value: int, maximum: int) -> int:
    """Pub/Sub rejects values above its limits at setup time; fail earlier, naming the variable."""
    if value > maximum:
        raise ConfigError(f"{name}={value} must be <= {maximum}")
    return value


# Every environment variable :func:`load_settings` reads, with a one-line meaning.
# Kept equal to what load_settings actually reads: see :func:`env_var_names` (and the test
# in tests/test_compose.py that compares the two).
ENV_VARS: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "Kafka brokers, host:port[,host:port] (default 127.0.0.1:9092)",
    "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default PLAINTEXT)",
    "KAFKA_SASL_MECHANISM": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (default PLAIN)",
    "KAFKA_SASL_USERNAME": "SASL user name (required for SASL_*)",
    "KAFKA_SASL_PASSWORD": "SASL password",
    "KAFKA_SSL_CAFILE": "CA bundle for TLS to Kafka",
    "KAFKA_SSL_CERTFILE": "client certificate for TLS to Kafka",
    "KAFKA_SSL_KEYFILE": "client key for TLS to Kafka",
    "FMNIST_IMAGES_TOPIC": "topic of incoming images (default images)",
    "FMNIST_PREDICTIONS_TOPIC": "topic of predictions (default predictions)",
    "FMNIST_DLQ_TOPIC": "dead-letter topic for bad messages (default images-dlq)",
    "FMNIST_PARTITIONS": "partitions of the app's topics (default 4)",
    "FMNIST_APP_ID": "Faust app id / consumer group (default fmnist-faust)",
    "FMNIST_WORKER_DATADIR": "Faust worker data directory (default .run/worker)",
    "FMNIST_BATCH_SIZE": "images per classification batch (default 500)",
    "FMNIST_BATCH_LINGER": "seconds to wait filling a batch (default 0.01: lowest p99 in make bench)",
    "FMNIST_MAX_MESSAGE_BYTES": "largest accepted message in bytes (default 1 MiB)",
    "FMNIST_WINDOW_SECONDS": "width of the accuracy windows in seconds (default 10)",
    "FMNIST_WEB_HOST": "address the web views bind to (default 127.0.0.1)",
    "FMNIST_WEB_PORT": "port of the Faust worker's web views (default 6066)",
    "FMNIST_MODEL_PATH": "model file (.joblib; manifest beside it as .json)",
    "FMNIST_DATA_DIR": "folder with the Fashion-MNIST IDX files (default: Debian's package)",
    "FMNIST_LOG_LEVEL": "log level (default info)",
    "GOOGLE_CLOUD_PROJECT": "Google Cloud project for Pub/Sub (default fmnist-local)",
    "PUBSUB_EMULATOR_HOST": "host:port of the Pub/Sub emulator (empty: real Pub/Sub)",
    "PUBSUB_IMAGES_SUBSCRIPTION": "subscription the bridge pulls images from (default images-sub)",
    "PUBSUB_PREDICTIONS_SUBSCRIPTION": "subscription for reading predictions (default prediction-receiver)",
    "PUBSUB_DLQ_SUBSCRIPTION": "subscription on the dead-letter topic (default images-dlq-sub)",
    "BRIDGE_MAX_MESSAGES": "bridge flow control: messages outstanding (default 2000)",
    "BRIDGE_MAX_BYTES": "bridge flow control: bytes outstanding (default 64 MiB)",
    "BRIDGE_STATE_PATH": "bridge state database (default .run/bridge-state.sqlite3)",
    "BRIDGE_WEB_PORT": "port of the bridge's web views (default 6067)",
    "PUBSUB_DEAD_LETTER_TOPIC": "where images-sub moves a message that failed too often (default images-dead-letter)",
    "PUBSUB_DEAD_LETTER_SUBSCRIPTION": "subscription keeping those dead letters (default images-dead-letter-sub)",
    "PUBSUB_MAX_DELIVERY_ATTEMPTS": "deliveries of one message on images-sub before it is dead-lettered, 5-100 (default 5)",
    "PUBSUB_ACK_DEADLINE_SECONDS": "ack deadline of the subscriptions and the bridge's lease renewals, 10-600 (default 60)",
    "FMNIST_DEDUPE_SECONDS": "dedupe horizon, both backends: an image id re-sent within it is counted once, after it "
                             "counts again; bounds the seen-ids state and the images subscription's retention "
                             "(default 3600, minimum 1; see Long runs)",
}


def env_var_names() -> tuple[str, ...]:
    """The names :func:`load_settings` reads, in order, found by running it on a recorder."""
    seen: dict[str, None] = {}

    class _Recorder(dict):
        def get(self, name: str, default: Any = None) -> Any:
            seen[name] = None
            return default

    load_settings(_Recorder())
    return tuple(seen)
