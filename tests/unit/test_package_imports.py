"""The package stands alone: no module under pushsvc/ imports the tests or starts one of their modules, and its
modules import each other without circles.

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


# --- no import circles ----------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(source: str, known: set[str]) -> set[str]:
    """The package's modules a module imports when it loads: top level and inside top-level if/try blocks,
    not under `if TYPE_CHECKING:` and not inside functions (those run later, when every module is loaded).
    `from a.b import c` counts as importing a.b.c when that is a module, else a.b."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.update(
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                    for alias in node.names
                )
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))

    visit(ast.parse(source).body)
    return found & known


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                strong(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            part = []
            while (top := stack.pop()) != node:
                part.append(top)
            if part:
                circles.append(sorted([node, *part]))

    for node in graph:
        if node not in index:
            strong(node)
    return circles


def test_no_import_circles() -> None:
    """Arrows point down (docs/design.md, Modules): a circle means two modules that cannot be read or changed
    apart, and an import order that decides whether the package loads. A package's __init__ re-exporting its
    own modules is not a circle of modules, so a package does not count as importing its own parts."""
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(path) for path in paths}
    graph = {}
    for path in paths:
        name = module_name(path)
        imports = load_time_imports(path.read_text(), known)
        graph[name] = {other for other in imports if other != name and not other.startswith(name + ".")}
    assert import_circles(graph) == []


def test_the_circle_check_finds_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_circles(graph) == [["a", "b", "c"]]
    source = "import pushsvc.x\nfrom pushsvc import y\nif TYPE_CHECKING:\n    import pushsvc.z\n"
    source += "def f():\n    import pushsvc.w\n"
    known = {"pushsvc.x", "pushsvc.y", "pushsvc.z", "pushsvc.w"}
    assert load_time_imports(source, known) == {"pushsvc.x", "pushsvc.y"}
