"""Live rollout, shared by both backends: switching models, shadow predictions, per-model scores.

- :class:`ModelSwitch` holds the models a process serves (live, optional shadow). A
  follower (the worker's timer, the bridge's thread) hands it each :class:`RolloutState`
  it reads; it loads the named versions through the :class:`~.registry.ModelRegistry`
  (verified against the pointer) and swaps them in one assignment. A batch takes one
  snapshot (:meth:`ModelSwitch.current`) before it is classified, so a switch always
  falls between batches and a batch is classified by exactly one live version. A version
  that is missing or does not match its pointer is refused with one log line; the
  current one keeps serving. A process that has not loaded a live version yet (it just
  started) serves the newest one of the state's ``previous`` it can load instead: the
  last good version, as the processes that refused it while running do.
- :func:`shadow_predict`: the shadow classifies the valid images of the live batch in one
  more predict call; its predictions are never published, only scored.
- :class:`ModelTally`: the per-version part of a score record, counted from the very same
  outcomes as the totals, so the live parts sum exactly to the totals. Shadow parts (with
  the agreement between shadow and live) sit beside them and are not in the totals. Each
  part also holds its version's drift windows (:mod:`.drift`): what it was shown and
  answered per window, counted in the same step as its scores.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import drift
from .contract import Prediction
from .drift import DriftWindows, Observations
from .model import Classifier, ModelError, read_manifest
from .pipeline import BatchResult
from .registry import ModelPointer, ModelRegistry, RolloutState
from .scores import Scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveModels:
    """The models one batch is classified with."""

    live: Classifier
    shadow: Classifier | None = None


class ModelSwitch:
    """The live and shadow models of one process, switched by pointer (see the module doc)."""

    def __init__(self, registry: ModelRegistry | None, live: Classifier) -> None:
        self.registry = registry
        self._current = ActiveModels(live)
        self._pointers: tuple[ModelPointer | None, ModelPointer | None] = (None, None)
        self._state: RolloutState | None = None
        self.refused: dict[str, str] = {}  # version -> why it was refused (last attempt)
        self._lock = threading.Lock()  # one apply at a time (a follower and a start may overlap)

    @classmethod
    def fixed(cls, classifier: Classifier) -> ModelSwitch:
        """A switch that never changes models (no registry): tests and single-model tools."""
        return cls(None, classifier)

    @classmethod
    def start(cls, registry: ModelRegistry, state: RolloutState) -> ModelSwitch:
        """The models ``state`` names, for a process starting up. A live version it cannot
        load is refused (one error line) and the last good one serves instead (the state's
        ``previous``; the default model if none loads); a default model that cannot be
        loaded raises :class:`ModelError` (the process cannot serve)."""
        switch = cls(registry, registry.load(None))
        switch.apply(state)
        return switch

    def current(self) -> ActiveModels:
        return self._current

    @property
    def state(self) -> RolloutState | None:
        """The last pointer state applied (None: none yet)."""
        return self._state

    def apply(self, state: RolloutState) -> bool:
        """Serve what ``state`` names; True if a model changed. Called off the batch path
        (loading takes a while); the swap itself is one assignment."""
        with self._lock:
            if self.registry is None or state == self._state:
                return False
            self._state = state
            live_pointer, shadow_pointer = self._pointers
            live, shadow = self._current.live, self._current.shadow
            if state.live != live_pointer:
                loaded = self._load(state.live, "live")
                if loaded is not None:
                    live, live_pointer = loaded, state.live
                elif live_pointer is None:  # just started: serve the last good version, not the default
                    live, live_pointer = self._last_good(state, live, live_pointer)
            if state.shadow != shadow_pointer:
                if state.shadow is None:
                    shadow, shadow_pointer = None, None
                else:
                    loaded = self._load(state.shadow, "shadow")
                    if loaded is not None:
                        shadow, shadow_pointer = loaded, state.shadow
            if shadow is not None and shadow.version == live.version:  # promoted: no shadow of itself
                shadow, shadow_pointer = None, None
            changed = (live, shadow) != (self._current.live, self._current.shadow)
            if changed:
                log.info(
                    "models switched between batches: live %s (was %s), shadow %s (was %s)",
                    live.version,
                    self._current.live.version,
                    shadow.version if shadow else None,
                    self._current.shadow.version if self._current.shadow else None,
                )
            self._current = ActiveModels(live, shadow)
            self._pointers = (live_pointer, shadow_pointer)
            return changed

    def _last_good(
        self, state: RolloutState, live: Classifier, pointer: ModelPointer | None
    ) -> tuple[Classifier, ModelPointer | None]:
        for previous in state.previous:
            loaded = self._load(previous, "previous live")
            if loaded is not None:
                log.warning(
                    "serving %s, the last good live version before the refused %s",
                    loaded.version,
                    state.live.version if state.live else "default",
                )
                return loaded, previous
        return live, pointer

    def _load(self, pointer: ModelPointer | None, role: str) -> Classifier | None:
        assert self.registry is not None
        try:
            classifier = self.registry.load(pointer)
        except (ModelError, OSError, ValueError) as exc:
            version = pointer.version if pointer else "default"
            self.refused[version] = str(exc)
            log.error("refusing %s model %s: %s; still serving live %s", role, version, exc, self._current.live.version)
            return None
        self.refused.pop(classifier.version, None)
        return classifier

    def manifest(self, version: str) -> dict[str, Any] | None:
        """The manifest of ``version``: the loaded model's, else the one in the registry's
        directory (read, never unpickled); None if there is none (drift: no reference)."""
        current = self._current
        for classifier in (current.live, current.shadow):
            if classifier is not None and classifier.version == version:
                return classifier.manifest
        if self.registry is None:
            return None
        try:
            return read_manifest(self.registry.find(version).path)
        except (ModelError, OSError, ValueError):
            return None

    def status(self) -> dict[str, Any]:
        """What this process serves, for ``/stats/`` and ``fmnist-model status``."""
        current = self._current
        state = self._state
        return {
            "live": current.live.version,
            "shadow": current.shadow.version if current.shadow else None,
            "pointer": {
                "live": state.live.version if state and state.live else None,
                "shadow": state.shadow.version if state and state.shadow else None,
            },
            "refused": dict(self.refused),
        }


@dataclass
class ShadowBatch:
    """The shadow's class and confidence for each outcome of a live batch (None where the
    outcome is no prediction)."""

    version: str
    predicted: list[int | None]
    confidence: list[float | None]

    def subset(self, keep: Callable[[int], bool]) -> ShadowBatch:
        """Mirrors :meth:`BatchResult.subset`: the same indices, so the two stay aligned."""
        return self.take([i for i in range(len(self.predicted)) if keep(i)])

    def take(self, indices: Sequence[int]) -> ShadowBatch:
        """Mirrors :meth:`BatchResult.take`."""
        return ShadowBatch(self.version, [self.predicted[i] for i in indices], [self.confidence[i] for i in indices])


def shadow_predict(shadow: Classifier | None, result: BatchResult) -> ShadowBatch | None:
    """One predict call of the shadow on the live batch's valid images (None: no shadow)."""
    if shadow is None:
        return None
    predicted: list[int | None] = [None] * len(result.outcomes)
    confidence: list[float | None] = [None] * len(result.outcomes)
    valid = [i for i, outcome in enumerate(result.outcomes) if isinstance(outcome, Prediction)]
    if valid:
        guesses, certainty = shadow.predict(np.stack([result.pixels[i] for i in valid]))  # type: ignore[misc]
        for index, guess, conf in zip(valid, guesses.tolist(), certainty.tolist()):
            predicted[index] = guess
            confidence[index] = conf
    return ShadowBatch(shadow.version, predicted, confidence)


