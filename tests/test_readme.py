"""The README is a landing page: the two commands and the picture on its first screen, at
most 250 lines, and every link it has leads somewhere."""

import re

from support import ROOT

README = (ROOT / "README.md").read_text()


def test_first_screen_shows_the_two_commands_and_the_screenshot() -> None:
    first_screen = README[:1500]
    assert "make demo" in first_screen and "make test" in first_screen
    assert "![" in first_screen
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / image).is_file(), image


def test_it_stays_a_landing_page() -> None:
    assert len(README.splitlines()) <= 250


def test_every_relative_link_leads_to_a_file() -> None:
    targets = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README) if "://" not in t]
    assert targets
    assert [t for t in targets if not (ROOT / t).exists()] == []
