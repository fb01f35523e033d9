"""Liveness and readiness for orchestrators: the same rules and JSON for both backends.

``GET /healthz`` (liveness) and ``GET /readyz`` (readiness) each answer 200 when every check
passes and 503 otherwise, with ``{"status": "ok" | "failing", "checks": {name: {"ok": bool,
"detail": str}}}``, so a supervisor can act on the status and a person can read why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str


def report(checks: Sequence[Check]) -> tuple[int, dict]:
    """(HTTP status, body) for ``checks``: 200 only when all pass."""
    ok = all(check.ok for check in checks)
    body = {
        "status": "ok" if ok else "failing",
        "checks": {check.name: {"ok": check.ok, "detail": check.detail} for check in checks},
    }
    return (200 if ok else 503), body


class FailingBatches:
    """Since when batches have kept failing: a batch that fails once and then goes through is
    an outage waited out; one failing past ``bound_s`` turns liveness red."""

    def __init__(self, bound_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound_s = bound_s
        self._clock = clock
        self._since: float | None = None

    def failed(self) -> None:
        if self._since is None:
            self._since = self._clock()

    def succeeded(self) -> None:
        self._since = None

    @property
    def failing(self) -> bool:
        return self._since is not None

    def check(self) -> Check:
        if self._since is None:
            return Check("batches", True, "the last batch went through")
        failing_s = self._clock() - self._since
        return Check(
            "batches",
            failing_s <= self.bound_s,
            f"batches have failed for {failing_s:.0f} s (bound {self.bound_s:.0f} s)",
        )
