"""The wire contract: JSON image messages in, JSON predictions out.

Everything a transport carries is decoded here and nowhere else. Decoding never
evaluates or unpickles anything: the only parsers used are JSON (``orjson``, the fast path,
and ``json``) and base64 (``binascii``/``base64``). The fast path only ever decides what
the standard library would: a message it cannot take as is goes through ``json`` and
``base64`` again, which give the verdict and the reason (see :func:`_parse_fast`).
A message that breaks the contract raises :class:`InvalidMessage` with a short,
stable ``kind`` (used in DLQ headers and the ``rejected`` counters) and a reason a
person can act on.

Two forms share one decoder, :func:`decode_record`: the default one-image object
(``id``) and the opt-in *batch record* (``ids``: N images in one message, their pixels one
base64 blob of N x 784 bytes), for producers that already hold many images. A fault of
the record (not JSON, blob of the wrong length, too many images...) rejects it whole; a
fault of one image in it (its id, its label) rejects that image alone
(:func:`image_fault`), re-encoded in the one-image form (:func:`single_image_value`) so it
can be fixed and re-sent.

Delayed labels travel on a topic of their own (:func:`decode_label`: ``{"id", "label"}``,
keyed by the image id), joined to their images by :mod:`.labels`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson
import pybase64

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIDE = 28
IMAGE_BYTES = IMAGE_SIDE * IMAGE_SIDE
MAX_ID_CHARS = 128
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
MAX_REASON_CHARS = 300  # reasons travel in a DLQ header: keep them short whatever the input
MAX_ATTRIBUTE_BYTES = 1024  # Pub/Sub's limit on one attribute value
DEFAULT_MAX_BATCH_IMAGES = 1000
# The highest FMNIST_MAX_BATCH_IMAGES accepted: the Kafka worker writes a batch's seen-id
# marks in changelog messages of 2,000 ids keyed by their first record's offset, so one record
# must never need two of them (tables.MARKS_PER_MESSAGE).
BATCH_IMAGES_LIMIT = 2000

# Every error kind the decoder can produce, for docs, metrics and tests.
ERROR_KINDS: dict[str, str] = {
    "empty": "the message has no bytes",
    "too_large": "the message is larger than the configured limit",
    "not_utf8": "the bytes are not valid UTF-8",
    "not_json": "the text is not JSON",
    "not_object": "the JSON is not an object",
    "bad_id": "id is missing, not a string, empty, longer than 128 characters or not valid Unicode",
    "key_mismatch": "the transport key differs from the id field",
    "bad_pixels": "pixels is missing or of the wrong type",
    "bad_base64": "pixels is not valid standard base64",
    "bad_pixel_count": "pixels does not hold exactly 784 values",
    "bad_pixel_value": "a pixel in the list form is not an integer 0-255",
    "bad_label": "label is present but not an integer 0-9",
    "bad_sent_at": "sent_at is present but not a finite number",
    # batch records (``ids``): the whole record is rejected
    "bad_ids": "a batch record's ids is not a non-empty list",
    "too_many_images": "a batch record holds more images than FMNIST_MAX_BATCH_IMAGES",
    "bad_labels": "a batch record's labels is present but not a list as long as ids",
}
# Faults of one image in a batch record: that image alone is rejected.
IMAGE_ERROR_KINDS = ("bad_id", "bad_label")
# Not a contract fault: a message whose classification raises (a model or code error on
# that input), found by :func:`.pipeline.classify_isolating` and dead-lettered like one.
PROCESSING_FAILED = "processing_failed"


class InvalidMessage(ValueError):
    """A message that breaks the contract; ``kind`` is one of :data:`ERROR_KINDS`, or
    :data:`PROCESSING_FAILED` for a message the classifier fails on.

    For one image of a batch record, ``index`` is its position in the record and ``image``
    the bytes its dead letter carries (:func:`single_image_value`); both are None for a
    whole message, whose dead letter carries the original bytes.
    """

    def __init__(self, kind: str, reason: str, index: int | None = None, image: bytes | None = None) -> None:
        assert kind in ERROR_KINDS or kind == PROCESSING_FAILED, kind
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason
        self.index = index
        self.image = image

    def dead_letter_value(self, original: bytes | None) -> bytes | None:
        """What the dead letter carries: the original message, or the one image it is about."""
        return original if self.image is None else self.image


def dead_letter_attributes(error: InvalidMessage, stream: str | None = None) -> dict[str, str]:
    """``error_kind`` and ``error`` for the dead letter of ``error``: Kafka headers (UTF-8)
    and Pub/Sub attributes alike, each value within Pub/Sub's 1,024-byte limit; plus
    ``batch_index`` (decimal) for one image of a batch record, and ``stream`` (e.g.
    ``"labels"``) for a message that did not come from the images stream."""
    reason = error.reason.encode("utf-8", "replace")[:MAX_ATTRIBUTE_BYTES].decode("utf-8", "ignore")
    attributes = {"error_kind": error.kind, "error": reason}
    if error.index is not None:
        attributes["batch_index"] = str(error.index)
    if stream is not None:
        attributes["stream"] = stream
    return attributes


class ImageMessage(NamedTuple):
    """A decoded, validated image: 784 uint8 pixels plus its metadata (a named tuple:
    immutable and built once per image at a third of a frozen dataclass's cost)."""

    id: str
    pixels: np.ndarray  # shape (784,), dtype uint8
    label: int | None = None
    sent_at: float | None = None


def estimated_images(value: bytes | None) -> int:
    """About how many images a message of this size holds (at least 1): a batch record is
    mostly its base64 blob, 4/3 x 784 bytes per image. Only for sizing work, never trusted."""
    return max(1, len(value or b"") * 3 // (4 * IMAGE_BYTES))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _b64_fast(raw: str) -> bytes | None:
    """``pybase64`` (SIMD base64, 0.4 instead of 2.2 us per image here), None where it
    refuses: with ``validate=True`` it accepts what ``b64decode(validate=True)`` does, to
    the same bytes; a refusal goes to ``base64``, which decides and says why."""
    try:
        return pybase64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):  # a non-ASCII str is a ValueError
        return None


def _decode_pixels(raw: Any) -> np.ndarray:
    if isinstance(raw, str):
        data = _b64_fast(raw)
        try:
            if data is None:  # not standard, or an edge case strict mode refuses: base64 decides, and says why
                data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidMessage("bad_base64", f"pixels is not standard base64 ({exc})") from None
        if len(data) != IMAGE_BYTES:
            raise InvalidMessage("bad_pixel_count", f"pixels decodes to {len(data)} bytes, expected {IMAGE_BYTES}")
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(raw, list):
        if len(raw) != IMAGE_BYTES:
            raise InvalidMessage("bad_pixel_count", f"pixels has {len(raw)} values, expected {IMAGE_BYTES}")
        for index, value in enumerate(raw):
            if not _is_int(value) or not 0 <= value <= 255:
                raise InvalidMessage(
                    "bad_pixel_value", f"pixels[{index}]={reprlib.repr(value)} is not an integer 0-255"
                )
        return np.asarray(raw, dtype=np.uint8)
    raise InvalidMessage(
        "bad_pixels",
        f"pixels must be a base64 string or a list of {IMAGE_BYTES} ints, got {type(raw).__name__}",
    )


def _parse(value: bytes) -> Any:
    """UTF-8 then ``json.loads``: the reference parser of the contract."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage("not_json", f"not JSON ({str(exc)[:200]})") from None


def _parse_fast(value: bytes) -> dict[str, Any] | None:
    """``orjson.loads`` when it is sure to agree with :func:`_parse`, else None.

    orjson refuses some JSON that ``json`` takes (NaN, Infinity, lone surrogates, numbers
    that overflow a double) and reads integers beyond 64 bits as floats. So its result is
    only used for an object whose fields the contract reads have the types of a valid
    image, where no such difference can show (a float ``sent_at`` is the same double either
    way); anything else, valid or not, is parsed again by ``json``, which decides. So is
    deep nesting, which only extra fields can hold: ``json`` gives up at Python's recursion
    limit, orjson at 1,024 levels.
    """
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if (
        type(obj) is dict
        and type(obj.get("id")) is str
        and type(obj.get("pixels")) is str
        and type(obj.get("label", 0)) in _EXACT_LABEL_TYPES
        and type(obj.get("sent_at", 0.0)) in _EXACT_SENT_AT_TYPES
        and (obj.keys() <= _FIELDS or value.count(b"[") + value.count(b"{") <= _FAST_PATH_MAX_BRACKETS)
    ):
        return obj
    return None


_FIELDS = frozenset(("id", "pixels", "label", "sent_at"))
_FAST_PATH_MAX_BRACKETS = 100  # far below any nesting json.loads could refuse
_EXACT_LABEL_TYPES = (int, type(None))
_EXACT_SENT_AT_TYPES = (int, float, type(None))


def _parse_object(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """The message's JSON object; the size limit is checked before any parsing."""
    if not value:
        raise InvalidMessage("empty", "the message has no bytes")
    if len(value) > max_bytes:
        raise InvalidMessage("too_large", f"{len(value)} bytes exceeds the {max_bytes}-byte limit")
    obj = _parse_fast(value)
    if obj is None or "ids" in obj:  # the fast path is vetted for the one-image form only
        obj = _parse(value)
    if not isinstance(obj, dict):
        raise InvalidMessage("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _id_problem(image_id: Any) -> str | None:
    """Why ``image_id`` is not a valid image id, or None (the one id rule of both forms)."""
    if not isinstance(image_id, str) or not 1 <= len(image_id) <= MAX_ID_CHARS:
        return f"id must be a string of 1-{MAX_ID_CHARS} characters, got {repr(image_id)[:60]}"
    try:
        image_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in JSON (\ud800): no UTF-8 form
        return f"id {image_id[:60]!r} is not valid Unicode (lone surrogate)"
    return None


def _label_problem(label: Any) -> str | None:
    if label is not None and (not _is_int(label) or not 0 <= label < NUM_CLASSES):
        return f"label must be an integer 0-9 or null, got {reprlib.repr(label)}"
    return None


def _sent_at(obj: dict[str, Any]) -> float | None:
    sent_at = obj.get("sent_at")
    if sent_at is None:
        return None

    def wrong() -> str:  # built only for a bad value: this runs for every message
        return f"sent_at must be a finite number or null, got {reprlib.repr(sent_at)}"

    if not isinstance(sent_at, (int, float)) or isinstance(sent_at, bool):
        raise InvalidMessage("bad_sent_at", wrong())
    try:
        sent_at = float(sent_at)  # a JSON integer like 1e400 written out overflows a float
    except OverflowError:
        raise InvalidMessage("bad_sent_at", wrong()) from None
    if not math.isfinite(sent_at):
        raise InvalidMessage("bad_sent_at", wrong())
    return sent_at


def decode_image(
    value: bytes | None,
    key: bytes | str | None = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> ImageMessage:
    """Decode and validate one ``images`` message in the one-image form; raise :class:`InvalidMessage`.

    ``key`` is the transport key (Kafka key / Pub/Sub ``id`` attribute); when given it
    must equal the ``id`` field, since partitioning and de-duplication rely on it.
    The size limit is checked before any parsing.
    """
    return _decode_single(_parse_object(value, max_bytes), key)


def _decode_single(obj: dict[str, Any], key: bytes | str | None) -> ImageMessage:
    image_id = obj.get("id")
    problem = _id_problem(image_id)
    if problem is not None:
        raise InvalidMessage("bad_id", problem)
    assert isinstance(image_id, str)
    if key is not None:
        if isinstance(key, bytes):
            key = key.decode("utf-8", errors="replace")
        if key and key != image_id:
            raise InvalidMessage("key_mismatch", f"key {key[:60]!r} differs from id {image_id[:60]!r}")

    pixels = _decode_pixels(obj.get("pixels"))

    label = obj.get("label")
    problem = _label_problem(label)
    if problem is not None:
        raise InvalidMessage("bad_label", problem)
    return ImageMessage(image_id, pixels, label, _sent_at(obj))


@dataclass(frozen=True)
class ImageBatch:
    """A decoded batch record: N images whose ids and labels are as sent (each image is
    checked by :func:`image_fault`), one ``sent_at`` for all."""

    ids: list[Any]
    labels: list[Any]  # N entries (all None when the record has no labels)
    pixels: np.ndarray  # shape (N, 784), dtype uint8
    sent_at: float | None = None


def decode_record(
    value: bytes | None,
    key: bytes | str | None = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_images: int = DEFAULT_MAX_BATCH_IMAGES,
) -> ImageMessage | ImageBatch:
    """Decode one ``images`` message of either form: a batch record when it has ``ids``.

    A batch record's transport key is not an id (it only picks the Kafka partition), so it
    is not compared; a fault of the record raises :class:`InvalidMessage`, a fault of one of
    its images does not (see :func:`image_fault`).
    """
    obj = _parse_object(value, max_bytes)
    if "ids" not in obj:
        return _decode_single(obj, key)
    ids = obj["ids"]
    if not isinstance(ids, list) or not ids:
        raise InvalidMessage("bad_ids", f"ids must be a non-empty list of image ids, got {reprlib.repr(ids)}")
    count = len(ids)
    if count > max_images:
        raise InvalidMessage("too_many_images", f"{count} images in one record exceeds the limit of {max_images}")
    labels = obj.get("labels")
    if labels is None:
        labels = [None] * count
    elif not isinstance(labels, list) or len(labels) != count:
        got = f"{len(labels)} labels" if isinstance(labels, list) else reprlib.repr(labels)
        raise InvalidMessage("bad_labels", f"labels must be null or a list of {count} labels (one per id), got {got}")
    raw = obj.get("pixels")
    if not isinstance(raw, str):
        raise InvalidMessage(
            "bad_pixels", f"a batch record's pixels must be one base64 string, got {type(raw).__name__}"
        )
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMessage("bad_base64", f"pixels is not standard base64 ({exc})") from None
    if len(data) != count * IMAGE_BYTES:
        raise InvalidMessage(
            "bad_pixel_count",
            f"pixels decodes to {len(data)} bytes, expected {count} images x {IMAGE_BYTES} = {count * IMAGE_BYTES}",
        )
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(count, IMAGE_BYTES)
    return ImageBatch(ids=ids, labels=labels, pixels=pixels, sent_at=_sent_at(obj))


def image_fault(batch: ImageBatch, index: int) -> InvalidMessage | None:
    """The fault of image ``index`` of ``batch`` (its id or its label), or None if it is valid.

    The error carries ``index`` and the image re-encoded alone (:func:`single_image_value`),
    which fails :func:`decode_image` the same way until it is fixed.
    """
    problem = _id_problem(batch.ids[index])
    kind = "bad_id"
    if problem is None:
        problem = _label_problem(batch.labels[index])
        kind = "bad_label"
    if problem is None:
        return None
    image = single_image_value(batch.ids[index], batch.pixels[index], batch.labels[index], batch.sent_at)
    return InvalidMessage(kind, f"image {index} of the batch record: {problem}", index=index, image=image)


def image_faults(batch: ImageBatch) -> dict[int, InvalidMessage]:
    """index -> fault, for the images of ``batch`` that break the contract (usually none:
    the common case is checked over all ids and labels at once)."""
    ids, labels = batch.ids, batch.labels
    try:
        fine = all(type(i) is str and 0 < len(i) <= MAX_ID_CHARS for i in ids) and bool("".join(ids).encode("utf-8"))
    except UnicodeEncodeError:
        fine = False
    fine = fine and all(label is None or (type(label) is int and 0 <= label < NUM_CLASSES) for label in labels)
    if fine:
        return {}
    faults = {index: image_fault(batch, index) for index in range(len(ids))}
    return {index: fault for index, fault in faults.items() if fault is not None}


def single_image_value(image_id: Any, pixels: np.ndarray, label: Any, sent_at: float | None) -> bytes:
    """One image of a batch record in the one-image form, its id and label as they were sent."""
    message: dict[str, Any] = {"id": image_id, "pixels": base64.b64encode(pixels.tobytes()).decode("ascii")}
    if label is not None:
        message["label"] = label
    if sent_at is not None:
        message["sent_at"] = sent_at
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


class LabelMessage(NamedTuple):
    """A decoded, validated delayed label: the true class of image ``id``."""

    id: str
    label: int


# The labels-stream record the Kafka workers write to a partition to move its clock on when
# no other record does (so that waiting labels and predictions expire): not a label.
TICK_VALUE = b'{"tick":true}'


def decode_label(
    value: bytes | None, key: bytes | str | None = None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> LabelMessage | None:
    """Decode one labels-stream message ``{"id": str, "label": int 0-9}`` (extra fields are
    ignored); None for a clock tick (:data:`TICK_VALUE`). Raises :class:`InvalidMessage`
    with the kinds images have (``empty``, ``too_large``, ``not_utf8``, ``not_json``,
    ``not_object``, ``bad_id``, ``key_mismatch``, ``bad_label``); the label is required."""
    if value == TICK_VALUE:
        return None
    if not value:
        raise InvalidMessage("empty", "the message has no bytes")
    if len(value) > max_bytes:
        raise InvalidMessage("too_large", f"{len(value)} bytes exceeds the {max_bytes}-byte limit")
    obj = _parse(value)
    if not isinstance(obj, dict):
        raise InvalidMessage("not_object", f"expected a JSON object, got {type(obj).__name__}")
    image_id = obj.get("id")
    problem = _id_problem(image_id)
    if problem is not None:
        raise InvalidMessage("bad_id", problem)
    assert isinstance(image_id, str)
    if isinstance(key, bytes):
        key = key.decode("utf-8", errors="replace")
    if key and key != image_id:
        raise InvalidMessage("key_mismatch", f"key {key[:60]!r} differs from id {image_id[:60]!r}")
    label = obj.get("label")
    if label is None or _label_problem(label) is not None:
        raise InvalidMessage("bad_label", f"a label message needs label, an integer 0-9, got {reprlib.repr(label)}")
    return LabelMessage(image_id, label)


def encode_label(image_id: str, label: int) -> bytes:
    """Encode one labels-stream message."""
    return json.dumps({"id": image_id, "label": int(label)}, separators=(",", ":")).encode("utf-8")


def encode_image(
    image_id: str,
    pixels: np.ndarray | bytes,
    label: int | None = None,
    sent_at: float | None = None,
) -> bytes:
    """Encode one image in the contract's default form (base64 pixels in JSON)."""
    data = pixels.tobytes() if isinstance(pixels, np.ndarray) else bytes(pixels)
    if len(data) != IMAGE_BYTES:
        raise ValueError(f"an image has {IMAGE_BYTES} bytes, got {len(data)}")
    message: dict[str, Any] = {"id": image_id, "pixels": base64.b64encode(data).decode("ascii")}
    if label is not None:
        message["label"] = int(label)
    if sent_at is not None:
        message["sent_at"] = sent_at
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def encode_batch(
    ids: Sequence[str],
    pixels: np.ndarray | bytes,
    labels: Sequence[int | None] | None = None,
    sent_at: float | None = None,
) -> bytes:
    """Encode N images as one batch record: ``ids``, optional ``labels``, and ``pixels`` the
    base64 of the N x 784 bytes (row-major, image after image)."""
    data = pixels.tobytes() if isinstance(pixels, np.ndarray) else bytes(pixels)
    if not ids or len(data) != len(ids) * IMAGE_BYTES:
        raise ValueError(f"{len(ids)} ids need {len(ids) * IMAGE_BYTES} pixel bytes, got {len(data)}")
    message: dict[str, Any] = {"ids": list(ids)}
    if labels is not None:
        if len(labels) != len(ids):
            raise ValueError(f"{len(ids)} ids need as many labels, got {len(labels)}")
        message["labels"] = [None if label is None else int(label) for label in labels]
    message["pixels"] = base64.b64encode(data).decode("ascii")
    if sent_at is not None:
        message["sent_at"] = sent_at
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


class Prediction(NamedTuple):
    """One classified image, as published on ``predictions`` (a named tuple, as
    :class:`ImageMessage`: one is built per image)."""

    id: str
    predicted: int
    confidence: float
    label: int | None
    model_version: str
    latency_ms: float | None

    @property
    def correct(self) -> bool | None:
        return None if self.label is None else self.label == self.predicted

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "predicted": self.predicted,
            "class_name": CLASS_NAMES[self.predicted],
            "confidence": round(self.confidence, 6),
            "label": self.label,
            "correct": self.correct,
            "model_version": self.model_version,
            # a sent_at far in the past makes the latency overflow: JSON has no Infinity
            "latency_ms": (
                None if self.latency_ms is None or not math.isfinite(self.latency_ms) else round(self.latency_ms, 3)
            ),
        }

    def encode(self) -> bytes:
        """Compact UTF-8 JSON (orjson: the same object as ``json.dumps`` writes, faster)."""
        return orjson.dumps(self.to_dict())


def decode_prediction(value: bytes) -> dict[str, Any]:
    """Parse a ``predictions`` message (used by loggers and tests)."""
    try:
        obj = json.loads(value.decode("utf-8"))
    except RecursionError:
        raise ValueError(f"not a prediction (nested too deeply): {value[:120]!r}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not _is_int(obj.get("predicted")):
        raise ValueError(f"not a prediction: {value[:120]!r}")
    return obj
