"""Fashion-MNIST from the four official IDX files (gzipped or raw), validated.

Search order: the folder the caller passes (``FMNIST_DATA_DIR``, read by
:mod:`fmnist_faust.config`), then Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``). Nothing is downloaded: this module never
touches the network.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class DatasetError(RuntimeError):
    """The data set is missing, corrupt or truncated; the message names the file."""


@dataclass(frozen=True)
class Split:
    """One split: ``images`` (n, 784) uint8 and ``labels`` (n,) uint8."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def find_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the first directory that holds the IDX files, or raise DatasetError."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    candidates.append(DEBIAN_DIR)
    for directory in candidates:
        if _locate(directory, _FILES["test"][0]) is not None:
            return directory
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(
        f"Fashion-MNIST not found (looked in {tried}). Install Debian's package "
        "(apt-get install dataset-fashion-mnist) or set FMNIST_DATA_DIR to a folder "
        "holding the four IDX files."
    )


def _locate(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        path = directory / name
        if path.is_file():
            return path
    return None


def read_idx(path: Path, magic: int, expected_count: int | None = None) -> np.ndarray:
    """Read one IDX file, checking magic number, dimensions and length."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated header ({len(data)} bytes)")
    (found_magic,) = struct.unpack(">I", data[:4])
    if found_magic != magic:
        raise DatasetError(f"{path}: bad magic number 0x{found_magic:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if ndim == 3 and dims[1:] != (28, 28):
        raise DatasetError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    if expected_count is not None and dims[0] != expected_count:
        raise DatasetError(f"{path}: holds {dims[0]} items, expected {expected_count}")
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise DatasetError(f"{path}: {len(data) - header} data bytes, expected {size} (truncated or padded)")
    array = np.frombuffer(data, dtype=np.uint8, offset=header)
    return array.reshape(dims[0], -1) if ndim == 3 else array


def load_split(name: str = "test", data_dir: str | os.PathLike[str] | None = None) -> Split:
    """Load ``train`` or ``test``, validated; images flattened to (n, 784)."""
    if name not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {name!r}")
    directory = find_data_dir(data_dir)
    images_stem, labels_stem, count = _FILES[name]
    paths = []
    for stem in (images_stem, labels_stem):
        path = _locate(directory, stem)
        if path is None:
            raise DatasetError(f"{directory}: {stem}(.gz) is missing")
        paths.append(path)
    images = read_idx(paths[0], _IMAGES_MAGIC, count)
    labels = read_idx(paths[1], _LABELS_MAGIC, count)
    if labels.max() > 9:
        raise DatasetError(f"{paths[1]}: label {int(labels.max())} is out of range 0-9")
    return Split(name=name, images=images, labels=labels)
