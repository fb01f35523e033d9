"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium.

A worker on real Kafka serves ``/``; images stream in two waves while the page is open.
The page must show exactly what ``/accuracy/`` says, draw its SVG charts, and update
without a reload. The final state is saved as a screenshot: to ``docs/dashboard.png`` (shown
by the README) when ``UPDATE_SCREENSHOT=1``, else under the test's tmp dir.
Without ``/usr/bin/chromium`` + ``/usr/bin/chromedriver`` (Debian packages ``chromium``
and ``chromium-driver``) the test skips, or fails under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fmnist_faust.client import MainManager, Producer
from fmnist_faust.config import load_settings
from fmnist_faust.core.contract import encode_image
from support import IN_CI, drift_records, drift_stream, produce_at, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.kafka, pytest.mark.timeout(120)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
WIDTH = 1440

# One snapshot of every number the page shows, read in a single script call.
READ_PAGE = """
const value = (id) => document.getElementById(id).dataset.value;
const text = (id) => document.getElementById(id).textContent;
return {
  polls: Number(document.body.dataset.polls),
  images: value("kpi-images"), labeled: value("kpi-labeled"), correct: value("kpi-correct"),
  accuracy: value("kpi-accuracy"), rejected: value("kpi-rejected"), rate: value("kpi-rate"),
  lag: value("kpi-lag"), lag_kind: document.getElementById("kpi-lag").dataset.kind,
  images_text: text("kpi-images"), correct_text: text("kpi-correct"),
  accuracy_text: text("kpi-accuracy"), rejected_text: text("kpi-rejected"),
  model_version: value("model-version"),
  accuracy_points: document.querySelectorAll("#chart-accuracy circle.point").length,
  accuracy_line: (document.querySelector("#chart-accuracy path.line") || {getAttribute: () => ""}).getAttribute("d"),
  recall_bars: Array.from(document.querySelectorAll("#chart-recall rect.bar"),
                          (r) => [r.dataset.class, r.dataset.value]),
  cells: Array.from(document.querySelectorAll("#confusion rect.cell"),
                    (r) => [Number(r.dataset.true), Number(r.dataset.pred), Number(r.dataset.count)]),
  rejected_kinds: Object.fromEntries(Array.from(document.querySelectorAll("#rejected-list li[data-kind]"),
                                                (li) => [li.dataset.kind, Number(li.dataset.count)])),
  awaiting: value("kpi-awaiting"),
  label_rows: Object.fromEntries(Array.from(document.querySelectorAll("#labels-list li[data-key]"),
                                            (li) => [li.dataset.key, Number(li.dataset.count)])),
  thumbs: Array.from(document.querySelectorAll("#mistakes canvas.thumb"),
                     (c) => [c.dataset.label, c.dataset.predicted, c.width, c.height]),
  rate_line: document.querySelectorAll("#chart-rate polyline").length,
  same_load: window.sameLoad === true,
};
"""


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a fresh profile, driven through Debian's chromedriver."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        unavailable(f"{', '.join(missing)} missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={WIDTH},1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def stream_wave(
    producer: Producer, split: Any, start: int, count: int, chunks: int, extra: tuple[tuple[bytes, str], ...] = ()
) -> None:
    """Send ``count`` labelled images (plus ``extra``) in paced chunks, so they span seconds."""
    size = count // chunks
    for first in range(start, start + count, size):
        now = time.time()
        producer.produce_many(
            [
                (encode_image(f"img-{i}", split.images[i], int(split.labels[i]), sent_at=now), f"img-{i}")
                for i in range(first, first + size)
            ]
        )
        time.sleep(0.4)
    if extra:
        producer.produce_many(list(extra))
    producer.flush()


def wait_page(browser: Any, until: Callable[[dict], bool], what: str, timeout: float = 120) -> dict:
    """The page's numbers once ``until`` holds for them."""

    def read() -> dict | None:
        page = browser.execute_script(READ_PAGE)
        return page if until(page) else None

    return wait_until(read, timeout, what=f"the page to show {what}")


def assert_page_matches(page: dict, report: dict) -> None:
    """Every number shown equals the ``/accuracy/`` document."""
    assert int(page["images"]) == report["images"] == int(page["images_text"].replace(",", ""))
    assert int(page["labeled"]) == report["labeled"]
    assert int(page["correct"]) == report["correct"] == int(page["correct_text"].replace(",", ""))
    assert float(page["accuracy"]) == report["accuracy"]
    assert float(page["accuracy_text"].rstrip(" %")) == pytest.approx(report["accuracy"] * 100, abs=0.005)
    assert int(page["rejected"]) == report["rejected"] == int(page["rejected_text"].replace(",", ""))
    assert page["rejected_kinds"] == report["rejected_by_kind"]
    assert int(page["awaiting"]) == report["awaiting_label"]
    labels = report["labels"]
    assert page["label_rows"] == {
        "awaiting_label": report["awaiting_label"],
        "label_expired": report["label_expired"],
        **{key: labels[key] for key in ("joined", "awaiting_image", "expired", "repeated", "late", "rejected")},
    }
    assert page["model_version"] == report["model_version"]
    assert sorted(page["cells"]) == [[i, j, report["confusion"][i][j]] for i in range(10) for j in range(10)]
    recall = {name: c["recall"] for name, c in report["per_class"].items()}
    assert {name: (float(v) if v else None) for name, v in page["recall_bars"]} == recall


