"""The wire contract: the malformed-message catalogue, valid forms, fuzzing, predictions.

Every malformed message must raise :class:`InvalidMessage` with its exact ``kind`` and an
informative reason; nothing else may ever escape the decoder (the Faust agent and the
Pub/Sub bridge only catch ``InvalidMessage``: anything else would crash them).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmnist_faust.core import contract
from fmnist_faust.core.contract import (
    CLASS_NAMES,
    DEFAULT_MAX_MESSAGE_BYTES,
    ERROR_KINDS,
    IMAGE_BYTES,
    MAX_ID_CHARS,
    MAX_REASON_CHARS,
    ImageMessage,
    InvalidMessage,
    Prediction,
    dead_letter_attributes,
    decode_image,
    decode_prediction,
    decode_record,
    encode_image,
)
from malformed_catalogue import GOOD_B64, GOOD_PIXELS, Case, catalogue, pickle_payloads

CATALOGUE = catalogue()
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_catalogue_entry_is_rejected_with_its_kind(case: Case) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_record(case.value, case.key)
    error = caught.value
    assert error.kind == case.kind, f"{case.name}: {error}"
    # Informative: a sentence of its own (not just the kind), short enough for a DLQ header.
    assert error.reason and error.reason != error.kind
    assert len(error.reason) <= MAX_REASON_CHARS
    assert str(error) == f"{error.kind}: {error.reason}"
    error.reason.encode("utf-8")  # the worker sends it as a header: must be encodable


def test_catalogue_covers_every_error_kind() -> None:
    assert {case.kind for case in CATALOGUE} == set(ERROR_KINDS)


@pytest.mark.parametrize(
    ("case_name", "words"),
    [
        ("id_too_long", ["1-128"]),
        ("key_mismatch", ["bad-key_mismatch", "bad-key_mismatch-id"]),
        ("base64_783_bytes", ["783", "784"]),
        ("list_785_values", ["785", "784"]),
        ("pixel_256", ["pixels[500]", "256"]),
        ("pixel_bool", ["pixels[500]", "True"]),
        ("label_string", ["'3'"]),
        ("label_10", ["10"]),
        ("sent_at_nan", ["nan"]),
        ("oversize_valid", [str(DEFAULT_MAX_MESSAGE_BYTES + 1), str(DEFAULT_MAX_MESSAGE_BYTES)]),
        ("invalid_utf8", ["byte"]),
        ("batch_too_many_images", ["1001", "1000"]),
        ("batch_labels_short", ["1 labels", "2"]),
        ("batch_pixels_one_image_for_two", ["784", "2 images", "1568"]),
    ],
)
def test_reason_names_the_offending_value(case_name: str, words: list[str]) -> None:
    case = next(c for c in CATALOGUE if c.name == case_name)
    with pytest.raises(InvalidMessage) as caught:
        decode_record(case.value, case.key)
    for word in words:
        assert word in caught.value.reason, (word, caught.value.reason)


def test_id_of_exactly_128_characters_is_accepted_and_129_rejected() -> None:
    assert decode_image(encode_image("x" * MAX_ID_CHARS, GOOD_PIXELS)).id == "x" * MAX_ID_CHARS
    with pytest.raises(InvalidMessage, match="bad_id"):
        decode_image(encode_image("x" * (MAX_ID_CHARS + 1), GOOD_PIXELS))


def test_oversize_is_rejected_before_any_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_parse(*_: Any, **__: Any) -> Any:
        raise AssertionError("the decoder parsed an oversize message")

    monkeypatch.setattr(contract.json, "loads", must_not_parse)
    monkeypatch.setattr(contract.base64, "b64decode", must_not_parse)
    huge_invalid = b"\xff" + b"[" * (DEFAULT_MAX_MESSAGE_BYTES + 10)  # not UTF-8, not JSON, deep
    with pytest.raises(InvalidMessage) as caught:
        decode_image(huge_invalid, b"k")
    assert caught.value.kind == "too_large"
    with pytest.raises(InvalidMessage) as caught:
        decode_image(b"{}" + b" " * 5000, max_bytes=4096)  # the limit is a parameter
    assert caught.value.kind == "too_large"


def test_message_of_exactly_the_limit_is_accepted() -> None:
    base = json.loads(encode_image("edge", GOOD_PIXELS, 1))
    base["pad"] = ""
    size = len(json.dumps(base).encode())
    base["pad"] = "x" * (DEFAULT_MAX_MESSAGE_BYTES - size)
    value = json.dumps(base).encode()
    assert len(value) == DEFAULT_MAX_MESSAGE_BYTES
    assert decode_image(value, b"edge").id == "edge"
    with pytest.raises(InvalidMessage, match="too_large"):
        decode_image(value + b" ", b"edge")


def test_pickles_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, payload in pickle_payloads(str(marker)).items():
        with pytest.raises(InvalidMessage) as caught:
            decode_image(payload, b"k")
        assert caught.value.kind in ("not_utf8", "not_json"), name
    # A list-form message whose pixels hide a pickle string is also just data.
    hidden = json.dumps({"id": "p", "pixels": pickle_payloads(str(marker))["pickle_protocol0"].decode()})
    with pytest.raises(InvalidMessage, match="bad_base64"):
        decode_image(hidden.encode())
    assert not marker.exists()


def test_huge_offending_values_give_short_reasons() -> None:
    """A 600 kB nested value in a pixel used to be repr()'d whole into the DLQ header."""
    pixels: list[Any] = list(GOOD_PIXELS)
    pixels[0] = list(range(100_000))
    with pytest.raises(InvalidMessage) as caught:
        decode_image(json.dumps({"id": "big", "pixels": pixels}).encode())
    assert caught.value.kind == "bad_pixel_value" and len(caught.value.reason) <= MAX_REASON_CHARS
    with pytest.raises(InvalidMessage) as caught:
        decode_image(json.dumps({"id": "big", "pixels": GOOD_B64, "label": "y" * 100_000}).encode())
    assert caught.value.kind == "bad_label" and len(caught.value.reason) <= MAX_REASON_CHARS


