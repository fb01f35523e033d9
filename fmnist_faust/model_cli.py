"""``fmnist-model``: list the verified versions, and shadow, promote or unshadow one on either backend.

The control path of a live rollout (no HTTP endpoint changes state): this command writes
the rollout pointer (version + SHA-256, never model bytes) where the processes follow it —
the compacted pointer topic on Kafka, with the broker's own credentials (``KAFKA_*``), or
the bridge's state store on Pub/Sub (``BRIDGE_STATE_URL``, the database's credentials).
A version is checked against its manifest in ``FMNIST_MODEL_DIR`` before its pointer is
written; an unknown or tampered one is refused (exit 2). ``status`` also asks the running
worker or bridge (``--url``) what it serves, and what it refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

from .config import ConfigError, Settings, load_settings
from .core.model import ModelError
from .core.registry import ModelRegistry, RolloutState

EXIT_REFUSED = 2  # unknown version, tampered file, bad configuration
EXIT_UNREACHABLE = 1  # the broker or the state store did not answer


class PointerStore(Protocol):
    where: str

    def read(self) -> RolloutState: ...

    def write(self, state: RolloutState) -> None: ...


class KafkaPointer:
    """The compacted pointer topic of ``FMNIST_APP_ID``'s workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.where = f"Kafka topic {settings.kafka.pointer_topic} on {settings.kafka.bootstrap_servers}"

    def read(self) -> RolloutState:
        from .pointer_topic import read_state

        return asyncio.run(asyncio.wait_for(read_state(self.settings, timeout=15.0), 30.0))

    def write(self, state: RolloutState) -> None:
        from .pointer_topic import write_state

        asyncio.run(asyncio.wait_for(write_state(self.settings, state), 30.0))


class StorePointer:
    """The pointer row in the bridge's state store (SQLite file or PostgreSQL)."""

    def __init__(self, settings: Settings) -> None:
        from pubsub_bridge.store import redact_url

        self.settings = settings
        self.where = f"state store {redact_url(settings.bridge.state_url)}"

    def _open(self) -> Any:
        from pubsub_bridge.store import open_store

        return open_store(self.settings.bridge.state_url, horizon_s=self.settings.pipeline.dedupe_seconds)

    def read(self) -> RolloutState:
        store = self._open()
        try:
            return store.rollout_state()
        finally:
            store.close()

    def write(self, state: RolloutState) -> None:
        store = self._open()
        try:
            store.set_rollout_state(state)
        finally:
            store.close()


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmnist-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("kafka", "pubsub"), default="kafka", help="default %(default)s")
    parser.add_argument("--url", help="the worker's / bridge's web views for status (default: from the settings)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help=f"the verified versions in {settings.model.directory}, live and shadow marked")
    commands.add_parser("status", help="the pointer, and what the running worker / bridge serves")
    shadow = commands.add_parser("shadow", help="classify every batch with VERSION too, without publishing it")
    shadow.add_argument("version")
    promote = commands.add_parser("promote", help="make VERSION the live model (between batches, no restart)")
    promote.add_argument("version")
    commands.add_parser("unshadow", help="stop the shadow model")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    args = _parser(settings).parse_args(argv)
    registry = ModelRegistry(settings.model.directory, settings.model.path)
    pointers: PointerStore = KafkaPointer(settings) if args.backend == "kafka" else StorePointer(settings)
    url = args.url or _default_url(settings, args.backend)
    try:
        if args.command == "list":
            return _list(registry, pointers)
        if args.command == "status":
            return _status(registry, pointers, url)
        return _change(registry, pointers, args.command, getattr(args, "version", None))
    except ModelError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ValueError as exc:  # a pointer record that is not one
        print(f"refused: the pointer in {pointers.where} is not readable: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as exc:  # broker or database away, credentials refused
        print(f"cannot reach the {pointers.where}: {exc!r}", file=sys.stderr)
        return EXIT_UNREACHABLE


def _default_url(settings: Settings, backend: str) -> str:
    host = "127.0.0.1" if settings.web.host in ("0.0.0.0", "::", "") else settings.web.host
    port = settings.web.port if backend == "kafka" else settings.bridge.web_port
    return f"http://{host}:{port}"


def _roles(registry: ModelRegistry, state: RolloutState) -> dict[str, str]:
    roles = {}
    if state.live:
        roles[state.live.version] = "live"
    else:
        try:
            roles[registry.default().version] = "live (default)"
        except ModelError:  # no default model here: nothing to mark
            pass
    if state.shadow:
        roles[state.shadow.version] = "shadow"
    return roles


def _list(registry: ModelRegistry, pointers: PointerStore) -> int:
    try:
        roles = _roles(registry, pointers.read())
    except Exception as exc:  # still list what the directory holds
        print(f"(the pointer in the {pointers.where} is not readable: {exc!r}; roles unknown)", file=sys.stderr)
        roles = {}
    entries = registry.entries()
    if not entries:
        print(f"no verified model in {registry.directory}")
        return 0
    print(f"{'VERSION':<18} {'ROLE':<15} {'TEST ACC':>8}  {'DRIFT REF':<9}  {'CREATED':<20} FILE")
    for entry in entries:
        accuracy = f"{entry.test_accuracy:.4f}" if entry.test_accuracy is not None else "-"
        role = roles.get(entry.version, "")
        reference = "yes" if entry.drift_reference else "no"
        print(
            f"{entry.version:<18} {role:<15} {accuracy:>8}  {reference:<9}  {entry.created_at or '-':<20} {entry.path}"
        )
    return 0


def _status(registry: ModelRegistry, pointers: PointerStore, url: str) -> int:
    state = pointers.read()
    print(f"pointer ({pointers.where}):")
    live = f"{state.live.version} sha256 {state.live.sha256[:16]}..." if state.live else "(none: the default model)"
    print(f"  live:   {live}")
    print(f"  shadow: {state.shadow.version if state.shadow else '-'}")
    if state.updated_at:
        print(f"  set at: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(state.updated_at))}")
    try:
        stats = _get_json(url + "/stats/")
        report = _get_json(url + "/accuracy/")
    except (OSError, ValueError) as exc:
        print(f"serving ({url}): not reachable ({exc})")
        return 0
    models = stats.get("models", {})
    print(f"serving ({url}): live {models.get('live')}, shadow {models.get('shadow') or '-'}")
    for version, reason in models.get("refused", {}).items():
        print(f"  refused {version}: {reason}")
    for version, part in report.get("by_model", {}).items():
        live_part, shadow_part = part.get("live"), part.get("shadow")
        line = f"  {version:<18} {part['role']:<8}"
        if live_part:
            line += f" counted {live_part['images']} images, accuracy {_pct(live_part['accuracy'])}"
        if shadow_part:
            line += (
                f" shadow {shadow_part['compared']} images, accuracy {_pct(shadow_part['accuracy'])},"
                f" agreement {_pct(shadow_part['agreement'])}"
            )
        print(line)
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (a URL the operator gave)
        return dict(json.loads(response.read()))


def _change(registry: ModelRegistry, pointers: PointerStore, command: str, version: str | None) -> int:
    state = pointers.read()
    current_live = state.live.version if state.live else registry.default().version
    if command == "unshadow":
        if state.shadow is None:
            print("no shadow model: nothing to do")
            return 0
        pointers.write(state.shadowed(None))
        print(f"unshadowed {state.shadow.version}; live {current_live}")
        return 0
    assert version is not None
    pointer = registry.verified_pointer(version)  # unknown or tampered: ModelError, exit 2
    if command == "shadow":
        if version == current_live:
            print(f"refused: {version} is the live model; shadow another version", file=sys.stderr)
            return EXIT_REFUSED
        pointers.write(state.shadowed(pointer))
        print(f"shadow: {version} (sha256 {pointer.sha256[:16]}...); live {current_live}")
        return 0
    if state.live == pointer:
        print(f"{version} is already live")
        return 0
    pointers.write(state.promoted(pointer))
    print(f"promoted {version} (sha256 {pointer.sha256[:16]}...); was {current_live}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
