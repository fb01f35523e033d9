"""fmnist-faust: Fashion-MNIST classification on streams.

``faust -A fmnist_faust worker`` reads :data:`app` here: a module ``__getattr__`` imports
the Faust App (:mod:`.faust_app`) and the modules that register with it only when asked,
so ``fmnist_faust.core`` and the Pub/Sub bridge never import Faust. No submodule is named
``app``, so nothing shadows the attribute. Agents, tables, views and commands are imported
explicitly rather than by Faust's autodiscovery, which only logs a warning when a module
fails to import.

The worker runs on :data:`WORKER_LOOP` (uvloop: 9-28% less CPU per image than asyncio's
loop across runs of ``make bench``'s ``per_record`` stage) unless the command names a loop,
``faust -L aio -A fmnist_faust worker`` (or ``FAUST_LOOP``): the loop policy is set when
Faust asks for the app, before it creates the worker's loop.
"""

import os
from typing import Any

__all__ = ["WORKER_LOOP", "app"]
WORKER_LOOP = "uvloop"  # a name of Faust's -L option (mode.loop)


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not os.environ.get("FAUST_LOOP"):  # faust -L sets it (and F_LOOP becomes it) on import
        import mode.loop

        mode.loop.use(WORKER_LOOP)
    from . import agents, commands, tables, views  # noqa: F401  register with the app
    from .faust_app import app

    return app
