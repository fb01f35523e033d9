"""Live rollout on the worker: which models the classify agent uses, following the pointer topic.

At start (``agents.prepare``, before the consumer and the agents run) the default model is
verified, then the pointer topic (:mod:`.pointer_topic`) is read to its end and the
versions it names are loaded: a restarted worker counts its first batch with the promoted
version. Afterwards :func:`follow_pointer` polls the topic twice a second and loads what
changed in a thread; the agent takes one :func:`current_models` snapshot per batch, so a
switch falls between batches, in the same process (no restart).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mode import Service

from .core.registry import ModelRegistry, RolloutState
from .core.rollout import ActiveModels, ModelSwitch
from .faust_app import app, settings
from .pointer_topic import PointerReader, ensure_pointer_topic

log = logging.getLogger(__name__)
registry = ModelRegistry(
    settings.model.directory, settings.model.path, fail_on_white_images=settings.faults.white_images
)
pointer = PointerReader(settings)
_switch: ModelSwitch | None = None


def load_default() -> ModelSwitch:
    """Verify and load the default model (a bad one stops the worker before anything starts)."""
    global _switch
    _switch = ModelSwitch(registry, registry.load(None))
    live = _switch.current().live
    log.info("model loaded: version %s (test accuracy %s)", live.version, live.manifest.get("test_accuracy"))
    return _switch


async def read_pointer() -> RolloutState:
    """Create the pointer topic if needed and read its newest state (the broker answers by now)."""
    await ensure_pointer_topic(settings)
    return await pointer.read_to_end()


async def apply_pointer(state: RolloutState) -> None:
    """Serve what ``state`` names; models are loaded in a thread, off the event loop."""
    if _switch is not None and state != _switch.state:  # unchanged (the usual case): no thread hop
        await asyncio.to_thread(_switch.apply, state)


def current_models() -> ActiveModels:
    """The models for the next batch."""
    if _switch is None:
        raise RuntimeError("the models are not loaded yet (agents.prepare runs first)")
    return _switch.current()


def manifest_of(version: str) -> dict[str, Any] | None:
    """The manifest of ``version`` (drift's reference), from the models loaded or the directory."""
    return _switch.manifest(version) if _switch is not None else None


def status() -> dict[str, Any]:
    """What this worker serves (``/stats/`` ``models``; ``fmnist-model status``)."""
    return _switch.status() if _switch is not None else {}


@app.timer(0.5)
async def follow_pointer() -> None:
    try:
        state = await pointer.poll()
    except Exception as exc:  # the broker may be briefly away: keep the models, try again
        log.warning("reading the model pointer failed (%r); keeping the current models", exc)
        return
    await apply_pointer(state)


@app.service
class PointerReaderService(Service):
    """Closes the pointer reader's Kafka connection when the worker stops."""

    async def on_stop(self) -> None:
        await pointer.stop()
