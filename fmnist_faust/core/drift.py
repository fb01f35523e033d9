"""Drift without labels: per window, what the model was shown and what it answered, against
what it was shown and answered on the test split at training time.

Four signals, each a histogram with fixed bins (:data:`SIGNALS`), so one window's state is
one vector of :data:`BINS` counts whatever the traffic:

- ``class``: the predicted class (10 bins);
- ``confidence``: the predicted class's probability (13 bins, finer towards 1, where a
  well-trained MLP puts most images);
- ``intensity``: an image's mean pixel value (16 bins of 16 grey levels);
- ``spread``: the standard deviation of its pixel values (16 bins of 8 grey levels).

The two pixel statistics are binned from integer sums (:func:`pixel_bins`), so the same image
falls in the same bin on every machine; the reference uses the same bins. A
:class:`Reference` is those four histograms over the test split, saved in the model's
manifest by ``fmnist-train`` (``drift_reference``); a manifest without one (trained before
it existed) still verifies and serves, and drift reports ``no reference`` for it.

:class:`DriftWindows` holds the counts per window (window start -> vector), at most
:data:`MAX_DRIFT_WINDOWS` windows (the newest), and lives in the per-model tally of a
score record (:class:`~.rollout.ModelTally`): on Kafka in the partition's offset-stamped
row, on the bridge in the store's one-transaction commit. So drift counts move with the
scores in one state change, and are exact under the same faults.

The distance is the population stability index, PSI = sum((a - e) * ln(a / e)) over the
bins of the window's shares ``a`` and the reference's ``e``, each bin's count plus
:data:`SMOOTHING` so that an empty bin is finite. Conventions read PSI < 0.1 as stable,
0.1-0.25 as a moderate shift and > 0.25 as a significant one (:data:`PSI_WARN`,
:data:`PSI_ALERT`); a window of ``n`` images from the reference's own distribution scores
about ``(bins - 1) * (1 / n + 1 / reference images)`` by sampling alone, so PSI is reported
only for windows of at least :data:`MIN_WINDOW_IMAGES` images (docs: Drift).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .contract import IMAGE_BYTES, NUM_CLASSES

# Inner edges: a value v falls in bin i where edges[i - 1] <= v < edges[i].
CONFIDENCE_EDGES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999, 0.99999)
INTENSITY_STEP = 16  # grey levels per intensity bin: 16 bins over 0..255
SPREAD_STEP = 8  # grey levels per spread bin: 16 bins over 0..127.5 (the largest possible)
INTENSITY_BINS = 256 // INTENSITY_STEP
SPREAD_BINS = 16


@dataclass(frozen=True)
class Signal:
    """One histogram of the window vector: ``bins`` counts from position ``offset``."""

    name: str
    offset: int
    bins: int
    edges: tuple[float, ...]  # inner edges, or () for a categorical signal (the class)

    @property
    def span(self) -> slice:
        return slice(self.offset, self.offset + self.bins)


def _signals() -> tuple[Signal, ...]:
    spread_edges = tuple(float(SPREAD_STEP * k) for k in range(1, SPREAD_BINS))
    intensity_edges = tuple(float(INTENSITY_STEP * k) for k in range(1, INTENSITY_BINS))
    shapes = (
        ("class", NUM_CLASSES, ()),
        ("confidence", len(CONFIDENCE_EDGES) + 1, CONFIDENCE_EDGES),
        ("intensity", INTENSITY_BINS, intensity_edges),
        ("spread", SPREAD_BINS, spread_edges),
    )
    signals, offset = [], 0
    for name, bins, edges in shapes:
        signals.append(Signal(name, offset, bins, edges))
        offset += bins
    return tuple(signals)


SIGNALS = _signals()
SIGNAL_NAMES = tuple(s.name for s in SIGNALS)
BINS = sum(s.bins for s in SIGNALS)  # 55 counts per window
# Names the bins: a stored vector or reference with another layout is not comparable.
LAYOUT = "/".join(f"{s.name}:{s.bins}" for s in SIGNALS) + f";conf{CONFIDENCE_EDGES[0]}-{CONFIDENCE_EDGES[-1]}"
# The bound on a model's drift state: its newest windows only (10 minutes of 10-s windows);
# with BINS counts each, one model's windows are at most 60 x 55 integers.
MAX_DRIFT_WINDOWS = 60
# Versions of one score record that keep drift windows: the live and shadow versions of the
# batch being counted, then the others whose newest window is the most recent. So a record
# holds at most 4 x 60 x 55 drift counts, however many versions were ever promoted.
MAX_DRIFT_VERSIONS = 4
SMOOTHING = 0.5
PSI_WARN = 0.1
PSI_ALERT = 0.25
MIN_WINDOW_IMAGES = 500

_CLASS, _CONFIDENCE, _INTENSITY, _SPREAD = SIGNALS


def pixel_bins(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intensity bin, spread bin) of each row of an (n, 784) uint8 array, from exact
    integer sums: mean = s / 784 and variance = (784 q - s^2) / 784^2 with s the sum and q the
    sum of squares of the row, so no rounding can move an image across an edge."""
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1, IMAGE_BYTES)
    wide = rows.astype(np.uint16)  # 255^2 fits; the sums are taken in 32 bits
    sums = rows.sum(axis=1, dtype=np.uint32).astype(np.int64)
    squares = np.einsum("ij,ij->i", wide, wide, dtype=np.uint32).astype(np.int64)
    intensity = np.minimum(sums // (INTENSITY_STEP * IMAGE_BYTES), INTENSITY_BINS - 1)
    scaled_variance = IMAGE_BYTES * squares - sums * sums  # variance * 784^2
    limits = (np.arange(1, SPREAD_BINS, dtype=np.int64) * SPREAD_STEP * IMAGE_BYTES) ** 2
    spread = np.searchsorted(limits, scaled_variance, side="right")
    return intensity, spread


def confidence_bins(confidence: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(CONFIDENCE_EDGES), np.asarray(confidence, dtype=np.float64), side="right")


@dataclass(frozen=True)
class Observations:
    """The signals of some classified images, one entry per image, in parallel arrays."""

    predicted: np.ndarray
    confidence: np.ndarray
    intensity: np.ndarray  # bin indices (:func:`pixel_bins`)
    spread: np.ndarray
    timestamps: np.ndarray  # epoch seconds: which window each image counts in

    @classmethod
    def of(
        cls,
        predicted: Sequence[int] | np.ndarray,
        confidence: Sequence[float] | np.ndarray,
        pixels: np.ndarray,
        timestamps: Sequence[float],
    ) -> Observations:
        """From the images themselves (the reference, tests); the services use the bins the
        pipeline computed (``BatchResult.pixel_bins``)."""
        intensity, spread = pixel_bins(pixels) if len(predicted) else (np.empty(0, np.int64), np.empty(0, np.int64))
        return cls(
            np.asarray(predicted, dtype=np.int64),
            np.asarray(confidence, dtype=np.float64),
            intensity,
            spread,
            np.asarray(timestamps, dtype=np.float64),
        )

    def __len__(self) -> int:
        return len(self.predicted)

    def answered_by(self, predicted: Sequence[int], confidence: Sequence[float]) -> Observations:
        """The same images as another model (a shadow) classified them."""
        return Observations(
            np.asarray(predicted, dtype=np.int64),
            np.asarray(confidence, dtype=np.float64),
            self.intensity,
            self.spread,
            self.timestamps,
        )

    def positions(self) -> np.ndarray:
        """(n, 4): each image's bin in the window vector, one column per signal."""
        return np.stack(
            [
                _CLASS.offset + self.predicted,
                _CONFIDENCE.offset + confidence_bins(self.confidence),
                _INTENSITY.offset + self.intensity,
                _SPREAD.offset + self.spread,
            ],
            axis=1,
        )

    def histogram(self) -> np.ndarray:
        """All the images in one vector of :data:`BINS` counts (a reference)."""
        return np.bincount(self.positions().ravel(), minlength=BINS).astype(np.int64)


@dataclass
class DriftWindows:
    """Window start (epoch seconds) -> :data:`BINS` counts; at most :data:`MAX_DRIFT_WINDOWS`."""

    counts: dict[int, np.ndarray] = field(default_factory=dict)

    def record(self, observed: Observations, window_seconds: int) -> None:
        if not len(observed):
            return
        starts = (np.floor_divide(observed.timestamps, window_seconds) * window_seconds).astype(np.int64)
        windows, which = np.unique(starts, return_inverse=True)
        flat = (which.reshape(-1, 1) * BINS + observed.positions()).ravel()
        added = np.bincount(flat, minlength=len(windows) * BINS).reshape(len(windows), BINS)
        for start, row in zip(windows.tolist(), added):
            self._add(start, row)
        self._trim()

    def merge(self, other: DriftWindows) -> DriftWindows:
        for start, row in other.counts.items():
            self._add(start, row)
        self._trim()
        return self

    @property
    def newest(self) -> int | None:
        return max(self.counts) if self.counts else None

    def _add(self, start: int, row: np.ndarray) -> None:
        mine = self.counts.get(start)
        if mine is None:
            self.counts[start] = row.astype(np.int64, copy=True)
        else:
            mine += row

    def _trim(self) -> None:
        if len(self.counts) > MAX_DRIFT_WINDOWS:
            for start in sorted(self.counts)[:-MAX_DRIFT_WINDOWS]:
                del self.counts[start]

    def to_dict(self) -> dict[str, Any]:
        return {"layout": LAYOUT, "windows": {str(start): row.tolist() for start, row in self.counts.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DriftWindows:
        """Stored counts; none (a record from before drift existed) or of another bin layout
        (not comparable with this version's reference): empty."""
        if not data or data.get("layout") != LAYOUT:
            return cls()
        counts = {int(start): np.asarray(row, dtype=np.int64) for start, row in data.get("windows", {}).items()}
        if any(row.shape != (BINS,) for row in counts.values()):
            raise ValueError(f"drift windows must hold {BINS} counts each")
        return cls(counts)


@dataclass(frozen=True)
class Reference:
    """The four histograms of the test split as the model classified it at training time."""

    counts: np.ndarray  # BINS counts
    images: int

    @classmethod
    def of(cls, observed: Observations) -> Reference:
        return cls(observed.histogram(), len(observed))

    def to_manifest(self) -> dict[str, Any]:
        """``drift_reference`` of the manifest: readable per signal, with the edges it used."""
        return {
            "layout": LAYOUT,
            "images": self.images,
            "signals": {s.name: {"edges": list(s.edges), "counts": self.counts[s.span].tolist()} for s in SIGNALS},
        }

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any] | None) -> tuple[Reference | None, str]:
        """(the reference, "ok") or (None, why there is none)."""
        data = (manifest or {}).get("drift_reference")
        if not isinstance(data, Mapping):
            return None, "no reference"
        if data.get("layout") != LAYOUT:
            return None, f"reference bins {data.get('layout')!r} are not this version's {LAYOUT!r}"
        try:
            counts = np.concatenate([np.asarray(data["signals"][s.name]["counts"], dtype=np.int64) for s in SIGNALS])
            images = int(data["images"])
        except (KeyError, TypeError, ValueError) as exc:
            return None, f"unreadable reference ({exc!r})"
        if counts.shape != (BINS,) or (counts < 0).any() or images <= 0:
            return None, "unreadable reference (counts of the wrong shape)"
        return cls(counts, images), "ok"


def psi(reference: Sequence[int] | np.ndarray, window: Sequence[int] | np.ndarray) -> float:
    """Population stability index of ``window``'s counts against ``reference``'s (same bins)."""
    expected = np.asarray(reference, dtype=np.float64) + SMOOTHING
    actual = np.asarray(window, dtype=np.float64) + SMOOTHING
    expected /= expected.sum()
    actual /= actual.sum()
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def window_psi(reference: Reference, row: np.ndarray) -> dict[str, float]:
    return {s.name: round(psi(reference.counts[s.span], row[s.span]), 6) for s in SIGNALS}


def window_images(row: np.ndarray) -> int:
    return int(row[_CLASS.span].sum())


def model_report(
    windows: DriftWindows, manifest: Mapping[str, Any] | None, role: str, window_seconds: int
) -> dict[str, Any]:
    """One model's part of ``GET /drift/``: every window kept, oldest first, with its counts and
    (given a reference and :data:`MIN_WINDOW_IMAGES` images) its PSI per signal; ``latest``:
    the newest window with a PSI."""
    reference, status = Reference.from_manifest(manifest)
    rows: list[dict[str, Any]] = []
    latest = None
    for start in sorted(windows.counts):
        row = windows.counts[start]
        images = window_images(row)
        scores = window_psi(reference, row) if reference is not None and images >= MIN_WINDOW_IMAGES else None
        entry = {
            "start": start,
            "end": start + window_seconds,
            "images": images,
            "psi": scores,
            "drifted": sorted(name for name, value in (scores or {}).items() if value > PSI_ALERT),
            "counts": {s.name: row[s.span].tolist() for s in SIGNALS},
        }
        rows.append(entry)
        if scores is not None:
            latest = entry
    return {
        "role": role,
        "reference": status,
        "reference_images": reference.images if reference is not None else None,
        "latest": None if latest is None else {k: latest[k] for k in ("start", "end", "images", "psi", "drifted")},
        "windows": rows,
    }


def report(
    models: Iterable[tuple[str, str, DriftWindows]],
    manifest_of: Callable[[str], Mapping[str, Any] | None],
    window_seconds: int,
) -> dict[str, Any]:
    """``GET /drift/`` (both backends): ``models`` is (version, role, its windows)."""
    return {
        "window_seconds": window_seconds,
        "signals": {s.name: {"bins": s.bins, "edges": list(s.edges)} for s in SIGNALS},
        "psi_warn": PSI_WARN,
        "psi_alert": PSI_ALERT,
        "min_window_images": MIN_WINDOW_IMAGES,
        "max_windows": MAX_DRIFT_WINDOWS,
        "models": {
            version: model_report(windows, manifest_of(version), role, window_seconds)
            for version, role, windows in models
        },
    }
