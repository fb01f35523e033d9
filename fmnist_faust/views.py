"""HTTP views: the dashboard (``/``), running accuracy as JSON (``/accuracy/``,
``/accuracy/window/``, ``/recent/``), drift against each model's reference (``/drift/``),
throughput and lag (``/stats/``) and Prometheus
metrics (``/metrics``), and ``/healthz`` / ``/readyz`` for orchestrators (see
:mod:`.core.health`). The Pub/Sub bridge serves the same paths with the same JSON.
The views start only once the model is verified and the output topics exist
(``faust_app.App.on_start``), so a client that gets an answer can rely on both. Also logs
one "ready" line at the first partition assignment (and one per later change of assigned
images partitions)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from . import metrics
from .agents import failing_batches, lifecycle, partition_lags, progress, recent_mistakes
from .core.health import Check, report
from .core.rollout import ModelTally
from .faust_app import app, settings
from .global_scores import global_totals, global_totals_by_model
from .rollout import current_models, manifest_of
from .rollout import status as rollout_status
from .topics import images_topic

log = logging.getLogger(__name__)
DASHBOARD = Path(__file__).resolve().parent / "static" / "dashboard.html"


@app.page("/")
async def dashboard(web: Any, request: Any) -> Any:
    """The live dashboard: one self-contained HTML file that polls the JSON views."""
    return web.html(DASHBOARD.read_text(encoding="utf-8"))


@app.page("/accuracy/")
async def accuracy(web: Any, request: Any) -> Any:
    """Global totals, exact on any worker of the group (see :mod:`.global_scores`), and
    ``by_model``: each version's part of them (live parts sum to the totals) and shadow scores."""
    scores, version, tally = await global_totals_by_model()
    report = scores.report(version)
    serving = rollout_status()
    report["by_model"] = tally.report(serving.get("live"), serving.get("shadow"))
    return web.json(report)


@app.page("/accuracy/window/")
async def accuracy_window(web: Any, request: Any) -> Any:
    scores, _ = await global_totals()
    return web.json(
        {
            "window_seconds": settings.pipeline.window_seconds,
            "windows": scores.window_series(settings.pipeline.window_seconds),
        }
    )


@app.page("/drift/")
async def drift(web: Any, request: Any) -> Any:
    """Per model version, its drift windows (counted with the global totals' rows) against
    the reference in its manifest; see :mod:`.core.drift`."""
    _, _, tally = await global_totals_by_model()
    return web.json(drift_report(tally))


def drift_report(tally: ModelTally) -> dict[str, Any]:
    serving = rollout_status()
    return tally.drift_report(serving.get("live"), serving.get("shadow"), manifest_of, settings.pipeline.window_seconds)


@app.page("/recent/")
async def recent(web: Any, request: Any) -> Any:
    """The latest misclassified images (base64 pixels), newest first."""
    return web.json({"misclassified": recent_mistakes.to_list()})


@app.page("/stats/")
async def stats(web: Any, request: Any) -> Any:
    """Images/s and Kafka consumer lag; the shape is documented in :func:`metrics.stats_report`."""
    document = metrics.stats_report(consumer_lag(), "kafka_lag", sorted(progress.stalled))
    document["models"] = rollout_status()  # what this worker serves, and versions it refused
    return web.json(document)


@app.page("/metrics")
async def prometheus_metrics(web: Any, request: Any) -> Any:
    """Prometheus text exposition; the accuracy and drift gauges (global) and lag are set at
    scrape time."""
    scores, version, tally = await global_totals_by_model()
    body, content_type = metrics.exposition(scores.report(version), consumer_lag(), drift_report(tally))
    return web.bytes(body, headers={"Content-Type": content_type})  # aiohttp rejects charset in content_type


@app.page("/healthz")
async def healthz(web: Any, request: Any) -> Any:
    """Liveness: 503 while batches keep failing or a partition with images waiting counts
    none, past ``FMNIST_STALL_SECONDS``; a crashed agent ends the process (``agents``)."""
    stalled = sorted(progress.stalled)
    status, body = report(
        [
            failing_batches.check(),
            Check(
                "partitions",
                not stalled,
                f"stalled: {stalled}" if stalled else "every assigned partition counts what waits on it",
            ),
        ]
    )
    return web.json(body, status=status)


@app.page("/readyz")
async def readyz(web: Any, request: Any) -> Any:
    """Readiness: model loaded, topics created, partitions assigned (no rebalance under
    way) and the tables recovered from their changelogs."""
    partitions = assignment_log.partitions
    recovered = app.tables.recovery.completed.is_set() and not app.in_recovery
    status, body = report(
        [
            Check(
                "model",
                lifecycle.prepared,
                f"live model {current_models().live.version}" if lifecycle.prepared else "not loaded yet",
            ),
            Check("topics", lifecycle.prepared, "created, rollout pointer read" if lifecycle.prepared else "not yet"),
            Check(
                "assignment",
                partitions is not None and not app.rebalancing,
                "rebalancing" if app.rebalancing else f"images partitions {sorted(partitions or ())}",
            ),
            Check("recovery", recovered, "tables recovered" if recovered else "recovering the tables"),
        ]
    )
    return web.json(body, status=status)


def consumer_lag() -> int | None:
    """Images waiting on this worker, over its assigned images partitions (None if unknown)."""
    lags = partition_lags()
    return None if lags is None else sum(lags.values())


class AssignmentLog:
    """Rebalance-complete receiver: logs "ready" once, then one line per assignment change.

    Faust sends the signal more than once per rebalance; unchanged assignments are not logged.
    """

    def __init__(self) -> None:
        self.partitions: frozenset[int] | None = None

    async def __call__(self, sender: Any, **kwargs: Any) -> None:
        # A batch that failed before the rebalance is read again by whoever owns it now: it
        # must not hold this worker's liveness red while it has nothing left to retry.
        failing_batches.succeeded()
        topic = images_topic.get_topic_name()
        partitions = frozenset(tp.partition for tp in app.consumer.assignment() if tp.topic == topic)
        if partitions == self.partitions:
            return
        first, self.partitions = self.partitions is None, partitions
        if first:
            url = f"http://{settings.web.host}:{settings.web.port}"
            log.info(
                "ready: classifying %s partitions %s; dashboard %s/ metrics %s/metrics",
                topic,
                sorted(partitions),
                url,
                url,
            )
        else:
            log.info("rebalanced: now classifying %s partitions %s", topic, sorted(partitions))


assignment_log = AssignmentLog()
app.on_rebalance_complete.connect(assignment_log)
