"""The package stands alone: no module under pushsvc/ imports the tests or starts one of their modules.

pushsvc ships as a wheel without tests/, so such an import works in a checkout and fails once installed (the
provider simulators that `pushsvc dev` runs live in pushsvc.simulators for this reason). Read with ``ast``,
so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pushsvc"
# A dotted module path under tests, as `python -m tests.x.y` or importlib would take it.
_TESTS_MODULE = re.compile(r"^tests(\.[A-Za-z_]\w*)+$")


def _is_tests(module: str) -> bool:
    return module == "tests" or module.startswith("tests.")


def references_to_tests(source: str) -> list[tuple[int, str]]:
    """(line, what) for each import of tests (or tests.*) and each string naming a module under tests."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {alias.name}") for alias in node.names if _is_tests(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_tests(node.module or ""):
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _TESTS_MODULE.match(node.value):
            found.append((node.lineno, f"module name {node.value!r}"))
    return found


def test_no_module_of_the_package_imports_the_tests() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20  # the walk found the package
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
        for path in modules
        for line, what in references_to_tests(path.read_text())
    ]
    assert offenders == []


def test_the_check_sees_every_form() -> None:
    source = '''
import tests
import tests.peers.tls as tls
from tests.peers.tls import make_test_pki
import os, tests.conftest

def run():
    from tests.peers import tls
    return ["python", "-m", "tests.peers.apns_peer"]

from . import tests as sibling  # a relative import: pushsvc's own "tests" module, not the test suite
from pushsvc.simulators.tls import make_test_pki
label = "tests"  # a word, not a module path
'''
    assert [line for line, _ in references_to_tests(source)] == [2, 3, 4, 5, 8, 9]