def _counts_only(scores: Scores) -> Scores:
    """Per-version parts keep no windows: the totals have them, and rows stay small."""
    scores.windows.clear()
    return scores


@dataclass
class ShadowPart:
    """What a shadow version would have scored on the images it saw, how often it agreed,
    and its drift windows on them."""

    scores: Scores = field(default_factory=Scores)
    compared: int = 0  # valid images both models classified
    agreed: int = 0  # of those, how many got the same class
    drift: DriftWindows = field(default_factory=DriftWindows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores.to_dict(),
            "compared": self.compared,
            "agreed": self.agreed,
            "drift": self.drift.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShadowPart:
        return cls(
            Scores.from_dict(data["scores"]),
            int(data.get("compared", 0)),
            int(data.get("agreed", 0)),
            DriftWindows.from_dict(data.get("drift")),
        )


@dataclass
class LivePart:
    """A version's share of the totals, when it counted its first image (record time), and
    its drift windows."""

    scores: Scores = field(default_factory=Scores)
    since: float | None = None
    drift: DriftWindows = field(default_factory=DriftWindows)

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores.to_dict(), "since": self.since, "drift": self.drift.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LivePart:
        since = data.get("since")
        return cls(
            Scores.from_dict(data["scores"]),
            None if since is None else float(since),
            DriftWindows.from_dict(data.get("drift")),
        )


@dataclass
class ModelTally:
    """Per-version scores beside one score record (a Kafka partition's row, the bridge's totals)."""

    live: dict[str, LivePart] = field(default_factory=dict)
    shadow: dict[str, ShadowPart] = field(default_factory=dict)

    def record(
        self,
        counted: BatchResult,
        live_version: str,
        shadow: ShadowBatch | None,
        window_seconds: int,
        now: float | None = None,
    ) -> None:
        """Count ``counted`` (the part of the batch the caller also applies to the totals)
        under ``live_version``, and the shadow's predictions of the same images beside it;
        both parts' drift windows too, on the same images (windows by record time, as the
        totals' windows)."""
        if not counted.outcomes:
            return
        now = time.time() if now is None else now
        part = self.live.setdefault(live_version, LivePart())
        counted.apply_to(part.scores, window_seconds, now)
        _counts_only(part.scores)
        first = min((m.timestamp if m.timestamp is not None else now) for m in counted.messages)
        part.since = first if part.since is None else min(part.since, first)
        valid, observed = _observed(counted, now)
        part.drift.record(observed, window_seconds)
        if shadow is None:
            self._forget_drift({live_version})
            return
        if len(shadow.predicted) != len(counted.outcomes):
            raise ValueError("shadow predictions are not aligned with the counted outcomes")
        labels, guesses, agreed = [], [], 0
        for outcome, guess in zip(counted.outcomes, shadow.predicted):
            if isinstance(outcome, Prediction) and guess is not None:
                labels.append(outcome.label)
                guesses.append(guess)
                agreed += int(guess == outcome.predicted)
        shadow_part = self.shadow.setdefault(shadow.version, ShadowPart())
        shadow_part.scores.record(labels, guesses, [now] * len(labels), window_seconds)
        _counts_only(shadow_part.scores)
        shadow_part.compared += len(guesses)
        shadow_part.agreed += agreed
        shadow_part.drift.record(
            observed.answered_by([shadow.predicted[i] for i in valid], [shadow.confidence[i] for i in valid]),  # type: ignore[misc]
            window_seconds,
        )
        self._forget_drift({live_version, shadow.version})

    def _forget_drift(self, counting: set[str]) -> None:
        """Keep drift windows for :data:`.drift.MAX_DRIFT_VERSIONS` versions: ``counting`` (the
        batch's live and shadow) and the others counted most recently; the rest lose their
        windows (their scores stay)."""
        parts = [(v, p.drift) for v, p in self.live.items()] + [(v, p.drift) for v, p in self.shadow.items()]
        newest: dict[str, int] = {}
        for version, windows in parts:
            if windows.newest is not None:
                newest[version] = max(newest.get(version, windows.newest), windows.newest)
        if len(newest) <= drift.MAX_DRIFT_VERSIONS:
            return
        others = sorted((v for v in newest if v not in counting), key=lambda v: newest[v], reverse=True)
        kept = counting | set(others[: max(0, drift.MAX_DRIFT_VERSIONS - len(counting))])
        for version, windows in parts:
            if version not in kept:
                windows.counts.clear()

    def merge(self, other: ModelTally) -> ModelTally:
        for version, part in other.live.items():
            mine = self.live.setdefault(version, LivePart())
            mine.scores.merge(part.scores)
            if part.since is not None:
                mine.since = part.since if mine.since is None else min(mine.since, part.since)
            mine.drift.merge(part.drift)
        for version, shadow in other.shadow.items():
            theirs = self.shadow.setdefault(version, ShadowPart())
            theirs.scores.merge(shadow.scores)
            theirs.compared += shadow.compared
            theirs.agreed += shadow.agreed
            theirs.drift.merge(shadow.drift)
        return self

    def drift_windows(self, version: str) -> DriftWindows:
        """Every image ``version`` classified, live or in shadow (never the same image twice:
        a batch is classified by one live and at most one other shadow version)."""
        windows = DriftWindows()
        if version in self.live:
            windows.merge(self.live[version].drift)
        if version in self.shadow:
            windows.merge(self.shadow[version].drift)
        return windows

    def drift_report(
        self,
        live_version: str | None,
        shadow_version: str | None,
        manifest_of: Callable[[str], dict[str, Any] | None],
        window_seconds: int,
    ) -> dict[str, Any]:
        """``GET /drift/``: per version with drift windows (and the ones serving now), its
        windows against the reference in its manifest (:func:`.drift.report`)."""
        versions = self._by_first_live(
            {v for v in (*self.live, *self.shadow) if self.drift_windows(v).counts}
            | {v for v in (live_version, shadow_version) if v}
        )
        return drift.report(
            [(v, _role(v, live_version, shadow_version), self.drift_windows(v)) for v in versions],
            manifest_of,
            window_seconds,
        )

    def _by_first_live(self, versions: Iterable[str]) -> list[str]:
        return sorted(
            versions, key=lambda v: ((self.live[v].since or float("inf")) if v in self.live else float("inf"), v)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "live": {v: p.to_dict() for v, p in self.live.items()},
            "shadow": {v: p.to_dict() for v, p in self.shadow.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ModelTally:
        data = data or {}
        return cls(
            {v: LivePart.from_dict(p) for v, p in data.get("live", {}).items()},
            {v: ShadowPart.from_dict(p) for v, p in data.get("shadow", {}).items()},
        )

    @classmethod
    def of_record(cls, models: dict[str, Any] | None, scores: Scores, model_version: str | None) -> ModelTally:
        """The tally stored with a score record; a record written before tallies existed was
        counted by one version, its ``model_version``, so its totals are that version's part."""
        if models is not None:
            return cls.from_dict(models)
        tally = cls()
        if scores.images or scores.rejected:
            tally.live[model_version or "unknown"] = LivePart(_counts_only(Scores().merge(scores)), None)
        return tally

    def report(self, live_version: str | None, shadow_version: str | None) -> dict[str, dict[str, Any]]:
        """``by_model`` of ``/accuracy/``: per version, its part of the totals (``live``, summing
        to the totals), its shadow scores and agreement (``shadow``), and its ``role`` now."""
        versions = self._by_first_live(
            set(self.live) | set(self.shadow) | {v for v in (live_version, shadow_version) if v}
        )
        out: dict[str, dict[str, Any]] = {}
        for version in versions:
            live = self.live.get(version)
            shadow = self.shadow.get(version)
            role = _role(version, live_version, shadow_version)
            shadow_report = None
            if shadow is not None:
                shadow_report = _part_report(shadow.scores)
                shadow_report.update(
                    compared=shadow.compared,
                    agreed=shadow.agreed,
                    agreement=(shadow.agreed / shadow.compared) if shadow.compared else None,
                )
            out[version] = {
                "role": role,
                "live_since": live.since if live else None,
                "live": _part_report(live.scores) if live else None,
                "shadow": shadow_report,
            }
        return out


def _role(version: str, live_version: str | None, shadow_version: str | None) -> str:
    return "live" if version == live_version else "shadow" if version == shadow_version else "retired"


def _observed(counted: BatchResult, now: float) -> tuple[list[int], Observations]:
    """The indices of ``counted``'s predictions and their drift signals (the pixel bins
    the pipeline computed, for the live and the shadow part alike)."""
    bins = counted.pixel_bins
    valid = [i for i, o in enumerate(counted.outcomes) if isinstance(o, Prediction) and bins[i, 0] >= 0]
    outcomes = [counted.outcomes[i] for i in valid]
    stamps = [counted.messages[i].timestamp for i in valid]
    return valid, Observations(
        np.asarray([o.predicted for o in outcomes], dtype=np.int64),  # type: ignore[union-attr]
        np.asarray([o.confidence for o in outcomes], dtype=np.float64),  # type: ignore[union-attr]
        bins[valid, 0],
        bins[valid, 1],
        np.asarray([now if t is None else t for t in stamps], dtype=np.float64),
    )


def count_batch(
    scores: Scores,
    tally: ModelTally,
    result: BatchResult,
    indices: Sequence[int],
    live_version: str,
    shadow: ShadowBatch | None,
    window_seconds: int,
) -> None:
    """Count the outcomes of ``result`` at ``indices`` (ascending) into the totals and the same
    ones into the tally, under ``live_version`` (both backends: a Kafka partition's row, the
    bridge's totals); the caller writes both in one record."""
    counted = result.take(indices)
    counted.apply_to(scores, window_seconds)
    tally.record(counted, live_version, shadow.take(indices) if shadow else None, window_seconds)


def totals_report(document: dict[str, Any]) -> dict[str, Any]:
    """An ``/accuracy/`` document without ``by_model``: what ``Scores.report`` of the totals gives
    (to compare streamed totals with offline ones)."""
    return {key: value for key, value in document.items() if key != "by_model"}


def _part_report(scores: Scores) -> dict[str, Any]:
    report = scores.report(None)
    report.pop("model_version")
    return report
