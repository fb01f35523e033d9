"""classify_batch: one predict call per batch, outcomes in order, scores applied."""

from pathlib import Path

import numpy as np

from fmnist_faust.core.contract import InvalidMessage, Prediction, encode_image
from fmnist_faust.core.model import load_classifier
from fmnist_faust.core.pipeline import RawMessage, classify_batch
from fmnist_faust.core.recent import RecentMistakes
from fmnist_faust.core.scores import Scores


def test_batch_matches_offline_predictions_and_keeps_order(tiny_model: Path, test_split) -> None:
    classifier = load_classifier(tiny_model)
    images, labels = test_split.images[:200], test_split.labels[:200]
    messages = [RawMessage(encode_image(f"img-{i}", images[i], int(labels[i]), sent_at=1.0), key=f"img-{i}")
                for i in range(200)]
    messages.insert(3, RawMessage(b"not json", key="junk"))
    result = classify_batch(classifier, messages, clock=lambda: 2.0)

    assert isinstance(result.outcomes[3], InvalidMessage) and result.outcomes[3].kind == "not_json"
    predictions = result.predictions
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
    messages = [RawMessage(encode_image(f"m{i}", test_split.images[i], int(test_split.labels[i])))
                for i in range(300)]
    result = classify_batch(classifier, messages)
    half = result.subset(lambda i: i < 150)
    assert len(half.outcomes) == 150 and half.messages[0] is messages[0]
    recent = RecentMistakes(size=5)
    recent.add_batch(result)
    wrong = [o for o in result.outcomes if isinstance(o, Prediction) and o.correct is False]
    shown = recent.to_list()
    assert len(shown) == min(5, len(wrong))
    assert shown[0]["id"] == wrong[-1].id  # newest first
    assert all(item["label"] != item["predicted"] for item in shown)
