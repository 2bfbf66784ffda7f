"""The layers of ARCHITECTURE.md, checked on the source.

* The core (plain PyTorch) never imports Lightning, Hydra or omegaconf, nor the edges of advtrain
  itself (``advtrain.cli``, ``advtrain.report``, ``advtrain.callbacks``, ``advtrain.lit``), and
  importing it loads none of them.
* No module imports another module's private name (``from advtrain.x import _name``).
* No import cycle between advtrain's modules (top-level imports: those inside functions or under
  ``if TYPE_CHECKING:`` run later or never, and break no import order).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "advtrain"

#: Core packages and top-level modules (a name may be either: ``evaluation``).
CORE = (
    "attacks",
    "certify",
    "checkpoints",
    "data",
    "evaluation",
    "generators",
    "lazy",
    "losses",
    "metrics",
    "models",
    "modes",
    "normalization",
    "provenance",
    "randomness",
    "schedules",
    "threat",
    "unpickle",
    "validation",
)
#: The Lightning edge of ``advtrain.data`` (its data modules); the rest of the package is core.
DATA_EDGE = frozenset(
    {
        "advtrain.data.cifar10",
        "advtrain.data.datamodules",
        "advtrain.data.mnist",
        "advtrain.data.vision_datamodule",
    }
)
FRAMEWORKS = frozenset({"lightning", "pytorch_lightning", "lightning_fabric", "hydra", "omegaconf"})
EDGES = ("advtrain.cli", "advtrain.report", "advtrain.callbacks", "advtrain.lit")

#: Offenders of the private-name check in files whose owners are changing them now, as
#: ``"<importer> imports <_name> from <module>"``; the lead empties it as their changes land.
#: (At HEAD 30e1ecf these were report.html's ``_pct`` and cli.evaluate's ``_json_safe`` from
#: report.writer, certify._patches's ``_pair`` from certify._ops and certify.crown's
#: ``_propagate`` from certify.ibp; all are gone from the working tree this test was written on.)
KNOWN_PENDING: frozenset[str] = frozenset()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_core(name: str) -> bool:
    parts = name.split(".")
    return name == "advtrain" or (parts[1] in CORE and name not in DATA_EDGE)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, importer: str) -> str:
    """The module an ``ImportFrom`` names, relative imports resolved against ``importer``."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if MODULES[importer].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imports(importer: str, top_level_only: bool) -> Iterator[tuple[str, str | None]]:
    """``(module, name)`` of each import of ``importer`` (``name`` ``None`` for ``import m``).

    With ``top_level_only``, imports inside functions and under ``if TYPE_CHECKING:`` are left out.
    """

    def visit(nodes: list[ast.AST]) -> Iterator[tuple[str, str | None]]:
        for node in nodes:
            if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if top_level_only and isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                yield from ((alias.name, None) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(node, importer)
                yield from ((module, alias.name) for alias in node.names)
            yield from visit(list(ast.iter_child_nodes(node)))

    yield from visit(list(ast.parse(MODULES[importer].read_text()).body))


def imported_module(module: str, name: str | None) -> str:
    """The advtrain module an import loads: ``from pkg import mod`` names the submodule."""
    if name is not None and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


def test_core_modules_import_no_framework_and_no_edge() -> None:
    offenders = []
    for importer in filter(is_core, MODULES):
        for module, name in imports(importer, top_level_only=False):
            target = imported_module(module, name)
            edge = any(target == e or target.startswith(f"{e}.") for e in EDGES)
            if target.split(".")[0] in FRAMEWORKS or edge:
                offenders.append(f"{importer} imports {target}")
    assert not offenders, offenders


def test_importing_the_core_loads_no_lightning_or_hydra() -> None:
    core = sorted(filter(is_core, MODULES))
    code = (
        "import importlib, sys\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FRAMEWORKS)!r})\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_module_imports_a_private_name_of_another() -> None:
    offenders = set()
    for importer in MODULES:
        for module, name in imports(importer, top_level_only=False):
            if module.split(".")[0] == "advtrain" and name is not None and name.startswith("_"):
                offenders.add(f"{importer} imports {name} from {module}")
    assert not offenders - KNOWN_PENDING, sorted(offenders - KNOWN_PENDING)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycle_between_modules() -> None:
    graph = {
        importer: {
            target
            for module, name in imports(importer, top_level_only=True)
            if (target := imported_module(module, name)) in MODULES and target != importer
        }
        for importer in MODULES
    }
    assert not _cycles(graph), _cycles(graph)
