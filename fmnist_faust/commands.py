"""Faust CLI command: ``faust -A fmnist_faust train`` (the same as ``fmnist-train``)."""

from __future__ import annotations

from . import cli
from .faust_app import app


@app.command()
async def train(self: object) -> None:
    """Train the default classifier unless a verified one exists."""
    cli.train_main([])
