"""mkdocs hooks: the latest benchmark and soak results are pages of the site, read where
``make bench`` and ``make soak`` write them (bench/results/), and the build fails when the
configuration table is not the one ``fmnist_faust.config.VARIABLES`` gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ("bench/results/latest.md", "bench/results/latest.png", "bench/results/soak.md", "bench/results/soak.png")


def on_pre_build(config: Any) -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "config_table.py"), "--check"], capture_output=True, text=True
    )
    if check.returncode != 0:
        raise PluginError(check.stderr.strip() or check.stdout.strip())


def on_files(files: Files, config: Any) -> Files:
    for result in RESULTS:  # same path on the site as in the repository
        files.append(File.generated(config, result, abs_src_path=str(ROOT / result)))
    return files
