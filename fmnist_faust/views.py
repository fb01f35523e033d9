"""HTTP views: running accuracy as JSON (``/accuracy/``, ``/accuracy/window/``)."""

from __future__ import annotations

from typing import Any

from .app import app, settings
from .agents import recent_mistakes
from .tables import total_scores


@app.page("/accuracy/")
async def accuracy(web: Any, request: Any) -> Any:
    scores, version = total_scores()
    return web.json(scores.report(version))


@app.page("/accuracy/window/")
async def accuracy_window(web: Any, request: Any) -> Any:
    scores, _ = total_scores()
    return web.json({"window_seconds": settings.window_seconds,
                     "windows": scores.window_series(settings.window_seconds)})


@app.page("/recent/")
async def recent(web: Any, request: Any) -> Any:
    """The latest misclassified images (base64 pixels), newest first."""
    return web.json({"misclassified": recent_mistakes.to_list()})
