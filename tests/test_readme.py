"""The README documents every environment variable and the two main commands."""

import re
from pathlib import Path

from fmnist_faust.config import ENV_VARS, env_var_names

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_variable_is_in_the_configuration_table() -> None:
    documented = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| (.*) \|$", README, flags=re.M))
    assert set(env_var_names()) <= set(ENV_VARS)
    assert documented == ENV_VARS  # names, meanings and defaults


def test_first_screen_shows_the_two_commands_and_the_screenshot() -> None:
    first_screen = README[:1500]
    assert "make demo" in first_screen and "make test" in first_screen
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (Path(__file__).resolve().parent.parent / image).is_file(), image
