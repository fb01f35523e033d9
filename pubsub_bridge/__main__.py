"""``python -m pubsub_bridge setup|run|watch`` (also installed as ``fmnist-bridge``)."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import textwrap
from collections.abc import Sequence

from fmnist_faust.config import ENV_VARS, KAFKA_ONLY, ConfigError, Settings, load_settings

from .store import redact_url


def _environment() -> str:
    """Every variable the bridge reads, with its meaning and default (``config.VARIABLES``)."""
    lines = ["environment (all optional; see fmnist_faust/config.py):"]
    for name, meaning in ENV_VARS.items():
        if name not in KAFKA_ONLY:
            plain = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", meaning).replace("`", "")  # no Markdown links
            lines.append(
                textwrap.fill(
                    plain, 100, break_on_hyphens=False, initial_indent=f"  {name:<34}", subsequent_indent=" " * 36
                )
            )
    return "\n".join(lines) + "\n"


ENVIRONMENT = _environment()


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pubsub_bridge",
        description="Classify Fashion-MNIST images on Google Pub/Sub with the same core as the Faust worker.",
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{setup,run,watch}")

    setup = commands.add_parser(
        "setup",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENVIRONMENT,
        help="create the topics and subscriptions (idempotent)",
        description=_wrap(
            f"Create, if missing, the topics {settings.topics.images}, {settings.topics.labels}, "
            f"{settings.topics.predictions}, {settings.topics.dlq} and {settings.pubsub.dead_letter_topic}, and the "
            f"subscriptions {settings.pubsub.images_subscription} (on {settings.topics.images}; after "
            f"{settings.pubsub.max_delivery_attempts} failed deliveries a message moves to "
            f"{settings.pubsub.dead_letter_topic}), {settings.pubsub.labels_subscription} (on "
            f"{settings.topics.labels}, likewise), {settings.pubsub.predictions_subscription}, "
            f"{settings.pubsub.dlq_subscription} and {settings.pubsub.dead_letter_subscription}, all with a "
            f"{settings.pubsub.ack_deadline_s} s ack deadline. Existing subscriptions whose settings "
            f"differ are updated; nothing is deleted."
        ),
    )
    setup.add_argument(
        "--purge",
        action="store_true",
        help=f"also discard the backlog of {settings.pubsub.images_subscription} and "
        f"{settings.pubsub.predictions_subscription} (seek to now), to start from empty subscriptions",
    )

    commands.add_parser(
        "run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENVIRONMENT,
        help="run the bridge until SIGTERM / Ctrl-C",
        description=_wrap(
            f"Pull {settings.pubsub.images_subscription} over {settings.bridge.streams} streaming pulls (flow "
            f"control shared between them: {settings.bridge.max_messages} messages, "
            f"{settings.bridge.max_bytes} bytes), classify up to {settings.pipeline.batch_size} images per "
            f"predict call, publish one prediction per image to {settings.topics.predictions} "
            f"(attribute id) and each invalid message to {settings.topics.dlq} (attributes error_kind, "
            f"error), join the delayed labels of {settings.pubsub.labels_subscription} to their images for up to "
            f"{settings.pipeline.label_wait_s:g} s, "
            f"count every image once in {redact_url(settings.bridge.state_url)}, and serve /, /accuracy/, "
            f"/accuracy/window/, /recent/, /stats/ and /metrics on "
            f"http://{settings.web.host}:{settings.bridge.web_port}/. A message is acked only after "
            f"its prediction or dead letter is published and its count is committed. "
            f"Exits 0 after SIGTERM or Ctrl-C, 1 on an error."
        ),
    )

    watch = commands.add_parser(
        "watch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENVIRONMENT,
        help="print running accuracy from the predictions subscription",
        description=_wrap(
            f"Follow {settings.pubsub.predictions_subscription} and print running accuracy once a "
            f"second (each image id counted once), until Ctrl-C, --count or --timeout."
        ),
    )
    watch.add_argument(
        "--subscription",
        default=settings.pubsub.predictions_subscription,
        help="subscription on the predictions topic (default %(default)s)",
    )
    watch.add_argument("--count", type=int, default=0, help="stop after N distinct predictions (0 = never)")
    watch.add_argument("--timeout", type=float, default=0, help="stop after this many seconds (0 = never)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings()
        settings.pubsub.client_kwargs()  # an unusable key file fails here, not in a client
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    args = _parser(settings).parse_args(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.command == "setup":
        from .admin import SetupError, setup

        try:
            for line in setup(settings, purge=args.purge):
                print(line)
        except SetupError as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "run":
        from .bridge import run

        return run(settings)
    from fmnist_faust.cli import logger_main

    return logger_main(
        [
            "--backend",
            "pubsub",
            "--subscription",
            args.subscription,
            "--count",
            str(args.count),
            "--timeout",
            str(args.timeout),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