def test_invalid_message_truncates_any_reason() -> None:
    error = InvalidMessage("not_json", "z" * 10_000)
    assert len(error.reason) == MAX_REASON_CHARS and error.reason.endswith("...")


# ---------------------------------------------------------------------------------------
# Valid messages
# ---------------------------------------------------------------------------------------


def _pixels_equal(message: ImageMessage, expected: bytes) -> bool:
    return (
        message.pixels.dtype == np.uint8
        and message.pixels.shape == (IMAGE_BYTES,)
        and message.pixels.tobytes() == expected
    )


def test_base64_form() -> None:
    value = json.dumps({"id": "a1", "pixels": GOOD_B64, "label": 9, "sent_at": 1700000000.25}).encode()
    message = decode_image(value, b"a1")
    assert message.id == "a1" and message.label == 9 and message.sent_at == 1700000000.25
    assert _pixels_equal(message, GOOD_PIXELS)


def test_list_form() -> None:
    value = json.dumps({"id": "a2", "pixels": list(GOOD_PIXELS), "label": 0}).encode()
    message = decode_image(value, "a2")
    assert message.label == 0 and _pixels_equal(message, GOOD_PIXELS)


def test_unknown_extra_fields_are_ignored() -> None:
    value = json.dumps(
        {
            "id": "a3",
            "pixels": GOOD_B64,
            "label": 2,
            "source": {"camera": 7},
            "tags": ["x"],
            "pixels_format": "u8",
            "version": 2,
        }
    ).encode()
    message = decode_image(value, b"a3")
    assert message == ImageMessage(id="a3", pixels=message.pixels, label=2, sent_at=None)
    assert _pixels_equal(message, GOOD_PIXELS)


@pytest.mark.parametrize("fields", [{}, {"label": None}, {"sent_at": None}, {"label": None, "sent_at": None}])
def test_label_and_sent_at_absent_or_null(fields: dict[str, Any]) -> None:
    message = decode_image(json.dumps({"id": "a4", "pixels": GOOD_B64, **fields}).encode())
    assert message.label is None and message.sent_at is None


def test_integer_sent_at_becomes_float() -> None:
    message = decode_image(json.dumps({"id": "a5", "pixels": GOOD_B64, "sent_at": 1700000000}).encode())
    assert message.sent_at == 1700000000.0 and isinstance(message.sent_at, float)


@pytest.mark.parametrize("key", [None, b"", "", b"a6", "a6"])
def test_key_absent_empty_or_equal_is_accepted(key: bytes | str | None) -> None:
    assert decode_image(encode_image("a6", GOOD_PIXELS), key).id == "a6"


def test_non_ascii_id_must_match_its_utf8_key() -> None:
    value = encode_image("chemise-é-👕", GOOD_PIXELS)
    assert decode_image(value, "chemise-é-👕".encode()).id == "chemise-é-👕"
    with pytest.raises(InvalidMessage, match="key_mismatch"):
        decode_image(value, "chemise-e-👕".encode())


