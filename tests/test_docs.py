"""The docs site: its configuration table is the one ``config.VARIABLES`` gives, and every
variable the settings read is in it."""

import re
import subprocess
import sys

from fmnist_faust.config import ENV_VARS, env_var_names
from support import ROOT

CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def test_every_variable_is_in_the_configuration_table() -> None:
    documented = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| (.*) \|$", CONFIGURATION, flags=re.M))
    assert set(env_var_names()) <= set(ENV_VARS)
    assert documented == ENV_VARS  # names, meanings and defaults


def test_the_committed_table_is_the_generated_one() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "config_table.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr
