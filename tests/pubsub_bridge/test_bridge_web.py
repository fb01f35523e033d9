"""The bridge's web views answer the worker's paths with the worker's shapes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fmnist_faust.core.recent import RecentMistakes
from fmnist_faust.core.scores import Scores
from pubsub_bridge.web import Views, WebServer
from support import free_port


@pytest.fixture
def scores() -> Scores:
    scores = Scores()
    scores.record([0, 1, 1, None], [0, 1, 2, 5], [100.0, 101.0, 115.0, 116.0], 10)
    scores.reject("not_json")
    return scores


def serve(scores: Scores, dashboard: Path) -> WebServer:
    views = Views(
        scores=lambda: scores,
        model_version=lambda: "mlp-test",
        recent=RecentMistakes(),
        window_seconds=10,
        dashboard=dashboard,
    )
    return WebServer(views, "127.0.0.1", free_port()).start()


@pytest.fixture
def server(scores: Scores, tmp_path: Path) -> Iterator[WebServer]:
    page = tmp_path / "dashboard.html"
    page.write_text("<!DOCTYPE html><title>dash</title>")
    server = serve(scores, page)
    yield server
    server.stop()


def test_json_views(server: WebServer, scores: Scores) -> None:
    assert requests.get(server.url + "/accuracy/", timeout=5).json() == scores.report("mlp-test")
    assert requests.get(server.url + "/accuracy/window/", timeout=5).json() == {
        "window_seconds": 10,
        "windows": scores.window_series(10),
    }
    assert requests.get(server.url + "/recent/", timeout=5).json() == {"misclassified": []}
    stats = requests.get(server.url + "/stats/", timeout=5).json()
    assert stats["backlog_kind"] == "pubsub_backlog" and stats["lag"] is None


def test_metrics_and_dashboard(server: WebServer) -> None:
    metrics = requests.get(server.url + "/metrics", timeout=5)
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert "fmnist_accuracy 0.6666666666666666" in metrics.text
    page = requests.get(server.url + "/", timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "<title>dash</title>" in page.text


def test_missing_dashboard_is_a_clear_404(scores: Scores, tmp_path: Path) -> None:
    server = serve(scores, tmp_path / "absent.html")
    try:
        page = requests.get(server.url + "/", timeout=5)
        assert page.status_code == 404 and "absent.html does not exist" in page.text
    finally:
        server.stop()


def test_a_busy_port_fails_in_the_caller(server: WebServer, scores: Scores, tmp_path: Path) -> None:
    views = Views(scores=lambda: scores, model_version=lambda: None, recent=RecentMistakes(), window_seconds=10)
    with pytest.raises(OSError):
        WebServer(views, "127.0.0.1", server.port).start()
