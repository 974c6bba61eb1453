"""The layer rule (pyproject.toml [tool.importlinter]) holds for imports by string too.

import-linter sees ``import`` statements; the CLI table, the model registry and the extractor registry name modules
as strings (``"pipelines.runner"``, ``"baselines.fomm:FOMM"``) and import them with importlib. Every string constant
in the suite's code that names one of its modules is held here to the same rule: it may name a module of its own
package or of a lower layer, never a higher one.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("reenact", "pipelines", "baselines", "benchmark")
MODULE_STRING = re.compile(r"^(?:%s)(?:\.\w+)*(?::\w+)?$" % "|".join(PACKAGES))


def layers() -> list[list[str]]:
    """The cross-package contract's layers, top first, each a list of sibling modules."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    contract = config["tool"]["importlinter"]["contracts"][0]
    return [[m.strip(" ()") for m in re.split(r"[|:]", layer)] for layer in contract["layers"]]


def place(module: str, table: list[list[str]]) -> tuple[int, str] | None:
    """(layer index, sibling) of ``module``: the longest listed prefix wins; None for a package's ``__init__``."""
    best = None
    for index, siblings in enumerate(table):
        for sibling in siblings:
            if (module == sibling or module.startswith(sibling + ".")) and (best is None or len(sibling) > len(best[1])):
                best = (index, sibling)
    return best


def allowed(owner: str, target: str, table: list[list[str]]) -> bool:
    here, there = place(owner, table), place(target, table)
    if here is None or there is None:
        return True                                   # package __init__ files hold no tables
    return there[0] > here[0] or there[1] == here[1]


def module_strings() -> list[tuple[str, str, int]]:
    """(owner module, named module, line) for every string constant that names an existing suite module."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            owner = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
                    target = node.value.split(":")[0]
                    if importlib.util.find_spec(target) is not None:
                        found.append((owner, target, node.lineno))
    return found


def test_convention_the_string_tables_are_found():
    """The scan sees the three tables (else it would pass vacuously)."""
    owners = {owner for owner, _, _ in module_strings()}
    assert {"reenact.app.cli", "baselines.registry", "pipelines.extractors"} <= owners


def test_imports_by_string_follow_the_layers():
    table = layers()
    upward = [f"{owner}:{line} names {target}" for owner, target, line in module_strings()
              if not allowed(owner, target, table)]
    assert not upward, "imports by string that point up the layers:\n" + "\n".join(upward)


def test_the_rule_rejects_an_upward_name():
    table = layers()
    assert not allowed("reenact.face3d.guidance", "pipelines.runner", table)
    assert not allowed("pipelines.runner", "baselines.fomm", table)          # independent siblings
    assert allowed("reenact.app.cli", "pipelines.runner", table)
    assert allowed("baselines.registry", "baselines.fomm", table)


@pytest.mark.skipif(sys.platform == "win32", reason="lint-imports is run through the venv's bin/")
def test_import_contracts_hold():
    """import-linter's contracts (pyproject.toml) are kept by the code as it is."""
    exe = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(exe), "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
