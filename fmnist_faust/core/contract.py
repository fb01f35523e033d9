"""The wire contract: JSON image messages in, JSON predictions out.

Everything a transport carries is decoded here and nowhere else. Decoding never
evaluates or unpickles anything: the only parsers used are JSON (``orjson``, the fast path,
and ``json``) and base64 (``binascii``/``base64``). The fast path only ever decides what
the standard library would: a message it cannot take as is goes through ``json`` and
``base64`` again, which give the verdict and the reason (see :func:`_parse_fast`).
A message that breaks the contract raises :class:`InvalidMessage` with a short,
stable ``kind`` (used in DLQ headers and the ``rejected`` counters) and a reason a
person can act on.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import reprlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

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
}


class InvalidMessage(ValueError):
    """A message that breaks the contract; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, reason: str) -> None:
        assert kind in ERROR_KINDS, kind
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


def dead_letter_attributes(error: InvalidMessage) -> dict[str, str]:
    """``error_kind`` and ``error`` for the dead letter of ``error``: Kafka headers (UTF-8)
    and Pub/Sub attributes alike, each value within Pub/Sub's 1,024-byte limit."""
    reason = error.reason.encode("utf-8", "replace")[:MAX_ATTRIBUTE_BYTES].decode("utf-8", "ignore")
    return {"error_kind": error.kind, "error": reason}


@dataclass(frozen=True)
class ImageMessage:
    """A decoded, validated image: 784 uint8 pixels plus its metadata."""

    id: str
    pixels: np.ndarray  # shape (784,), dtype uint8
    label: int | None = None
    sent_at: float | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


if sys.version_info >= (3, 11):

    def _b64_fast(raw: str) -> bytes | None:
        """Strict ``a2b_base64``, None where it refuses: it accepts a subset of what
        ``b64decode(validate=True)`` does, to the same bytes, without its regular expression."""
        try:  # from bytes: a2b_base64 reads a str argument slower than it encodes it first
            return binascii.a2b_base64(raw.encode("ascii"), strict_mode=True)
        except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
            return None

else:  # strict_mode is new in Python 3.11: base64 decides alone

    def _b64_fast(raw: str) -> bytes | None:
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


def decode_image(
    value: bytes | None,
    key: bytes | str | None = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> ImageMessage:
    """Decode and validate one ``images`` message; raise :class:`InvalidMessage`.

    ``key`` is the transport key (Kafka key / Pub/Sub ``id`` attribute); when given it
    must equal the ``id`` field, since partitioning and de-duplication rely on it.
    The size limit is checked before any parsing.
    """
    if not value:
        raise InvalidMessage("empty", "the message has no bytes")
    if len(value) > max_bytes:
        raise InvalidMessage("too_large", f"{len(value)} bytes exceeds the {max_bytes}-byte limit")
    obj = _parse_fast(value)
    if obj is None:
        obj = _parse(value)
    if not isinstance(obj, dict):
        raise InvalidMessage("not_object", f"expected a JSON object, got {type(obj).__name__}")

    image_id = obj.get("id")
    if not isinstance(image_id, str) or not 1 <= len(image_id) <= MAX_ID_CHARS:
        shown = repr(image_id)[:60]
        raise InvalidMessage("bad_id", f"id must be a string of 1-{MAX_ID_CHARS} characters, got {shown}")
    try:
        image_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in JSON (\ud800): no UTF-8 form
        raise InvalidMessage("bad_id", f"id {image_id[:60]!r} is not valid Unicode (lone surrogate)") from None
    if key is not None:
        if isinstance(key, bytes):
            key = key.decode("utf-8", errors="replace")
        if key and key != image_id:
            raise InvalidMessage("key_mismatch", f"key {key[:60]!r} differs from id {image_id[:60]!r}")

    pixels = _decode_pixels(obj.get("pixels"))

    label = obj.get("label")
    if label is not None and (not _is_int(label) or not 0 <= label < NUM_CLASSES):
        raise InvalidMessage("bad_label", f"label must be an integer 0-9 or null, got {reprlib.repr(label)}")

    sent_at = obj.get("sent_at")
    if sent_at is not None:

        def wrong() -> str:  # built only for a bad value: this runs for every image
            return f"sent_at must be a finite number or null, got {reprlib.repr(sent_at)}"

        if not isinstance(sent_at, (int, float)) or isinstance(sent_at, bool):
            raise InvalidMessage("bad_sent_at", wrong())
        try:
            sent_at = float(sent_at)  # a JSON integer like 1e400 written out overflows a float
        except OverflowError:
            raise InvalidMessage("bad_sent_at", wrong()) from None
        if not math.isfinite(sent_at):
            raise InvalidMessage("bad_sent_at", wrong())

    return ImageMessage(id=image_id, pixels=pixels, label=label, sent_at=sent_at)


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


@dataclass(frozen=True)
class Prediction:
    """One classified image, as published on ``predictions``."""

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