def test_dashboard_shows_and_updates_the_live_totals(
    start_worker: Callable, worker_env: dict[str, str], browser: Any, test_split: Any, tmp_path: Path
) -> None:
    worker = start_worker(FMNIST_WINDOW_SECONDS="1")  # a chart point per second of stream
    browser.get(worker.url + "/")
    page = wait_page(browser, lambda p: p["polls"] >= 1, "its first refresh")
    assert page["images"] == "0" and page["lag_kind"] == "kafka_lag"
    browser.execute_script("window.sameLoad = true;")  # gone if the page ever reloads

    settings = load_settings(worker_env)
    with MainManager("kafka", settings).create_producer(settings.topics.images) as producer:
        stream_wave(producer, test_split, 0, 1500, chunks=6)
        page = wait_page(browser, lambda p: p["images"] == "1500", "the first wave")
        first = page
        assert_page_matches(page, worker.accuracy())

        bad = (
            (b"{not json", "junk-1"),
            (b"{not json", "junk-2"),
            (json.dumps({"id": "no-pixels"}).encode(), "no-pixels"),
        )
        stream_wave(producer, test_split, 1500, 1500, chunks=6, extra=bad)

    page = wait_page(
        browser,
        lambda p: p["images"] == "3000" and p["rejected"] == "3" and p["lag"] == "0",
        "both waves, the rejects and zero lag",
    )
    report = worker.accuracy()
    assert_page_matches(page, report)
    assert report["rejected_by_kind"] == {"bad_pixels": 1, "not_json": 2}
    assert page["same_load"] and page["polls"] > first["polls"]
    assert page["accuracy_points"] > first["accuracy_points"] >= 1 and page["accuracy_line"].startswith("M")
    assert len(page["cells"]) == 100 and len(page["recall_bars"]) == 10
    assert page["thumbs"] and all(
        label != predicted and (w, h) == (28, 28) for label, predicted, w, h in page["thumbs"]
    )
    assert float(page["rate"]) > 0 and page["rate_line"] == 1
    stats = requests.get(worker.url + "/stats/", timeout=5).json()
    assert stats["backlog_kind"] == "kafka_lag" and stats["lag"] == 0

    # 20 images without their label, then the labels of 12 of them (one twice): 8 keep waiting
    from fmnist_faust.core.contract import encode_label

    with MainManager("kafka", settings).create_producer(settings.topics.images) as producer:
        producer.produce_many([(encode_image(f"late-{i}", test_split.images[i]), f"late-{i}") for i in range(20)])
    with MainManager("kafka", settings).create_producer(settings.topics.labels) as producer:
        producer.produce_many(
            [(encode_label(f"late-{i}", int(test_split.labels[i])), f"late-{i}") for i in [*range(12), 3]]
        )
    page = wait_page(
        browser, lambda p: p["awaiting"] == "8" and p["label_rows"].get("repeated") == 1, "the delayed labels"
    )
    report = worker.accuracy()
    assert_page_matches(page, report)
    assert report["labeled"] == 3012 and report["labels"]["joined"] == 12

    height = browser.execute_script(
        "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight"
    )
    browser.set_window_size(WIDTH, height)
    wait_page(browser, lambda p: p["polls"] > page["polls"], "a refresh at full height")
    target = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(target))


READ_MODELS = """
const cells = (cls) => Object.fromEntries(Array.from(document.querySelectorAll("#models-table td." + cls),
                                                     (td) => [td.dataset.version, td.dataset.value]));
return {
  polls: Number(document.body.dataset.polls),
  columns: Array.from(document.querySelectorAll("#models-table th.model"), (th) => [th.dataset.version, th.dataset.role]),
  images: cells("images"), accuracy: cells("accuracy"), agreement: cells("agreement"),
  recall: Array.from(document.querySelectorAll("#models-table td.recall"),
                     (td) => [td.dataset.version, td.dataset.class, td.dataset.value]),
  promotions: Array.from(document.querySelectorAll("#chart-accuracy g.promotion"), (g) => g.dataset.version),
  retired: document.getElementById("models-retired").textContent,
};
"""


def number(value: str) -> float | None:
    return float(value) if value else None


