"""The malformed-message catalogue of issue 5: one entry per way to break the contract.

Shared by the decoder's unit tests (tests/core/test_contract.py) and the real-broker
test (tests/fmnist_faust/test_bad_input_kafka.py). Every entry carries its own key
(``bad-<name>``, equal to the id wherever the message has one, so that only the defect
under test can fire) and the exact ``error_kind`` the decoder must report.
"""

from __future__ import annotations

import base64
import json
import pickle
from dataclasses import dataclass
from typing import Any

from fmnist_faust.core.contract import DEFAULT_MAX_MESSAGE_BYTES, IMAGE_BYTES, MAX_ID_CHARS

GOOD_PIXELS = bytes(range(256)) * 3 + bytes(range(16))  # 784 bytes, every value 0-255 present
assert len(GOOD_PIXELS) == IMAGE_BYTES
GOOD_B64 = base64.b64encode(GOOD_PIXELS).decode("ascii")
PWNED_MARKER = "fmnist-pickle-was-executed"


@dataclass(frozen=True)
class Case:
    name: str
    value: bytes | None
    key: bytes | None
    kind: str


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _msg(key: str, **fields: Any) -> bytes:
    """A message that is valid except for ``fields`` (a field set to ``...`` is removed)."""
    obj: dict[str, Any] = {"id": key, "pixels": GOOD_B64, "label": 3, "sent_at": 1.7e9}
    for name, value in fields.items():
        if value is ...:
            obj.pop(name, None)
        else:
            obj[name] = value
    return _json(obj)


def _batch(prefix: str, **fields: Any) -> bytes:
    """A batch record of two images that is valid except for ``fields`` (``...`` removes one)."""
    obj: dict[str, Any] = {
        "ids": [f"{prefix}-0", f"{prefix}-1"],
        "labels": [3, 4],
        "pixels": base64.b64encode(GOOD_PIXELS * 2).decode("ascii"),
        "sent_at": 1.7e9,
    }
    for name, value in fields.items():
        if value is ...:
            obj.pop(name, None)
        else:
            obj[name] = value
    return _json(obj)


