"""classify_batch: one predict call per batch, outcomes in order, scores applied; classify_isolating:
a message the model fails on found and rejected, a broken model not mistaken for one."""

import base64
from pathlib import Path

import numpy as np
import pytest

from fmnist_faust.core.contract import InvalidMessage, Prediction, encode_batch, encode_image
from fmnist_faust.core.model import load_classifier
from fmnist_faust.core.pipeline import ModelFailure, RawMessage, classify_batch, classify_isolating, repeats
from fmnist_faust.core.recent import RecentMistakes
from fmnist_faust.core.scores import Scores


def test_batch_matches_offline_predictions_and_keeps_order(tiny_model: Path, test_split) -> None:
    classifier = load_classifier(tiny_model)
    images, labels = test_split.images[:200], test_split.labels[:200]
    messages = [
        RawMessage(encode_image(f"img-{i}", images[i], int(labels[i]), sent_at=1.0), key=f"img-{i}") for i in range(200)
    ]
    messages.insert(3, RawMessage(b"not json", key="junk"))
    result = classify_batch(classifier, messages, clock=lambda: 2.0)

    assert isinstance(result.outcomes[3], InvalidMessage) and result.outcomes[3].kind == "not_json"
    predictions = [o for o in result.outcomes if isinstance(o, Prediction)]
    assert [p.id for p in predictions] == [f"img-{i}" for i in range(200)]
    offline, _ = classifier.predict(images)
    assert [p.predicted for p in predictions] == offline.tolist()
    assert all(p.latency_ms == 1000.0 and p.model_version == classifier.version for p in predictions)

    scores = Scores()
    result.apply_to(scores, window_seconds=10, now=0.0)
    assert scores.labeled == 200
    assert scores.correct == int((offline == labels).sum())
    assert scores.rejected == {"not_json": 1}


def test_predict_called_once_per_batch(tiny_model: Path, test_split) -> None:
    classifier = load_classifier(tiny_model)
    calls = []
    real = classifier.predict

    def counting(pixels: np.ndarray):
        calls.append(len(pixels))
        return real(pixels)

    classifier.predict = counting  # type: ignore[method-assign]
    messages = [RawMessage(encode_image(str(i), test_split.images[i])) for i in range(64)]
    classify_batch(classifier, messages)
    assert calls == [64]


def test_all_invalid_batch_skips_predict(tiny_model: Path) -> None:
    classifier = load_classifier(tiny_model)
    result = classify_batch(classifier, [RawMessage(b""), RawMessage(b"[]")])
    assert [o.kind for o in result.outcomes] == ["empty", "not_object"]


def test_subset_and_recent_mistakes(tiny_model: Path, test_split) -> None:
    classifier = load_classifier(tiny_model)
    messages = [RawMessage(encode_image(f"m{i}", test_split.images[i], int(test_split.labels[i]))) for i in range(300)]
    result = classify_batch(classifier, messages)
    half = result.subset(lambda i: i < 150)
    assert len(half.outcomes) == len(half.pixels) == 150 and half.messages[0] is messages[0]
    assert (half.pixels[3] == test_split.images[3]).all()
    recent = RecentMistakes(size=5)
    recent.add_batch(result)
    wrong = [o for o in result.outcomes if isinstance(o, Prediction) and o.correct is False]
    shown = recent.to_list()
    assert len(shown) == min(5, len(wrong))
    assert shown[0]["id"] == wrong[-1].id  # newest first
    assert all(item["label"] != item["predicted"] for item in shown)


def test_repeats_are_keys_counted_before_or_earlier_in_the_batch() -> None:
    before = {"b"}
    found = repeats(["a", "b", None, "a", "c", None, "c"], lambda _index, key: key in before)
    assert found == {1, 3, 6}  # None is never a repeat


def test_without_drops_repeats_whole(tiny_model: Path, test_split) -> None:
    classifier = load_classifier(tiny_model)
    messages = [
        RawMessage(encode_image(f"w{i}", test_split.images[i], int(test_split.labels[i]))) for i in range(4)
    ] + [RawMessage(b"{}")]
    result = classify_batch(classifier, messages)
    kept = result.without({1, 4})
    assert [getattr(o, "id", None) for o in kept.outcomes] == ["w0", "w2", "w3"]
    assert list(kept.messages) == [messages[0], messages[2], messages[3]]
    assert all((p == test_split.images[i]).all() for p, i in zip(kept.pixels, (0, 2, 3)))
    scores = Scores()
    kept.apply_to(scores, window_seconds=10, now=0.0)
    assert scores.labeled == 3 and scores.rejected == {}


