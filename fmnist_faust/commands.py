"""Faust CLI commands: ``faust -A fmnist_faust train|produce|logger``."""

from __future__ import annotations

from .app import app
from . import cli


@app.command()
async def train(self: object) -> None:
    """Train the default classifier unless a verified one exists."""
    cli.train_main([])
