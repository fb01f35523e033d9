"""fmnist-faust: Fashion-MNIST classification on streams.

``faust -A fmnist_faust worker`` finds :data:`app` here. It is imported lazily, so
``fmnist_faust.core`` (shared with the Pub/Sub bridge) can be used without Faust.
Agents, tables, views and commands are imported explicitly rather than by Faust's
autodiscovery, which only logs a warning when a module fails to import.
"""

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from .app import app as faust_app
        from . import agents, commands, tables, views  # noqa: F401  register with the app

        globals()["app"] = faust_app  # shadow the submodule attribute with the App
        return faust_app
    raise AttributeError(name)
