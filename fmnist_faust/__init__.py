"""fmnist-faust: Fashion-MNIST classification on streams.

``faust -A fmnist_faust worker`` finds :data:`app` here. It is imported lazily, so
``fmnist_faust.core`` (shared with the Pub/Sub bridge) can be used without Faust.
Agents, tables, views and commands are imported explicitly rather than by Faust's
autodiscovery, which only logs a warning when a module fails to import.
"""

import sys
import types
from typing import Any

__all__ = ["app"]


class _Package(types.ModuleType):
    """Makes ``fmnist_faust.app`` the Faust App even after the ``app`` submodule loads.

    Python sets a package attribute to each imported submodule; a property on the
    module's class wins over that, so Faust's ``-A fmnist_faust`` always finds the App.
    """

    @property
    def app(self) -> Any:
        from . import agents, commands, tables, views  # noqa: F401  register with the app
        from .app import app as faust_app

        return faust_app

    @app.setter
    def app(self, _submodule: Any) -> None:
        """Ignore the import system binding the ``app`` submodule here."""


sys.modules[__name__].__class__ = _Package