def test_round_trip_encode_decode() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, IMAGE_BYTES, dtype=np.uint8)
    message = decode_image(encode_image("rt", pixels, label=4, sent_at=12.5), b"rt")
    assert message.id == "rt" and message.label == 4 and message.sent_at == 12.5
    assert np.array_equal(message.pixels, pixels)
    assert decode_image(encode_image("rt", pixels.tobytes())).pixels.tobytes() == pixels.tobytes()


def test_encode_image_refuses_a_wrong_size() -> None:
    with pytest.raises(ValueError, match="784"):
        encode_image("x", b"\0" * 783)


# ---------------------------------------------------------------------------------------
# Property-based fuzzing
# ---------------------------------------------------------------------------------------

# Text over all of Unicode, biased towards the awkward code points: lone surrogates (JSON
# can escape them as "\ud800"), NUL, line separators, non-BMP.
awkward_chars = st.sampled_from(["\ud800", "\udfff", "\x00", "\u2028", "\ufeff", "é", "👕", "\\", '"'])
# (st.text drops surrogates whatever the alphabet: join a list of characters instead)
any_text = st.lists(st.characters(blacklist_categories=()) | awkward_chars, max_size=40).map("".join)
numbers = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400).map(lambda n: n * (-1) ** (n % 2))  # > float
)
json_scalars = st.none() | st.booleans() | numbers | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=20,
)
field_names = st.sampled_from(["id", "pixels", "label", "sent_at"]) | any_text
keys = st.none() | st.binary(max_size=20) | any_text


def _check_valid(message: ImageMessage, key: bytes | str | None) -> None:
    """Whatever the decoder accepts, every consumer downstream can handle."""
    assert isinstance(message.id, str) and 1 <= len(message.id) <= MAX_ID_CHARS
    message.id.encode("utf-8")  # used as the Kafka key of the prediction
    assert message.pixels.dtype == np.uint8 and message.pixels.shape == (IMAGE_BYTES,)
    assert message.label is None or (type(message.label) is int and 0 <= message.label <= 9)
    assert message.sent_at is None or (type(message.sent_at) is float and math.isfinite(message.sent_at))
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    assert not key or key == message.id


def _decode_or_reject(value: bytes, key: bytes | str | None) -> None:
    try:
        message = decode_image(value, key)
    except InvalidMessage as error:
        assert error.kind in ERROR_KINDS and error.reason
        assert len(error.reason) <= MAX_REASON_CHARS
        error.reason.encode("utf-8")
    else:
        _check_valid(message, key)


@FUZZ
@given(value=st.binary(max_size=2048), key=keys)
def test_fuzz_arbitrary_bytes_only_raise_invalid_message(value: bytes, key: bytes | str | None) -> None:
    _decode_or_reject(value, key)


@FUZZ
@given(obj=st.dictionaries(field_names, json_values, max_size=6), key=keys)
def test_fuzz_arbitrary_json_objects_only_raise_invalid_message(obj: dict[str, Any], key: bytes | str | None) -> None:
    _decode_or_reject(json.dumps(obj).encode("utf-8"), key)


@FUZZ
@given(
    field=st.sampled_from(["id", "pixels", "label", "sent_at"]),
    replacement=numbers | json_values,
    form=st.sampled_from(["base64", "list"]),
    use_key=st.booleans(),
)
def test_fuzz_one_corrupted_field_of_a_valid_message(field: str, replacement: Any, form: str, use_key: bool) -> None:
    _decode_or_reject(_with_field(field, replacement, form), b"fz" if use_key else None)


def _with_field(field: str, replacement: Any, form: str) -> bytes:
    """A valid message "fz" (pixels as base64 or as a list) whose ``field`` is ``replacement``."""
    obj: dict[str, Any] = {
        "id": "fz",
        "pixels": GOOD_B64 if form == "base64" else list(GOOD_PIXELS),
        "label": 1,
        "sent_at": 2.0,
    }
    obj[field] = replacement
    return json.dumps(obj).encode("utf-8")


@FUZZ
@given(
    image_id=any_text | st.text(min_size=120, max_size=140),
    key_form=st.sampled_from(["none", "utf8", "surrogatepass", "str", "other"]),
    other=keys,
)
def test_fuzz_arbitrary_ids_and_keys(image_id: str, key_form: str, other: bytes | str | None) -> None:
    value = json.dumps({"id": image_id, "pixels": GOOD_B64}).encode()  # ensure_ascii: escapes all
    key = {
        "none": None,
        "utf8": image_id.encode("utf-8", "replace"),
        "surrogatepass": image_id.encode("utf-8", "surrogatepass"),
        "str": image_id,
        "other": other,
    }[key_form]
    _decode_or_reject(value, key)


