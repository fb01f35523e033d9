"""The bridge's HTTP views, the same paths and JSON as the Faust worker's.

``/accuracy/``, ``/accuracy/window/``, ``/drift/``, ``/recent/``, ``/stats/``, ``/metrics``, the
dashboard at ``/``, and ``/healthz`` / ``/readyz`` for orchestrators
(:mod:`fmnist_faust.core.health`). aiohttp runs on its own event loop in a daemon thread, so the
bridge's pulling and batching threads never wait on a slow HTTP client, and the views
only read the store's latest committed :class:`~fmnist_faust.core.scores.Scores`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

import fmnist_faust
from fmnist_faust import metrics
from fmnist_faust.core import health
from fmnist_faust.core.health import Check
from fmnist_faust.core.recent import RecentMistakes
from fmnist_faust.core.rollout import ModelTally
from fmnist_faust.core.scores import Scores

DASHBOARD = Path(fmnist_faust.__file__).resolve().parent / "static" / "dashboard.html"


@dataclass(frozen=True)
class Views:
    """What the views read: the latest scores, the model version, recent mistakes."""

    scores: Callable[[], Scores]
    model_version: Callable[[], str | None]
    recent: RecentMistakes
    window_seconds: int
    dashboard: Path = DASHBOARD
    # Errors of the store meaning "the database is away for now": answered 503, not 500
    # with a traceback in the log (the batching thread already logs the outage once).
    unavailable: tuple[type[BaseException], ...] = ()
    # Live rollout: the totals with their per-model tally (read together, so by_model sums to
    # them) and what this process serves (``ModelSwitch.status``).
    totals: Callable[[], tuple[Scores, ModelTally]] | None = None
    rollout: Callable[[], dict] | None = None
    # Drift: the manifest of a version (its reference), ``ModelSwitch.manifest``.
    manifest_of: Callable[[str], dict | None] | None = None
    # Liveness and readiness checks (:class:`~.bridge.BridgeHealth`); none: always 200.
    liveness: Callable[[], list[Check]] = list
    readiness: Callable[[], list[Check]] = list


def make_app(views: Views) -> web.Application:
    """The aiohttp application; separate from the server so it can be served anywhere."""

    def read() -> tuple[Scores, ModelTally | None]:
        """The totals and their per-model tally, from one read of the store."""
        return (views.scores(), None) if views.totals is None else views.totals()

    def report(scores: Scores, tally: ModelTally | None) -> dict:
        document = scores.report(views.model_version())
        if tally is not None:
            serving = views.rollout() if views.rollout else {}
            document["by_model"] = tally.report(serving.get("live"), serving.get("shadow"))
        return document

    def drift_report(tally: ModelTally | None) -> dict:
        serving = views.rollout() if views.rollout else {}
        manifest_of = views.manifest_of or (lambda _version: None)
        return (tally or ModelTally()).drift_report(
            serving.get("live"), serving.get("shadow"), manifest_of, views.window_seconds
        )

    async def accuracy(request: web.Request) -> web.Response:
        return web.json_response(report(*read()))

    async def drift(request: web.Request) -> web.Response:
        return web.json_response(drift_report(read()[1]))

    async def accuracy_window(request: web.Request) -> web.Response:
        return web.json_response(
            {"window_seconds": views.window_seconds, "windows": views.scores().window_series(views.window_seconds)}
        )

    async def recent(request: web.Request) -> web.Response:
        return web.json_response({"misclassified": views.recent.to_list()})

    async def stats(request: web.Request) -> web.Response:
        # The subscription's backlog is only known to Cloud Monitoring (not the emulator):
        # reported as unknown rather than guessed.
        document = metrics.stats_report(None, "pubsub_backlog")
        if views.rollout is not None:
            document["models"] = views.rollout()
        return web.json_response(document)

    async def prometheus(request: web.Request) -> web.Response:
        scores, tally = read()
        body, content_type = metrics.exposition(report(scores, tally), None, drift_report(tally))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        status, body = health.report(views.liveness())
        return web.json_response(body, status=status)

    async def readyz(request: web.Request) -> web.Response:
        status, body = health.report(views.readiness())
        return web.json_response(body, status=status)

    async def dashboard(request: web.Request) -> web.StreamResponse:
        if not views.dashboard.is_file():
            return web.Response(
                status=404,
                text=f"no dashboard here: {views.dashboard} does not exist; "
                "the JSON views are /accuracy/, /accuracy/window/, "
                "/drift/, /recent/, /stats/ and /metrics\n",
            )
        return web.FileResponse(views.dashboard, headers={"Cache-Control": "no-store"})

    @web.middleware
    async def store_away(request: web.Request, handler: Callable) -> web.StreamResponse:
        try:
            return await handler(request)
        except views.unavailable as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            return web.json_response({"error": f"the state store is unavailable: {detail}"}, status=503)

    app = web.Application(middlewares=[store_away])
    app.router.add_get("/", dashboard)
    app.router.add_get("/accuracy/", accuracy)
    app.router.add_get("/accuracy/window/", accuracy_window)
    app.router.add_get("/drift/", drift)
    app.router.add_get("/recent/", recent)
    app.router.add_get("/stats/", stats)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class WebServer:
    """Serves :func:`make_app` on ``host:port`` from a background thread."""

    def __init__(self, views: Views, host: str, port: int) -> None:
        self.views = views
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bridge-web", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> WebServer:
        """Bind and serve; raises OSError (port in use) in the caller's thread."""
        self._thread.start()

        async def start() -> web.AppRunner:
            runner = web.AppRunner(make_app(self.views), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, self.host, self.port).start()
            except BaseException:
                await runner.cleanup()
                raise
            return runner

        try:
            self._runner = asyncio.run_coroutine_threadsafe(start(), self._loop).result(30)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
