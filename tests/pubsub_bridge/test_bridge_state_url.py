"""BRIDGE_STATE_URL: the setting, the bridge's start on a bad URL, and the handler holding
its batch while PostgreSQL restarts (no emulator needed: stand-ins for Pub/Sub)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from test_bridge_handler import DirectAcker, RecordingPublisher, image

from bench.local_postgres import PASSWORD, LocalPostgres
from fmnist_faust.config import ConfigError, load_settings
from fmnist_faust.core import dataset
from fmnist_faust.core.model import load_classifier
from fmnist_faust.core.recent import RecentMistakes
from fmnist_faust.core.scores import Scores
from pubsub_bridge.bridge import Batcher
from pubsub_bridge.handler import BatchHandler
from pubsub_bridge.store import open_store, redact_url
from pubsub_bridge.web import Views, WebServer
from support import free_port


def test_the_default_is_the_sqlite_file_of_bridge_state_path(tmp_path: Path) -> None:
    assert load_settings({}).bridge.state_url == f"sqlite:///{load_settings({}).bridge.state_path}"
    path = tmp_path / "s.sqlite3"
    assert load_settings({"BRIDGE_STATE_PATH": str(path)}).bridge.state_url == f"sqlite:///{path}"
    # BRIDGE_STATE_URL wins over the alias
    both = load_settings({"BRIDGE_STATE_PATH": str(path), "BRIDGE_STATE_URL": "sqlite:///rel/x.db"})
    assert both.bridge.state_url == "sqlite:///rel/x.db"
    store = open_store(f"sqlite:///{path}")
    assert store.location == str(path)
    store.close()


def test_a_postgres_url_is_accepted_and_never_shown() -> None:
    url = f"postgresql://fmnist:{PASSWORD}@db.internal:5432/fmnist"
    settings = load_settings({"BRIDGE_STATE_URL": url})
    assert settings.bridge.state_url == url
    assert PASSWORD not in repr(settings)
    assert redact_url(url) == "postgresql://fmnist:***@db.internal:5432/fmnist"
    assert redact_url("postgresql://fmnist@db/x") == "postgresql://fmnist@db/x"


@pytest.mark.parametrize("url", ["mysql://u:pw-in-url@h/db", "sqlite:///", "u:pw-in-url@h/db"])
def test_an_unknown_url_is_a_config_error_that_hides_it(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"BRIDGE_STATE_URL": url})
    assert "pw-in-url" not in str(raised.value) and "BRIDGE_STATE_URL" in str(raised.value)


@pytest.mark.parametrize("what", ["password", "database"])
def test_the_bridge_exits_1_at_start_on_bad_credentials_or_a_missing_database(
    postgres: LocalPostgres, tiny_model: Path, tmp_path: Path, what: str
) -> None:
    url = postgres.url(password="wrong-pw") if what == "password" else postgres.url(database="no_such_db")
    env = {
        "PATH": "/usr/bin:/bin",
        "FMNIST_MODEL_PATH": str(tiny_model),
        "BRIDGE_STATE_URL": url,
        "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",  # never reached: the store is opened first
    }
    result = subprocess.run(
        [sys.executable, "-m", "pubsub_bridge", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "wrong-pw" not in output and PASSWORD not in output
    assert "cannot open the state store postgresql://postgres:***@127.0.0.1" in output
    assert "check the user, password and database name in BRIDGE_STATE_URL" in output


def test_the_batch_is_held_while_postgres_restarts_then_goes_through(
    postgres: LocalPostgres,
    pg_url: str,
    tiny_model: Path,
    test_split: dataset.Split,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database goes away with a batch in hand: nothing is acked or counted until it is
    back, one warning says so, and the batch goes through by itself afterwards."""
    store = open_store(pg_url)
    publisher = RecordingPublisher()
    handler = BatchHandler(
        load_classifier(tiny_model), store, publisher, DirectAcker(), 1 << 20, 10, "predictions", "dlq",
        RecentMistakes(), publish_timeout_s=5,
    )  # fmt: skip
    batcher = Batcher(handler, batch_size=50, linger_s=0.01)
    batcher.start()
    first = [image(test_split, i, f"m{i}") for i in range(20)]
    for delivery in first:
        batcher.put(delivery)  # type: ignore[arg-type]
    deadline = time.monotonic() + 20
    while store.scores.images < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.scores.images == 20

    postgres.stop()  # the database is down ...
    second = [image(test_split, i, f"m{i}") for i in [*range(20, 60), *range(5)]]  # new ones + redeliveries
    with caplog.at_level(logging.INFO, logger="pubsub_bridge"):
        for delivery in second:
            batcher.put(delivery)  # type: ignore[arg-type]
        time.sleep(2.0)
        assert all(d.acks == 0 for d in second[:40]), "nothing acked while the database is down"
        restarter = threading.Timer(0.5, postgres.start)  # ... and comes back
        restarter.start()
        deadline = time.monotonic() + 60
        while not all(d.acks for d in second) and time.monotonic() < deadline:
            time.sleep(0.1)
        restarter.join()
    assert all(d.acks == 1 and d.nacks == 0 for d in second)
    assert store.scores.images == 60 and store.counted() == 60
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "the state store postgresql://postgres:***@" in warnings[0].getMessage()
    assert any(r.getMessage().startswith("resumed: the held batch") for r in caplog.records)
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
    batcher.drain(2.0)
    batcher.join(5)
    store.close()


def test_the_views_answer_503_while_the_store_is_away() -> None:
    def away() -> Scores:
        raise OSError("connection refused")

    views = Views(
        scores=away, model_version=lambda: "m", recent=RecentMistakes(), window_seconds=10, unavailable=(OSError,)
    )
    server = WebServer(views, "127.0.0.1", free_port()).start()
    try:
        response = requests.get(server.url + "/accuracy/", timeout=10)
        assert response.status_code == 503
        assert response.json() == {"error": "the state store is unavailable: connection refused"}
        assert requests.get(server.url + "/recent/", timeout=10).status_code == 200
    finally:
        server.stop()
