"""Training-set augmentation: 1-pixel shifts move every pixel exactly, keep labels, repeat."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist_faust.core import augment


def _image_with_pixels(*pixels: tuple[int, int, int]) -> np.ndarray:
    """One (1, 784) uint8 image, zero except the given (row, column, value) pixels."""
    image = np.zeros((28, 28), dtype=np.uint8)
    for row, column, value in pixels:
        image[row, column] = value
    return image.reshape(1, 784)


@pytest.mark.parametrize(("down", "right"), [(1, 0), (-1, 0), (0, 1), (0, -1), (2, -3)])
def test_shift_moves_every_pixel_by_the_offset(down: int, right: int) -> None:
    image = _image_with_pixels((10, 12, 200), (5, 20, 7))
    shifted = augment.shift_images(image, down, right).reshape(28, 28)
    expected = np.zeros((28, 28), dtype=np.uint8)
    expected[10 + down, 12 + right] = 200
    expected[5 + down, 20 + right] = 7
    np.testing.assert_array_equal(shifted, expected)


def test_shift_matches_roll_with_the_wrapped_edge_cleared() -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(50, 784), dtype=np.uint8)
    square = images.reshape(-1, 28, 28)
    down = np.roll(square, 1, axis=1)
    down[:, 0, :] = 0
    left = np.roll(square, -1, axis=2)
    left[:, :, -1] = 0
    np.testing.assert_array_equal(augment.shift_images(images, 1, 0).reshape(-1, 28, 28), down)
    np.testing.assert_array_equal(augment.shift_images(images, 0, -1).reshape(-1, 28, 28), left)


def test_pixels_shifted_off_the_frame_are_dropped_not_wrapped() -> None:
    image = _image_with_pixels((27, 0, 255), (0, 27, 99))
    assert not augment.shift_images(image, 1, 0).reshape(28, 28)[:, 0].any()
    assert not augment.shift_images(image, 0, 1).reshape(28, 28)[0, :].any()
    assert augment.shift_images(image, -1, 0).reshape(28, 28)[26, 0] == 255


def test_shift1_makes_five_copies_originals_first_labels_repeated() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(40, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=40).astype(np.uint8)
    out_images, out_labels = augment.augment(images, labels, "shift1")
    assert out_images.shape == (200, 784) and out_images.dtype == np.uint8
    assert out_labels.shape == (200,) and out_labels.dtype == labels.dtype
    assert augment.copies("shift1") == 5
    np.testing.assert_array_equal(out_images[:40], images)
    for copy, (down, right) in enumerate(augment.SHIFTS["shift1"]):
        block = slice(copy * 40, (copy + 1) * 40)
        np.testing.assert_array_equal(out_images[block], augment.shift_images(images, down, right))
        np.testing.assert_array_equal(out_labels[block], labels)


def test_augmentation_is_deterministic() -> None:
    images = np.random.default_rng(3).integers(0, 256, size=(30, 784), dtype=np.uint8)
    labels = np.arange(30, dtype=np.uint8) % 10
    first = augment.augment(images, labels, "shift1")
    second = augment.augment(images.copy(), labels.copy(), "shift1")
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_none_returns_the_training_set_unchanged() -> None:
    images = np.ones((3, 784), dtype=np.uint8)
    labels = np.array([1, 2, 3], dtype=np.uint8)
    out_images, out_labels = augment.augment(images, labels, "none")
    assert out_images is images and out_labels is labels
    assert augment.copies("none") == 1


def test_bad_input_is_refused() -> None:
    images = np.zeros((2, 784), dtype=np.uint8)
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        augment.augment(images, np.zeros(2), "flip")
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        augment.augment(images, np.zeros(3), "shift1")
    with pytest.raises(ValueError, match=r"expected \(n, 784\)"):
        augment.shift_images(np.zeros((2, 28, 28), dtype=np.uint8), 1, 0)
    with pytest.raises(ValueError, match="out of its 28x28 frame"):
        augment.shift_images(images, 28, 0)