@FUZZ
@given(value=st.binary(min_size=1, max_size=64), cut=st.integers(min_value=0, max_value=64))
def test_fuzz_corrupted_bytes_of_a_valid_message(value: bytes, cut: int) -> None:
    good = encode_image("cb", GOOD_PIXELS, 5, 1.0)
    _decode_or_reject(good[:cut] + value + good[cut + len(value) :], b"cb")


ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=MAX_ID_CHARS)


@FUZZ
@given(
    image_id=ids,
    pixels=st.binary(min_size=IMAGE_BYTES, max_size=IMAGE_BYTES),
    label=st.none() | st.integers(0, 9),
    sent_at=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    key_form=st.sampled_from(["none", "bytes", "str"]),
    list_form=st.booleans(),
)
def test_fuzz_valid_images_always_decode_to_the_same_pixels(
    image_id: str, pixels: bytes, label: int | None, sent_at: float | None, key_form: str, list_form: bool
) -> None:
    value = encode_image(image_id, pixels, label, sent_at)
    if list_form:
        obj = json.loads(value)
        obj["pixels"] = list(pixels)
        value = json.dumps(obj).encode()
    key = {"none": None, "bytes": image_id.encode("utf-8"), "str": image_id}[key_form]
    message = decode_image(value, key)
    assert message.id == image_id and message.pixels.tobytes() == pixels
    assert message.label == label and message.sent_at == sent_at


# ---------------------------------------------------------------------------------------
# The fast path (orjson, strict base64) decides exactly as json + base64 do
# ---------------------------------------------------------------------------------------


def _verdict(value: bytes, key: bytes | str | None) -> tuple[Any, ...]:
    try:
        m = decode_image(value, key)
    except InvalidMessage as error:
        return ("rejected", error.kind, error.reason)
    return ("valid", m.id, m.pixels.tobytes(), m.label, m.sent_at)


