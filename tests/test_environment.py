"""One reader of the environment: ``fmnist_faust/config.py``. Every other product module gets
its settings from :func:`config.load_settings`, so each variable is documented (the table of
docs/configuration.md is generated from ``config.VARIABLES``) and validated in one place.

Found in the source (AST), not by running it: a read in a branch no test takes counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from support import ROOT

PACKAGES = ("fmnist_faust", "pubsub_bridge")
READER = "fmnist_faust/config.py"
_NAMES = ("environ", "environb", "getenv", "getenvb")
# The only other uses, by module; each is the whole expression that touches the environment.
ALLOWED = {
    # Faust's own variable (set by ``faust -L``), read before the app exists to pick the event
    # loop; it is not a setting of ours.
    "fmnist_faust/__init__.py": {"os.environ.get('FAUST_LOOP')"},
    # The demos start the worker / bridge as child processes: each hands its child the whole
    # environment plus the demo's own names; the child reads it through config.
    "fmnist_faust/demo.py": {"dict(os.environ)"},
    "pubsub_bridge/demo.py": {"dict(os.environ)"},
}


def _product_modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def environment_uses(source: str) -> list[str]:
    """Each expression of ``source`` that touches the process environment, as source text:
    ``os.environ`` / ``os.getenv`` with what encloses them (a call, ``.get``, a subscript),
    and ``from os import environ`` / ``getenv``."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            uses += [f"from os import {alias.name}" for alias in node.names if alias.name in _NAMES]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in _NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            enclosing: ast.AST = node
            while isinstance(parents.get(enclosing), (ast.Attribute, ast.Call, ast.Subscript)):
                enclosing = parents[enclosing]
            uses.append(_copy(enclosing, node) or ast.unparse(enclosing))
    return uses


def _copy(expression: ast.AST, environ: ast.AST) -> str | None:
    """``dict(os.environ, NAME=value, ...)``, a copy to hand a child process, as one kind of use
    whatever it adds; else None."""
    if isinstance(expression, ast.Call) and isinstance(expression.func, ast.Name) and expression.func.id == "dict":
        if expression.args[:1] == [environ]:
            return "dict(os.environ, ...)" if expression.args[1:] or expression.keywords else "dict(os.environ)"
    return None


def test_only_config_reads_the_environment() -> None:
    modules = _product_modules()
    assert len(modules) > 20 and ROOT / READER in modules  # the walk found the packages
    found = {}
    for path in modules:
        name = path.relative_to(ROOT).as_posix()
        if name == READER:
            continue
        uses = set(environment_uses(path.read_text(encoding="utf-8")))
        if uses - ALLOWED.get(name, set()):
            found[name] = sorted(uses - ALLOWED.get(name, set()))
    assert found == {}, "read the environment in fmnist_faust/config.py (VARIABLES, load_settings) instead"


def test_the_allow_list_is_still_needed() -> None:
    """An allowed use that is gone is taken off the list, so the list stays the exceptions there are."""
    for name, allowed in ALLOWED.items():
        assert set(environment_uses((ROOT / name).read_text(encoding="utf-8"))) == allowed, name


def test_every_kind_of_read_is_found() -> None:
    source = (
        "import os\nfrom os import environ, getenv as g\n"
        "a = os.environ['A']\nb = os.environ.get('B', '')\nc = os.getenv('C')\nd = 'D' in os.environ\n"
        "e = dict(os.environ)\nf = dict(os.environ, X='1')\ng = dict(os.environ.items())\n"
    )
    assert sorted(environment_uses(source)) == sorted(
        [
            "from os import environ",
            "from os import getenv",
            "os.environ['A']",
            "os.environ.get('B', '')",
            "os.getenv('C')",
            "os.environ",  # in a comparison: the bare name
            "dict(os.environ)",
            "dict(os.environ, ...)",
            "dict(os.environ.items())",
        ]
    )
    assert environment_uses("import os\nos.path.join('a', 'b')\n") == []