class _Exploit:
    """Unpickling this would create a directory named by the marker (and prove code ran)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return os.makedirs, (self.path,)


def pickle_payloads(marker_dir: str) -> dict[str, bytes]:
    """Pickles that would run ``os.makedirs(marker_dir)`` if anything unpickled them."""
    exploit = _Exploit(marker_dir)
    return {
        "pickle_protocol0": pickle.dumps(exploit, protocol=0),
        "pickle_protocol5": pickle.dumps(exploit, protocol=5),
    }


def catalogue(marker_dir: str = f"/nonexistent/{PWNED_MARKER}") -> list[Case]:
    """Every malformed message with its expected ``error_kind``."""
    cases: list[Case] = []

    def add(name: str, value: bytes | None, kind: str, key: bytes | None | str = "auto") -> None:
        cases.append(Case(name, value, f"bad-{name}".encode() if key == "auto" else key, kind))  # type: ignore[arg-type]

    def with_id(name: str, kind: str, **fields: Any) -> None:
        add(name, _msg(f"bad-{name}", **fields), kind)

    # --- transport level: size, bytes, text, JSON ---
    add("empty", b"", "empty")
    add("tombstone", None, "empty")
    # Oversize, huge and invalid everywhere: rejected on length alone, before any parsing.
    add("oversize_invalid", b"\xff{" + b"x" * DEFAULT_MAX_MESSAGE_BYTES, "too_large")
    padded = _msg("bad-oversize_valid", pad="")
    add(
        "oversize_valid",
        _msg("bad-oversize_valid", pad="x" * (DEFAULT_MAX_MESSAGE_BYTES - len(padded) + 1)),
        "too_large",
    )
    add("invalid_utf8", b'{"id":"bad-invalid_utf8","pixels":"\xff\xfe"}', "not_utf8")
    add("utf16", '{"id":"bad-utf16"}'.encode("utf-16"), "not_utf8")
    for name, payload in pickle_payloads(marker_dir).items():
        add(name, payload, "not_json" if payload.isascii() else "not_utf8")
    add("not_json", b"not json", "not_json")
    add("truncated_json", _msg("bad-truncated_json")[:-10], "not_json")
    add("python_literal", b"{'id': 'bad-python_literal'}", "not_json")
    add("deeply_nested", b"[" * 100_000 + b"]" * 100_000, "not_json")
    add("json_array", _json([1, 2, 3]), "not_object")
    add("json_string", _json("bad-json_string"), "not_object")
    add("json_null", b"null", "not_object")
    add("json_number", b"42", "not_object")

    # --- id and key ---
    add("missing_id", _json({"pixels": GOOD_B64, "label": 1}), "bad_id")
    add("id_empty", _json({"id": "", "pixels": GOOD_B64}), "bad_id", key=None)
    add(
        "id_too_long",
        _json({"id": "x" * (MAX_ID_CHARS + 1), "pixels": GOOD_B64}),
        "bad_id",
        key=b"x" * (MAX_ID_CHARS + 1),
    )
    add("id_number", _json({"id": 42, "pixels": GOOD_B64}), "bad_id", key=b"42")
    add("id_null", _json({"id": None, "pixels": GOOD_B64}), "bad_id")
    add("id_list", _json({"id": ["bad-id_list"], "pixels": GOOD_B64}), "bad_id")
    add("id_lone_surrogate", b'{"id":"bad-\\ud800","pixels":"' + GOOD_B64.encode() + b'"}', "bad_id", key=None)
    add("key_mismatch", _msg("bad-key_mismatch-id"), "key_mismatch")

    # --- pixels ---
    with_id("pixels_missing", "bad_pixels", pixels=...)
    with_id("pixels_null", "bad_pixels", pixels=None)
    with_id("pixels_object", "bad_pixels", pixels={"data": GOOD_B64})
    with_id("pixels_number", "bad_pixels", pixels=7)
    with_id("base64_garbage", "bad_base64", pixels="!!!not base64!!!")
    with_id("base64_no_padding", "bad_base64", pixels=GOOD_B64[:-2] + "A")
    with_id("base64_with_newlines", "bad_base64", pixels=GOOD_B64[:76] + "\n" + GOOD_B64[76:])
    with_id("base64_urlsafe", "bad_base64", pixels=base64.urlsafe_b64encode(bytes([251, 255]) * 392).decode())
    with_id("base64_non_ascii", "bad_base64", pixels="é" * 8)
    with_id("base64_783_bytes", "bad_pixel_count", pixels=base64.b64encode(GOOD_PIXELS[:-1]).decode())
    with_id("base64_785_bytes", "bad_pixel_count", pixels=base64.b64encode(GOOD_PIXELS + b"\0").decode())
    with_id("base64_empty", "bad_pixel_count", pixels="")
    with_id("list_783_values", "bad_pixel_count", pixels=list(GOOD_PIXELS[:-1]))
    with_id("list_785_values", "bad_pixel_count", pixels=list(GOOD_PIXELS) + [0])
    with_id("list_empty", "bad_pixel_count", pixels=[])
    with_id("list_2d", "bad_pixel_count", pixels=[list(GOOD_PIXELS[i : i + 28]) for i in range(0, 784, 28)])
    for name, bad in [
        ("256", 256),
        ("negative", -1),
        ("float", 1.5),
        ("integral_float", 1.0),
        ("string", "1"),
        ("null", None),
        ("bool", True),
        ("nested_list", [1]),
    ]:
        pixels: list[Any] = list(GOOD_PIXELS)
        pixels[500] = bad
        with_id(f"pixel_{name}", "bad_pixel_value", pixels=pixels)

    # --- label ---
    for name, bad in [
        ("10", 10),
        ("negative", -1),
        ("string", "3"),
        ("float", 3.0),
        ("bool", True),
        ("list", [3]),
        ("huge", 10**30),
    ]:
        with_id(f"label_{name}", "bad_label", label=bad)

    # --- sent_at ---
    for name, bad in [("string", "2024-01-01T00:00:00Z"), ("bool", False), ("list", [1.0]), ("object", {"t": 1})]:
        with_id(f"sent_at_{name}", "bad_sent_at", sent_at=bad)
    for name, literal in [
        ("nan", b"NaN"),
        ("infinity", b"Infinity"),
        ("minus_infinity", b"-Infinity"),
        ("overflow_float", b"1e400"),
        ("overflow_int", b"1" + b"0" * 400),
    ]:
        value = _msg(f"bad-sent_at_{name}", sent_at=0.5).replace(b"0.5", literal)
        add(f"sent_at_{name}", value, "bad_sent_at")

    # --- batch records (``ids``): a fault of the record rejects it whole ---
    def batch(name: str, kind: str, **fields: Any) -> None:
        add(f"batch_{name}", _batch(f"bad-batch_{name}", **fields), kind)

    batch("ids_empty", "bad_ids", ids=[], pixels="")
    batch("ids_string", "bad_ids", ids="bad-batch_ids_string")
    batch("ids_null", "bad_ids", ids=None)
    batch("ids_object", "bad_ids", ids={"0": "x"})
    batch("too_many_images", "too_many_images", ids=[f"i{n}" for n in range(1001)], labels=..., pixels="")
    batch("labels_short", "bad_labels", labels=[1])
    batch("labels_long", "bad_labels", labels=[1, 2, 3])
    batch("labels_string", "bad_labels", labels="12")
    batch("pixels_missing", "bad_pixels", pixels=...)
    batch("pixels_list", "bad_pixels", pixels=list(GOOD_PIXELS * 2))
    batch("base64_garbage", "bad_base64", pixels="!!!not base64!!!")
    batch("pixels_one_image_short", "bad_pixel_count", pixels=base64.b64encode(GOOD_PIXELS * 2)[:-8].decode())
    batch("pixels_one_image_for_two", "bad_pixel_count", pixels=GOOD_B64)
    batch("sent_at_string", "bad_sent_at", sent_at="now")

    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "catalogue names must be unique"
    return cases
