"""A fleet on one PostgreSQL store stays exact under faults (markers ``chaos``, ``pubsub``;
real emulator, real PostgreSQL).

Three bridge replicas, each started in its own working directory with nothing shared but
the subscription and the database (``BRIDGE_STATE_URL``), pull a stream of labelled images;
replicas are SIGKILLed and restarted mid-stream and the database is restarted once
(``pg_ctl -m fast restart``: every connection cut). At the end every replica's
``/accuracy/`` equals the offline confusion matrix and every id was answered.
``FLEET_CHAOS_IMAGES`` sets the count (CI default 2,000; the documented full run 20,000:
beyond the test split's 10,000 images the split is sent again under new ids).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.local_postgres import PASSWORD, LocalPostgres
from bridge_helpers import Bridge, Collector, checked_totals, offline_scores, publish_images
from fmnist_faust.config import Settings, load_settings
from fmnist_faust.core import dataset
from fmnist_faust.netutil import NotReady, wait_ready
from pubsub_bridge.admin import setup
from support import free_port, offline_confusion

pytestmark = [pytest.mark.pubsub, pytest.mark.chaos]
COUNT = min(int(os.environ.get("FLEET_CHAOS_IMAGES", "2000")), 50000)
SPLIT = 10000  # images in the Fashion-MNIST test split
ROUNDS = [(f"r{n}", range(min(SPLIT, COUNT - n * SPLIT))) for n in range((COUNT + SPLIT - 1) // SPLIT)]


def publish_rounds(settings: Settings, split: dataset.Split) -> None:
    for prefix, indices in ROUNDS:
        publish_images(settings, split, indices, prefix=prefix, chunk=100, pause=0.15)


class Replica(Bridge):
    """A bridge started in its own working directory (nothing on disk shared with the others)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(env, workdir / "bridge.log")
        self.workdir = workdir

    def start(self, ready_timeout: float = 60.0) -> Replica:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        try:
            wait_ready(self.proc, self.url + "/accuracy/", self.log_path, ready_timeout)
        except NotReady as exc:
            raise RuntimeError(f"{exc}\n{self.log()}") from None
        return self

    def images(self) -> int:
        """Images counted fleet-wide, as this replica reads them (-1 while the database is away)."""
        try:
            return int(self.accuracy()["images"])
        except Exception:
            return -1


@pytest.fixture
def fleet(bridge_env: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[list[Replica]]:
    env = {k: v for k, v in bridge_env.items() if k != "BRIDGE_STATE_PATH"}
    env.update(BRIDGE_STATE_URL=pg_url, BRIDGE_MAX_MESSAGES="100", FMNIST_BATCH_SIZE="50")
    replicas = [Replica(dict(env, BRIDGE_WEB_PORT=str(free_port())), tmp_path / f"replica{n}") for n in range(3)]
    yield replicas
    for replica in replicas:
        if replica.proc is not None and replica.proc.poll() is None:
            replica.proc.kill()
            replica.proc.wait(10)


def wait_images(replicas: list[Replica], count: int, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if max(r.images() for r in replicas) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {[r.images() for r in replicas]}\n{replicas[0].log()}")


# Rerun once: in about one full-suite run of three under load, a replica exits after the
# SIGKILLs and the database restart, most likely by the rule that an ended streaming pull
# stops the bridge (exit 1). Whether it should reopen the stream instead is open.
@pytest.mark.flaky(reruns=1)
def test_three_replicas_on_one_postgres_survive_sigkills_and_a_database_restart(
    pubsub_setup: Settings,
    fleet: list[Replica],
    postgres: LocalPostgres,
    collect,
    test_split: dataset.Split,
    tiny_model: Path,
    bridge_env: dict[str, str],
) -> None:
    settings = pubsub_setup
    predictions: Collector = collect(settings.pubsub.predictions_subscription)
    setup(load_settings(dict(bridge_env, PUBSUB_MAX_DELIVERY_ATTEMPTS="100")))  # see test_bridge_chaos
    indices = [i for _, rows in ROUNDS for i in rows]  # test-split rows, in the order sent
    ids = {f"{prefix}-{i:05d}" for prefix, rows in ROUNDS for i in rows}
    sender = threading.Thread(target=publish_rounds, args=(settings, test_split), daemon=True)
    for replica in fleet:
        replica.start()
    sender.start()

    wait_images(fleet, COUNT // 5, "the first kill")
    fleet[0].stop(signal.SIGKILL)
    fleet[0].start()
    wait_images(fleet, COUNT * 2 // 5, "the database restart")
    postgres.restart()  # every replica loses its connection mid-stream
    wait_images(fleet, COUNT * 3 // 5, "the second and third kill")
    fleet[1].stop(signal.SIGKILL)
    fleet[2].stop(signal.SIGKILL)
    fleet[1].start()
    fleet[2].start()
    sender.join(timeout=300 + COUNT / 100)
    assert not sender.is_alive()

    expected, _, version = offline_scores(tiny_model, test_split, indices, settings.pipeline.window_seconds)
    wait_images(fleet, COUNT, f"all {COUNT} images", timeout=300 + COUNT / 50)
    time.sleep(2.0)  # anything redelivered now must not change the totals
    confusion = offline_confusion(tiny_model, test_split.images[indices], test_split.labels[indices])
    for replica in fleet:
        report = replica.accuracy()
        assert checked_totals(report) == expected.report(version), replica.workdir
        assert report["confusion"] == confusion
    assert {p.attributes["id"] for p in predictions.wait(COUNT, timeout=60 + COUNT / 100)} == ids
    logs = [replica.log_path.read_text(errors="replace") for replica in fleet]
    # Whether the database restart caught a replica mid-commit depends on timing; holding and
    # resuming a batch through a database restart is asserted in test_bridge_pgstore.py.
    for replica, log in zip(fleet, logs):
        assert PASSWORD not in log
        assert not any(replica.workdir.glob("*.sqlite3")), "a replica kept state of its own"
        assert replica.stop() == 0
