"""``python -m fmnist_faust.healthcheck worker|bridge [--ready]``: the container health probe.

Asks the local process's ``/healthz`` (with ``--ready``, then ``/readyz`` too) on the port the environment
configures (``FMNIST_WEB_PORT`` for the worker, ``BRIDGE_WEB_PORT`` for the bridge), so the
image's ``HEALTHCHECK`` and docker-compose follow the configured ports; exits 0 on 200 and
1 otherwise (no answer, or a failing check, printed), as Docker expects.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

from .config import load_settings

TIMEOUT_S = 4.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmnist_faust.healthcheck", description=__doc__)
    parser.add_argument("process", choices=("worker", "bridge"))
    parser.add_argument("--ready", action="store_true", help="ask /readyz too")
    args = parser.parse_args(argv)
    settings = load_settings()
    port = settings.web.port if args.process == "worker" else settings.bridge.web_port
    paths = ("healthz", "readyz") if args.ready else ("healthz",)
    return 0 if all(_answers_200(f"http://127.0.0.1:{port}/{path}") for path in paths) else 1


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            response.read()
            return True
    except urllib.error.HTTPError as error:
        print(f"{url}: {error.code} {error.read().decode(errors='replace')}", file=sys.stderr)
    except OSError as error:
        print(f"{url}: {error}", file=sys.stderr)
    return False


if __name__ == "__main__":
    sys.exit(main())
