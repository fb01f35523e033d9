"""``fmnist-model`` on the Pub/Sub backend's SQLite store (no service needed): the commands,
what they write, and the refusals (exit 2)."""

from __future__ import annotations

import pytest

from fmnist_faust.model_cli import main
from pubsub_bridge.store import open_store


@pytest.fixture
def cli(rollout_models, tmp_path, monkeypatch: pytest.MonkeyPatch):
    state_path = tmp_path / "state.sqlite3"
    monkeypatch.setenv("BRIDGE_STATE_PATH", str(state_path))
    monkeypatch.delenv("BRIDGE_STATE_URL", raising=False)
    monkeypatch.setenv("BRIDGE_WEB_PORT", "1")  # nobody serves there: status says so

    def run(*args: str, directory=rollout_models.trusted) -> int:
        monkeypatch.setenv("FMNIST_MODEL_DIR", str(directory))
        monkeypatch.setenv("FMNIST_MODEL_PATH", str(directory / "m0.joblib"))
        return main(["--backend", "pubsub", *args])

    def pointer():
        store = open_store(f"sqlite:///{state_path}")
        try:
            return store.rollout_state()
        finally:
            store.close()

    run.pointer = pointer  # type: ignore[attr-defined]
    return run


def test_list_shadow_promote_unshadow(cli, rollout_models, capsys: pytest.CaptureFixture) -> None:
    v0, v1, v2 = rollout_models.versions
    assert cli("list") == 0
    listing = capsys.readouterr().out
    assert all(v in listing for v in rollout_models.versions) and "live (default)" in listing
    header, *rows = listing.splitlines()
    assert "DRIFT REF" in header and len(rows) == 3 and all(" yes " in row for row in rows)  # trained with one

    assert cli("shadow", v1) == 0
    state = cli.pointer()
    assert state.live is None and state.shadow.version == v1 and len(state.shadow.sha256) == 64
    assert cli("status") == 0
    out = capsys.readouterr().out
    assert f"shadow: {v1}" in out and "not reachable" in out

    assert cli("shadow", v2) == 0 and cli("promote", v1) == 0
    state = cli.pointer()
    assert (state.live.version, state.shadow.version) == (v1, v2)  # promoting v1 keeps the other shadow
    assert cli("unshadow") == 0 and cli.pointer().shadow is None
    assert cli("promote", v1) == 0 and "already live" in capsys.readouterr().out
    assert cli("list") == 0
    assert f"{v1}   live" in capsys.readouterr().out


def test_unknown_tampered_or_live_versions_are_refused(cli, rollout_models, capsys: pytest.CaptureFixture) -> None:
    v0, _, v2 = rollout_models.versions
    assert cli("promote", "mlp-000000000000") == 2
    assert "unknown model version" in capsys.readouterr().err
    assert cli("promote", v2, directory=rollout_models.serving) == 2
    assert "does not match its manifest" in capsys.readouterr().err
    assert cli("shadow", v0) == 2 and "is the live model" in capsys.readouterr().err
    assert cli.pointer().live is None  # nothing was written
