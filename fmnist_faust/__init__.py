"""fmnist-faust: Fashion-MNIST classification on streams.

``faust -A fmnist_faust worker`` reads :data:`app` here: a module ``__getattr__`` imports
the Faust App (:mod:`.faust_app`) and the modules that register with it only when asked,
so ``fmnist_faust.core`` and the Pub/Sub bridge never import Faust. No submodule is named
``app``, so nothing shadows the attribute. Agents, tables, views and commands are imported
explicitly rather than by Faust's autodiscovery, which only logs a warning when a module
fails to import.
"""

from typing import Any

__all__ = ["WORKER_LOOP", "app"]
WORKER_LOOP = "aio"  # the worker's event loop (Faust's -L names)


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import agents, commands, tables, views  # noqa: F401  register with the app
    from .faust_app import app

    return app
