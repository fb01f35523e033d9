"""How the package is found: ``faust -A fmnist_faust`` gets the App through a plain module
``__getattr__``, and the Pub/Sub side never imports Faust. Each check runs in a fresh
interpreter, as the commands do."""

from __future__ import annotations

import subprocess
import sys

from support import ROOT


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_the_package_attribute_app_is_the_faust_app_with_everything_registered() -> None:
    out = _python(
        "import faust, fmnist_faust, fmnist_faust.faust_app as m\n"
        "print(isinstance(fmnist_faust.app, faust.App), fmnist_faust.app is m.app,\n"
        "      type(m).__name__, sorted(fmnist_faust.app.agents), sorted(fmnist_faust.app.tables))"
    )
    assert out == "True True module ['fmnist_faust.agents.classify'] ['label-join', 'scores', 'seen-ids']"


def test_other_missing_attributes_still_raise() -> None:
    assert (
        _python("import fmnist_faust\ntry:\n    fmnist_faust.nothing\nexcept AttributeError as e:\n    print(e)")
        == "module 'fmnist_faust' has no attribute 'nothing'"
    )


def test_the_pubsub_bridge_does_not_import_faust() -> None:
    """Importing every bridge module and building its parser loads no Faust (nor mode, Faust's base)."""
    out = _python(
        "import sys\n"
        "import pubsub_bridge.__main__ as main, pubsub_bridge.bridge, pubsub_bridge.admin\n"
        "import pubsub_bridge.demo, fmnist_faust.client, fmnist_faust.cli\n"
        "from fmnist_faust.config import load_settings\n"
        "main._parser(load_settings())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'mode')))"
    )
    assert out == "[]"
