"""The lock files (``tools/lock.sh``) pin every dependency within setup.cfg's ranges, agree
with each other, and are what this environment has installed (``make install``)."""

from __future__ import annotations

import configparser
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support import ROOT


def _pins(lock: Path) -> dict[str, str]:
    return {
        canonicalize_name(name): version
        for name, version in re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", lock.read_text(), flags=re.M)
    }


RUNTIME = _pins(ROOT / "requirements.lock")
DEV = _pins(ROOT / "requirements-dev.lock")


def _requirements(option: str, section: str = "options") -> list[Requirement]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return [Requirement(line) for line in setup[section][option].strip().splitlines()]


@pytest.mark.parametrize("lock", [RUNTIME, DEV], ids=["requirements.lock", "requirements-dev.lock"])
def test_every_dependency_is_pinned_within_its_range(lock: dict[str, str]) -> None:
    for requirement in _requirements("install_requires"):
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is not in the lock: run tools/lock.sh"
        assert requirement.specifier.contains(lock[name]), f"{name}=={lock[name]} is outside {requirement}"


@pytest.mark.parametrize("extra", ["test", "bench", "docs"])
def test_every_extra_is_pinned_within_its_range_in_the_dev_lock(extra: str) -> None:
    for requirement in _requirements(extra, "options.extras_require"):
        name = canonicalize_name(requirement.name)
        assert name in DEV, f"{name} is not in requirements-dev.lock: run tools/lock.sh"
        assert requirement.specifier.contains(DEV[name]), f"{name}=={DEV[name]} is outside {requirement}"


def test_the_image_and_the_dev_environment_get_the_same_versions() -> None:
    assert {name: DEV.get(name) for name in RUNTIME} == RUNTIME


def test_the_installed_versions_are_the_dev_locks() -> None:
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {name: (pinned, installed.get(name)) for name, pinned in DEV.items() if installed.get(name) != pinned}
    assert not differ, f"pinned, installed: {differ}; run make install"
