"""IDX loader: the real Debian files, and clear errors for broken ones."""

import gzip
import struct
from pathlib import Path

import pytest

from fmnist_faust.core import dataset


def test_loads_official_test_split() -> None:
    split = dataset.load_split("test")
    assert split.images.shape == (10000, 784) and split.images.dtype.name == "uint8"
    assert split.labels.shape == (10000,) and set(split.labels.tolist()) == set(range(10))


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
    with gzip.open(path, "wb") as handle:
        handle.write(header + payload)


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    _write_idx(path, 0x803, (2, 28, 28), b"\0" * 100)
    with pytest.raises(dataset.DatasetError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        dataset.read_idx(path, 0x803)


def test_bad_magic_and_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    _write_idx(path, 0x801, (3,), b"\0\1\2")
    with pytest.raises(dataset.DatasetError, match="bad magic"):
        dataset.read_idx(path, 0x803)
    _write_idx(path, 0x803, (1, 27, 28), b"\0" * 27 * 28)
    with pytest.raises(dataset.DatasetError, match="27x28"):
        dataset.read_idx(path, 0x803)


def test_wrong_count(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    _write_idx(path, 0x801, (3,), b"\0\1\2")
    with pytest.raises(dataset.DatasetError, match="expected 10000"):
        dataset.read_idx(path, 0x801, expected_count=10000)


def test_missing_data_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(dataset.DatasetError, match="apt-get install dataset-fashion-mnist"):
        dataset.load_split("test", tmp_path / "nowhere")


def test_raw_uncompressed_files_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">II", 0x801, 2) + b"\x03\x04")
    assert dataset.read_idx(path, 0x801).tolist() == [3, 4]


def test_the_environment_is_read_by_config_not_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FMNIST_DATA_DIR reaches the loader through Settings.model.data_dir only."""
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path / "nowhere"))
    assert dataset.find_data_dir() == dataset.DEBIAN_DIR