def test_recent_mistakes_show_images_larger_than_one_mib(tiny_model: Path, test_split) -> None:
    """With FMNIST_MAX_MESSAGE_BYTES above 1 MiB, a big but valid message reaches /recent/
    (the pixels come from the batch, not a second decode with the default limit)."""
    classifier = load_classifier(tiny_model)
    predicted, _ = classifier.predict(test_split.images[:200])
    wrong = int(next(i for i in range(200) if predicted[i] != test_split.labels[i]))
    padded = (
        encode_image("big", test_split.images[wrong], int(test_split.labels[wrong]))[:-1]
        + b',"padding":"'
        + b"x" * (1 << 20)
        + b'"}'
    )
    result = classify_batch(classifier, [RawMessage(padded)], max_bytes=2 << 20)
    recent = RecentMistakes()
    recent.add_batch(result)
    [item] = recent.to_list()
    assert item["id"] == "big" and base64.b64decode(item["pixels"]) == test_split.images[wrong].tobytes()


def _white_fails(classifier, calls: list[int]):
    """``classifier.predict`` raising on any batch holding an all-white image, counting calls."""
    real = classifier.predict

    def predict(pixels: np.ndarray):
        calls.append(len(pixels))
        if (pixels == 255).all(axis=1).any():
            raise RuntimeError("cannot classify a white image")
        return real(pixels)

    return predict


def test_a_poison_message_is_isolated_within_the_stated_bound(tiny_model: Path, test_split) -> None:
    classifier = load_classifier(tiny_model)
    calls: list[int] = []
    classifier.predict = _white_fails(classifier, calls)  # type: ignore[method-assign]
    images = test_split.images[:1000].copy()
    images[617] = 255
    messages = [RawMessage(encode_image(f"img-{i}", images[i], 1), key=f"img-{i}") for i in range(1000)]

    result = classify_isolating(classifier, messages)

    assert result.sources == list(range(1000)) and list(result.messages) == messages
    failed = result.outcomes[617]
    assert isinstance(failed, InvalidMessage) and failed.kind == "processing_failed"
    assert "cannot classify a white image" in failed.reason and failed.index is None
    good = [i for i in range(1000) if i != 617]
    offline, _ = load_classifier(tiny_model).predict(images[good])
    assert [result.outcomes[i].predicted for i in good] == offline.tolist()  # type: ignore[union-attr]
    assert len(calls) <= 1 + 2 * 10 + 2  # the docstring's bound for one message among 1,000


def test_a_one_off_error_dead_letters_nothing(tiny_model: Path, test_split) -> None:
    classifier = load_classifier(tiny_model)
    real, failures = classifier.predict, [1]

    def flaky(pixels: np.ndarray):
        if failures:
            failures.pop()
            raise MemoryError("once")
        return real(pixels)

    classifier.predict = flaky  # type: ignore[method-assign]
    messages = [RawMessage(encode_image(str(i), test_split.images[i], 2)) for i in range(40)]
    result = classify_isolating(classifier, messages)
    assert all(isinstance(o, Prediction) for o in result.outcomes) and result.sources == list(range(40))


def test_a_batch_record_the_model_fails_on_is_rejected_whole(tiny_model: Path, test_split) -> None:
    classifier = load_classifier(tiny_model)
    classifier.predict = _white_fails(classifier, [])  # type: ignore[method-assign]
    pixels = test_split.images[:6].copy()
    pixels[4] = 255
    messages = [
        RawMessage(encode_image("before", test_split.images[10])),
        RawMessage(encode_batch([f"b-{i}" for i in range(6)], pixels)),
        RawMessage(encode_image("after", test_split.images[11])),
    ]
    result = classify_isolating(classifier, messages)
    assert result.sources == [0, 1, 2]
    assert [type(o).__name__ for o in result.outcomes] == ["Prediction", "InvalidMessage", "Prediction"]


def test_a_model_that_fails_on_everything_is_not_a_poison_message(tiny_model: Path, test_split) -> None:
    classifier = load_classifier(tiny_model)

    def broken(pixels: np.ndarray):
        raise RuntimeError("the model is broken")

    classifier.predict = broken  # type: ignore[method-assign]
    messages = [RawMessage(encode_image(str(i), test_split.images[i])) for i in range(8)]
    with pytest.raises(ModelFailure, match="reference image"):
        classify_isolating(classifier, messages)