def _both_verdicts(value: bytes, key: bytes | str | None = None) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(decode_image as it runs, decode_image with only the reference parsers)."""
    fast = _verdict(value, key)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(contract, "_parse_fast", lambda value: None)
        patch.setattr(contract, "_b64_fast", lambda raw: None)
        reference = _verdict(value, key)
    return fast, reference


def _with(field: str, literal: str) -> bytes:
    """A valid message whose ``field`` is the raw JSON ``literal`` (numbers json.dumps cannot write)."""
    fields = {"id": '"x"', "pixels": json.dumps(GOOD_B64), "label": "1", "sent_at": "2.5", field: literal}
    return ("{" + ",".join(f'"{name}":{text}' for name, text in fields.items()) + "}").encode()


EDGE_CASES = [
    _with("label", str(2**64)),  # orjson: a float; json: an int
    _with("label", str(2**63)),
    _with("label", "-" + str(2**63 + 1)),
    _with("id", str(2**70)),
    _with("sent_at", str(10**30)),
    _with("sent_at", str(10**400)),
    _with("sent_at", "1e400"),
    _with("sent_at", "NaN"),
    _with("sent_at", "-Infinity"),
    _with("label", "1.0"),
    _with("label", "true"),
    _with("id", '"\\ud800"'),
    _with("id", '"\\ud83d\\udc55"'),
    _with("pixels", "[" + ",".join(["1"] * (IMAGE_BYTES - 1) + [str(2**64)]) + "]"),
    _with("pixels", json.dumps(GOOD_B64[:-2] + "==")),
    _with("pixels", json.dumps(GOOD_B64 + "=")),
    _with("pixels", json.dumps(GOOD_B64[:4] + "\\n" + GOOD_B64[4:])),
    _with("extra", "[" * 950 + "]" * 950),
    _with("extra", "[" * 2000 + "]" * 2000),
    _with("extra", '{"a":NaN}'),
    _with("label", '1,"label":2'),  # a repeated key: the last one wins in both
    b"\xef\xbb\xbf" + _with("label", "1"),
]


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_fast_path_agrees_with_the_reference_on_the_catalogue(case: Case) -> None:
    fast, reference = _both_verdicts(case.value, case.key)
    assert fast == reference


@pytest.mark.parametrize("value", EDGE_CASES)
def test_fast_path_agrees_with_the_reference_where_orjson_differs_from_json(value: bytes) -> None:
    fast, reference = _both_verdicts(value)
    assert fast == reference


@FUZZ
@given(
    field=st.sampled_from(["id", "pixels", "label", "sent_at"]),
    replacement=numbers | json_values | st.integers(min_value=-(2**80), max_value=2**80),
    form=st.sampled_from(["base64", "list"]),
)
def test_fuzz_fast_path_agrees_with_the_reference(field: str, replacement: Any, form: str) -> None:
    fast, reference = _both_verdicts(_with_field(field, replacement, form))
    assert fast == reference


@FUZZ
@given(value=st.binary(min_size=1, max_size=64), cut=st.integers(min_value=0, max_value=1100))
def test_fuzz_fast_path_agrees_on_corrupted_bytes(value: bytes, cut: int) -> None:
    good = encode_image("cb", GOOD_PIXELS, 5, 1.0)
    fast, reference = _both_verdicts(good[:cut] + value + good[cut + len(value) :], b"cb")
    assert fast == reference


@FUZZ
@given(
    raw=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n\u00e9", max_size=40)
)
def test_fuzz_fast_base64_accepts_only_what_base64_accepts_to_the_same_bytes(raw: str) -> None:
    """pybase64 (the fast path) never accepts a string ``b64decode(validate=True)`` refuses, nor
    decodes one to other bytes; where it refuses, the reference decides (and says why)."""
    try:
        reference: bytes | None = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        reference = None
    fast = contract._b64_fast(raw)
    assert fast is None or fast == reference


# ---------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------


def test_prediction_encode_decode_round_trip() -> None:
    prediction = Prediction(
        id="p1", predicted=7, confidence=0.123456789, label=7, model_version="mlp-abc", latency_ms=12.34567
    )
    obj = decode_prediction(prediction.encode())
    assert obj == {
        "id": "p1",
        "predicted": 7,
        "class_name": "Sneaker",
        "confidence": 0.123457,
        "label": 7,
        "correct": True,
        "model_version": "mlp-abc",
        "latency_ms": 12.346,
    }
    assert list(obj) == [
        "id",
        "predicted",
        "class_name",
        "confidence",
        "label",
        "correct",
        "model_version",
        "latency_ms",
    ]


@pytest.mark.parametrize(("label", "correct"), [(None, None), (3, False), (2, True)])
def test_prediction_correct_follows_the_label(label: int | None, correct: bool | None) -> None:
    prediction = Prediction("p2", 2, 0.9, label, "v", None)
    assert prediction.correct is correct
    obj = decode_prediction(prediction.encode())
    assert obj["correct"] is correct and obj["label"] == label and obj["latency_ms"] is None
    assert obj["class_name"] == CLASS_NAMES[2]


def test_prediction_with_overflowing_latency_is_still_standard_json() -> None:
    """sent_at = -1e308 is a finite number, but now - sent_at overflows to inf."""
    raw = Prediction("p3", 0, 1.0, None, "v", float("inf")).encode()
    assert b"Infinity" not in raw
    assert json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))["latency_ms"] is None


def test_prediction_keeps_non_ascii_ids() -> None:
    obj = decode_prediction(Prediction("é-👕", 1, 0.5, None, "v", None).encode())
    assert obj["id"] == "é-👕"


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b"[]",
        b'{"predicted": 1}',
        b'{"id": 1, "predicted": 1}',
        b'{"id": "x"}',
        b'{"id": "x", "predicted": "1"}',
        b'{"id": "x", "predicted": true}',
        b'{"id": "x", "predicted": 1.0}',
        b"\xff\xfe",
        b"[" * 100_000,
    ],
)
def test_decode_prediction_rejects_non_predictions_with_value_error(value: bytes) -> None:
    with pytest.raises(ValueError):
        decode_prediction(value)


@FUZZ
@given(
    value=st.binary(max_size=512)
    | st.dictionaries(field_names, json_values, max_size=6).map(lambda obj: json.dumps(obj).encode())
)
def test_fuzz_decode_prediction_only_raises_value_error(value: bytes) -> None:
    try:
        obj = decode_prediction(value)
    except ValueError:
        return
    assert isinstance(obj["id"], str) and type(obj["predicted"]) is int


def test_dead_letter_attributes_are_one_shape_for_both_backends() -> None:
    """Kafka headers and Pub/Sub attributes come from this one builder: kind and reason,
    the reason cut to Pub/Sub's 1,024-byte attribute limit on a character boundary."""
    assert dead_letter_attributes(InvalidMessage("not_json", "not JSON (x)")) == {
        "error_kind": "not_json",
        "error": "not JSON (x)",
    }
    wide = dead_letter_attributes(InvalidMessage("bad_id", "é" * 290))["error"]
    assert len(wide.encode("utf-8")) <= 1024 and wide == "é" * 290
    emoji = dead_letter_attributes(InvalidMessage("bad_id", "\U0001f600" * 290))["error"]
    assert len(emoji.encode("utf-8")) <= 1024 and set(emoji) == {"\U0001f600"}