def test_dashboard_shows_live_and_shadow_side_by_side_and_marks_the_promotion(
    start_worker: Callable, worker_env: dict[str, str], browser: Any, test_split: Any, rollout_models: Any
) -> None:
    from support import model_cli

    models = rollout_models
    v0, v1, _ = models.versions
    worker = start_worker(
        FMNIST_WINDOW_SECONDS="1",
        FMNIST_MODEL_DIR=str(models.serving),
        FMNIST_MODEL_PATH=str(models.default(models.serving)),
    )
    browser.get(worker.url + "/")

    def read(until: Callable[[dict], bool], what: str) -> dict:
        def page() -> dict | None:
            shown = browser.execute_script(READ_MODELS)
            return shown if until(shown) else None

        return wait_until(page, 60, what=f"the page to show {what}")

    def operator(*args: str) -> None:
        assert model_cli(worker_env, *args, directory=models.trusted).returncode == 0

    settings = load_settings(worker_env)
    with MainManager("kafka", settings).create_producer(settings.topics.images) as producer:
        stream_wave(producer, test_split, 0, 600, chunks=3)
        operator("shadow", v1)
        wait_until(lambda: requests.get(worker.url + "/stats/", timeout=5).json()["models"]["shadow"] == v1, 30)
        stream_wave(producer, test_split, 600, 600, chunks=3)
        page = read(lambda p: p["images"].get(v0) == "1200" and p["agreement"].get(v1), "live and shadow")
        assert page["columns"] == [[v0, "live"], [v1, "shadow"]] and page["promotions"] == []
        report = worker.accuracy()["by_model"]
        assert number(page["agreement"][v1]) == report[v1]["shadow"]["agreement"]
        assert int(page["images"][v1]) == report[v1]["shadow"]["images"] == 600
        assert number(page["accuracy"][v0]) == report[v0]["live"]["accuracy"]
        shown = {(v, name): number(value) for v, name, value in page["recall"]}
        for version, part in ((v0, report[v0]["live"]), (v1, report[v1]["shadow"])):
            assert {name: shown[version, name] for name in part["per_class"]} == {
                name: c["recall"] for name, c in part["per_class"].items()
            }

        operator("promote", v1)
        wait_until(lambda: requests.get(worker.url + "/stats/", timeout=5).json()["models"]["live"] == v1, 30)
        stream_wave(producer, test_split, 1200, 600, chunks=3)
    page = read(lambda p: p["images"].get(v1) == "600" and p["promotions"] == [v1], "the promotion")
    report = worker.accuracy()
    assert page["columns"] == [[v1, "live"]]
    assert v0 in page["retired"] and "1,200 images" in page["retired"]
    assert report["images"] == 1800 == sum(p["live"]["images"] for p in report["by_model"].values() if p["live"])
    assert browser.save_screenshot(str(worker.log_path.with_name("dashboard-rollout.png")))


READ_DRIFT = """
return {
  polls: Number(document.body.dataset.polls),
  models: Array.from(document.querySelectorAll("#drift-models .drift-model"),
                     (m) => [m.dataset.version, m.dataset.role, m.dataset.reference]),
  chips: Array.from(document.querySelectorAll("#drift-models .drift-model[data-role=live] .psi"),
                    (c) => [c.dataset.signal, Number(c.dataset.value), c.dataset.level]),
  lines: Array.from(document.querySelectorAll("#chart-drift polyline.psi-line"),
                    (l) => [l.dataset.signal, l.getAttribute("points").trim().split(" ").length]),
  thresholds: document.querySelectorAll("#chart-drift line.threshold").length,
};
"""


def test_dashboard_shows_drift_per_serving_model_against_its_reference(
    start_worker: Callable, worker_env: dict[str, str], kafka_bootstrap: str, browser: Any, test_split: Any
) -> None:
    """The drift stream (test split, inverted, one class) in past 10-s windows: the card shows
    the live model's newest PSI per signal, coloured by the thresholds, and a line per signal."""
    worker = start_worker()
    browser.get(worker.url + "/")
    windows = drift_stream(test_split)
    base = (int(time.time()) // 10 - 2 * len(windows)) * 10
    produce_at(kafka_bootstrap, worker_env["FMNIST_IMAGES_TOPIC"], drift_records(windows, base, 10))
    total = sum(len(w.ids) for w in windows)
    wait_until(lambda: worker.accuracy()["images"] >= total, 60, what="the drift stream counted")
    document = requests.get(worker.url + "/drift/", timeout=10).json()
    ((version, part),) = document["models"].items()
    latest = part["latest"]["psi"]

    def shown() -> dict | None:  # a refresh after the whole stream was counted
        page = browser.execute_script(READ_DRIFT)
        return page if {s: v for s, v, _ in page["chips"]} == latest else None

    page = wait_until(shown, 60, what="the drift card showing the newest window")
    assert page["models"] == [[version, "live", "ok"]] and page["thresholds"] == 2
    assert {s: level for s, _, level in page["chips"]} == {
        s: "alert" if v > 0.25 else "warn" if v > 0.1 else "ok" for s, v in latest.items()
    }
    assert page["lines"] == [[s, len(windows)] for s in latest]
