"""Security: a model is only unpickled after its manifest vouches for it; topics never are.

joblib files are pickles, so loading one runs code. :func:`load_classifier` must refuse a
changed file, a missing or foreign manifest, or another scikit-learn's model with
:class:`ModelError` *before* ``joblib.load`` is called: every refusal below runs with
``joblib.load`` replaced by a tripwire.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import pytest
import sklearn

from fmnist_faust.core.model import ModelError, load_classifier, manifest_path_for, sha256_file, verify

ROOT = Path(__file__).resolve().parents[2]


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return os.makedirs, (self.path,)


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model and its manifest, free to damage."""
    path = tmp_path / "copy" / "model.joblib"
    path.parent.mkdir()
    shutil.copy(tiny_model, path)
    shutil.copy(manifest_path_for(tiny_model), manifest_path_for(path))
    return path


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace joblib.load (and pickle.load/loads) with functions that fail the test."""
    calls: list[Any] = []

    def tripped(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError(f"unpickled before verification: {args!r}")

    monkeypatch.setattr(joblib, "load", tripped)
    monkeypatch.setattr(pickle, "load", tripped)
    monkeypatch.setattr(pickle, "loads", tripped)
    return calls


def _edit_manifest(path: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Apply ``change`` to the manifest dict in place and write it back."""
    manifest_file = manifest_path_for(path)
    manifest = json.loads(manifest_file.read_text())
    change(manifest)
    manifest_file.write_text(json.dumps(manifest))


def _refused(path: Path, calls: list[Any], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        load_classifier(path)
    with pytest.raises(ModelError, match=match):
        verify(path)
    assert calls == [], "joblib.load was called for a model that should have been refused"


def test_verified_model_loads_through_joblib_once(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_load = joblib.load
    loaded: list[Any] = []

    def spy(source: Any, *args: Any, **kwargs: Any) -> Any:
        loaded.append(source.getvalue())  # the in-memory bytes that were hashed, not a re-read
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(joblib, "load", spy)
    classifier = load_classifier(model_copy)
    assert loaded == [model_copy.read_bytes()]
    assert classifier.version == json.loads(manifest_path_for(model_copy).read_text())["model_version"]
    assert classifier.version == f"mlp-{sha256_file(model_copy)[:12]}"


def test_one_flipped_byte_is_refused(model_copy: Path, tripwire: list[Any]) -> None:
    data = bytearray(model_copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_copy.write_bytes(bytes(data))
    _refused(model_copy, tripwire, "does not match its manifest")


def test_appended_bytes_are_refused(model_copy: Path, tripwire: list[Any]) -> None:
    with open(model_copy, "ab") as handle:
        handle.write(b"\0")
    _refused(model_copy, tripwire, "SHA-256")


def test_malicious_pickle_in_place_of_the_model_is_never_run(model_copy: Path, tmp_path: Path) -> None:
    """No tripwire here: the real joblib.load stays in place, and the exploit must not run."""
    marker = tmp_path / "pwned"
    with open(model_copy, "wb") as handle:
        pickle.dump(_Exploit(str(marker)), handle)
    with pytest.raises(ModelError, match="refusing to unpickle"):
        load_classifier(model_copy)
    assert not marker.exists()


def test_missing_manifest_is_refused(model_copy: Path, tripwire: list[Any]) -> None:
    manifest_path_for(model_copy).unlink()
    _refused(model_copy, tripwire, "manifest missing")


def test_manifest_that_is_not_json_is_refused(model_copy: Path, tripwire: list[Any]) -> None:
    manifest_path_for(model_copy).write_text("sha256: whatever\n")
    _refused(model_copy, tripwire, "not JSON")


@pytest.mark.parametrize(
    "foreign",
    [
        [],
        {"sha256": "0" * 64},
        {"format": 2},
        {"format": "1"},
    ],
)
def test_foreign_manifest_is_refused(model_copy: Path, tripwire: list[Any], foreign: Any) -> None:
    manifest_path_for(model_copy).write_text(json.dumps(foreign))
    _refused(model_copy, tripwire, "not a fmnist-faust model manifest")


def test_manifest_of_another_model_is_refused(model_copy: Path, tmp_path: Path, tripwire: list[Any]) -> None:
    other = tmp_path / "other.joblib"
    other.write_bytes(b"another model")
    manifest = json.loads(manifest_path_for(model_copy).read_text())
    manifest["sha256"] = sha256_file(other)
    manifest_path_for(model_copy).write_text(json.dumps(manifest))
    _refused(model_copy, tripwire, "does not match its manifest")


def test_manifest_without_hash_is_refused(model_copy: Path, tripwire: list[Any]) -> None:
    _edit_manifest(model_copy, lambda m: m.pop("sha256"))
    _refused(model_copy, tripwire, "does not match its manifest")


@pytest.mark.parametrize("version", ["0.24.2", "1.0", None])
def test_other_sklearn_version_is_refused(model_copy: Path, tripwire: list[Any], version: str | None) -> None:
    assert version != sklearn.__version__
    _edit_manifest(model_copy, lambda m: m.__setitem__("sklearn_version", version))
    _refused(model_copy, tripwire, f"installed is {sklearn.__version__}")


def test_other_class_names_are_refused(model_copy: Path, tripwire: list[Any]) -> None:
    _edit_manifest(model_copy, lambda m: m.__setitem__("class_names", [str(i) for i in range(10)]))
    _refused(model_copy, tripwire, "class names")


def test_missing_model_file_is_refused(model_copy: Path, tripwire: list[Any]) -> None:
    model_copy.unlink()
    _refused(model_copy, tripwire, "model file missing")


# ---------------------------------------------------------------------------------------
# Nothing from a topic is unpickled or evaluated
# ---------------------------------------------------------------------------------------

_FORBIDDEN_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("marshal", "loads"),
    ("marshal", "load"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("dill", "loads"),
    ("cloudpickle", "loads"),
    ("joblib", "load"),
    ("shelve", "open"),
    ("numpy", "load"),
    ("np", "load"),
}
_FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__"}


def _source_files() -> list[Path]:
    files = sorted((ROOT / "fmnist_faust").rglob("*.py")) + sorted((ROOT / "pubsub_bridge").rglob("*.py"))
    assert any(f.name == "contract.py" for f in files)
    return files


def test_no_deserializer_that_runs_code_outside_the_verified_model_loader() -> None:
    """The only unpickling call in the product is joblib.load in core/model.load_classifier."""
    found: list[str] = []
    for path in _source_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if isinstance(func, ast.Name) and func.id in _FORBIDDEN_NAMES:
                found.append(f"{where} {func.id}()")
            elif (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and (func.value.id, func.attr) in _FORBIDDEN_CALLS
            ):
                found.append(f"{where} {func.value.id}.{func.attr}()")
    assert found == [f"fmnist_faust/core/model.py:{_joblib_load_line()} joblib.load()"], found


def _joblib_load_line() -> int:
    source = (ROOT / "fmnist_faust" / "core" / "model.py").read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if "joblib.load(" in line and "def " not in line)


def test_faust_topics_and_tables_use_no_pickle_codec() -> None:
    """Faust can decode values with a pickle codec; our topics carry raw bytes, tables JSON."""
    from fmnist_faust import tables, topics
    from fmnist_faust.faust_app import app

    for topic in (topics.images_topic, topics.predictions_topic, topics.dlq_topic):
        assert topic.key_serializer == "raw" and topic.value_serializer == "raw", topic
    table_topics = [table.changelog_topic for table in app.tables.values()]
    assert tables.scores_table.changelog_topic in table_topics
    for topic in table_topics:
        assert topic.key_serializer == "json" and topic.value_serializer == "json", topic
    assert "pickle" not in (str(app.conf.key_serializer), str(app.conf.value_serializer))
