"""The import graph of ``zoo`` and ``data_modules``: no cycles, no upward or sideways arrows, and
the light entry points stay light (``import zoo`` without torch, ``python -m zoo --help`` and
``python -m zoo dp-strings --help`` without Lightning).

Every module under ``zoo/`` and ``data_modules/`` is parsed with ``ast`` (top-level and
function-level imports, relative names resolved). The rules (``violation``), bottom layer first:

- ``zoo`` and ``zoo.__main__``: the stdlib (and ``zoo.core.cli``) at top level;
- ``zoo.core.cli``: ``zoo.core.errors`` and the stdlib at top level (commands load lazily);
- ``zoo.core.*``: ``zoo.core``; ``data_modules`` only in ``zoo.core.lightning_cli``; ``zoo.nn`` and
  the paper packages only inside functions (the registry imports them with importlib);
- ``zoo.nn.*``: torch, the stdlib, ``zoo.nn`` and ``zoo.core.errors``; never Lightning;
- ``zoo.<paper>.*``: ``zoo.core`` (not the command line), ``zoo.nn``, ``data_modules`` and its own
  package; never another paper's;
- ``zoo.dp_strings.*``: never torch or Lightning (nor ``zoo.nn``, which is torch);
- ``data_modules.*``: ``data_modules`` and the model-independent ``zoo.core`` modules (not the
  registry, ``register``, ``seeds`` or the command line); never a paper package.

A violation or a cycle (top-level imports only) is reported as ``file:line``.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_zoo

PACKAGES = ("zoo", "data_modules")
#: Shared, non-paper subpackages of zoo; every other subpackage is one paper's.
SHARED = ("core", "nn")
#: Third-party packages that pull in torch or Lightning.
TORCH = ("torch", "torchvision", "torchmetrics")
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")
#: zoo.core modules that know the models (import them, or import what does): above the papers.
MODEL_AWARE = ("zoo.core.cli", "zoo.core.lightning_cli", "zoo.core.registry", "zoo.core.register", "zoo.core.seeds")
STDLIB = frozenset(sys.stdlib_module_names)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module, absolute (an internal module or a third-party / stdlib name)
    path: Path
    line: int
    top_level: bool  # executed when the importing module is imported (not inside a function)

    def __str__(self) -> str:
        where = "top level" if self.top_level else "in a function"
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.source} imports {self.target} ({where})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


MODULES = find_modules()
PAPERS = sorted(
    p.name for p in (ROOT / "zoo").iterdir()
    if p.is_dir() and (p / "__init__.py").is_file() and p.name not in SHARED
)


class Collector(ast.NodeVisitor):
    """Every import statement of one module, with whether it runs at import time."""

    def __init__(self, module: str, path: Path) -> None:
        self.module, self.path = module, path
        self.package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        self.depth = 0
        self.found: list[Import] = []

    def _add(self, target: str, node: ast.AST) -> None:
        self.found.append(Import(self.module, target, self.path, node.lineno, self.depth == 0))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            base = ".".join([*base, node.module] if node.module else base)
        else:
            base = node.module
        if base == "__future__":
            return
        # ``from P import name``: the submodule P.name when there is one, else P itself.
        submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
        for target in submodules:
            self._add(target, node)
        if len(submodules) < len(node.names):
            self._add(base, node)


def collect() -> list[Import]:
    found = []
    for module, path in MODULES.items():
        collector = Collector(module, path)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found += collector.found
    return found


IMPORTS = collect()


def root(name: str) -> str:
    return name.partition(".")[0]


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def internal(name: str) -> bool:
    return root(name) in PACKAGES


def paper_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "zoo" and parts[1] in PAPERS else None


def violation(imp: Import) -> str | None:
    """Why ``imp`` breaks the layering (``None`` if it does not)."""
    source, target = imp.source, imp.target
    if source == "zoo" and imp.top_level and root(target) not in STDLIB:
        return "`import zoo` must stay light: the package imports only the stdlib at top level"
    if source == "zoo.__main__" and imp.top_level and target != "zoo.core.cli" and root(target) not in STDLIB:
        return "`python -m zoo` must stay light: zoo.__main__ imports only zoo.core.cli"
    if source == "zoo.core.cli" and imp.top_level and target != "zoo.core.errors" and root(target) not in STDLIB:
        return "zoo.core.cli imports only zoo.core.errors and the stdlib at top level (commands load lazily)"
    if within(source, "zoo.core"):
        if within(target, "data_modules") and source != "zoo.core.lightning_cli":
            return "only zoo.core.lightning_cli imports data_modules"
        if within(target, "zoo.nn", *(f"zoo.{p}" for p in PAPERS)) and imp.top_level:
            return "zoo.core imports zoo.nn and the paper packages only lazily (inside functions)"
        if target == "zoo":
            return "zoo.core must not import the zoo package (it re-exports zoo.core.registry)"
    if within(source, "zoo.nn"):
        if within(target, *LIGHTNING):
            return "zoo.nn is plain torch: never Lightning"
        if internal(target) and not within(target, "zoo.nn", "zoo.core.errors"):
            return "zoo.nn imports only zoo.nn and zoo.core.errors from the zoo"
        if not internal(target) and root(target) not in STDLIB and root(target) != "torch":
            return "zoo.nn imports only torch and the stdlib"
    paper = paper_of(source)
    if paper is not None:
        other = paper_of(target)
        if other is not None and other != paper:
            return f"a paper package never imports another paper's (zoo.{paper} -> zoo.{other})"
        if within(target, "zoo.core.cli", "zoo.core.lightning_cli"):
            return "the command line sits above the papers (it imports them): a paper must not import it"
        if internal(target) and other is None and not within(target, "zoo.core", "zoo.nn", "data_modules"):
            return "a paper imports only zoo.core, zoo.nn, data_modules and its own package"
    if within(source, "zoo.dp_strings"):
        if within(target, *TORCH, *LIGHTNING):
            return "zoo.dp_strings is numpy only: never torch or Lightning"
        if within(target, "zoo.nn"):
            return "zoo.dp_strings is numpy only: zoo.nn imports torch"
    if within(source, "data_modules"):
        if paper_of(target) is not None:
            return "data_modules never import a paper package"
        if within(target, *MODEL_AWARE) or target == "zoo":
            return "data_modules import only the model-independent zoo.core modules (errors), not the registry/CLI"
        if internal(target) and not within(target, "data_modules", "zoo.core"):
            return "data_modules import only data_modules and zoo.core"
    return None


def test_every_module_is_parsed_and_the_papers_are_the_registrys():
    assert {"zoo.core.cli", "zoo.core.lightning_cli", "zoo.nn", "zoo.dp_strings", "data_modules"} <= set(MODULES)
    assert any(imp.top_level for imp in IMPORTS) and any(not imp.top_level for imp in IMPORTS)
    # function-level imports are seen (the registry imports Lightning lazily)
    assert any(imp.source == "zoo.core.registry" and imp.target == "lightning.pytorch" and not imp.top_level
               for imp in IMPORTS)
    from zoo.core.registry import PAPERS as REGISTERED

    assert set(REGISTERED) <= set(PAPERS), "every registered paper is a zoo subpackage"
    assert "dp_strings" in PAPERS


def test_relative_and_function_level_imports_are_resolved():
    collector = Collector("zoo.dit.latent", ROOT / "zoo/dit/latent.py")
    collector.visit(ast.parse(
        "from .model import dit\n"
        "from . import diffusion, DIT_SIZES\n"
        "from ..core.errors import ConfigError\n"
        "import torch.nn as nn\n"
        "class A:\n"
        "    def f(self):\n"
        "        from zoo.ndlinear import NdLinear\n"
    ))
    assert [(i.target, i.line, i.top_level) for i in collector.found] == [
        ("zoo.dit.model", 1, True), ("zoo.dit.diffusion", 2, True), ("zoo.dit", 2, True),
        ("zoo.core.errors", 3, True), ("torch.nn", 4, True), ("zoo.ndlinear", 7, False),
    ]
    package = Collector("zoo.dit", ROOT / "zoo/dit/__init__.py")
    package.visit(ast.parse("from .model import dit\nfrom .. import nn\n"))
    assert [i.target for i in package.found] == ["zoo.dit.model", "zoo.nn"]


def find_cycles(imports: list[Import], modules) -> list[list[Import]]:
    """Cycles of top-level imports among ``modules``, each as its list of arrows."""
    graph: dict[str, list[Import]] = {m: [] for m in modules}
    for imp in imports:
        if imp.top_level and imp.target in graph and imp.target != imp.source:
            graph[imp.source].append(imp)
    cycles, state, stack = [], {}, []  # state: 1 = on the DFS stack, 2 = done

    def visit(module: str) -> None:
        state[module] = 1
        for imp in graph[module]:
            if state.get(imp.target) == 1:
                path = stack + [imp]
                start = next(i for i, edge in enumerate(path) if edge.source == imp.target)
                cycles.append(path[start:])
            elif imp.target not in state:
                stack.append(imp)
                visit(imp.target)
                stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_no_import_cycle():
    """Top-level imports among the zoo's modules form no cycle (a cycle breaks depending on which
    module is imported first)."""
    cycles = find_cycles(IMPORTS, MODULES)
    report = "\n\n".join(
        " -> ".join([cycle[0].source, *(edge.target for edge in cycle)]) + "\n" + "\n".join(f"  {edge}" for edge in cycle)
        for cycle in cycles
    )
    assert not cycles, f"import cycles:\n{report}"


def test_the_cycle_check_finds_a_cycle():
    path = ROOT / "zoo/core/errors.py"
    arrows = [Import("a", "b", path, 1, True), Import("b", "c", path, 2, True), Import("c", "a", path, 3, True),
              Import("c", "d", path, 4, True), Import("d", "a", path, 5, False)]  # lazy: no cycle
    cycles = find_cycles(arrows, "abcd")
    assert [[(e.source, e.target) for e in cycle] for cycle in cycles] == [[("a", "b"), ("b", "c"), ("c", "a")]]


def test_no_upward_or_sideways_import():
    violations = [f"{imp}: {why}" for imp in IMPORTS if (why := violation(imp)) is not None]
    assert not violations, "layering violations:\n" + "\n".join(violations)


@pytest.mark.parametrize("imp, expected", [
    (Import("zoo.dit.model", "zoo.ndlinear.layer", ROOT / "zoo/dit/model.py", 1, True), "another paper"),
    (Import("zoo.dit.model", "zoo.ndlinear", ROOT / "zoo/dit/model.py", 1, False), "another paper"),
    (Import("zoo.nn.entmax", "lightning.pytorch", ROOT / "zoo/nn/entmax.py", 1, False), "never Lightning"),
    (Import("zoo.nn.entmax", "zoo.hopfield", ROOT / "zoo/nn/entmax.py", 1, False), "only zoo.nn and zoo.core.errors"),
    (Import("zoo.core.cli", "torch", ROOT / "zoo/core/cli.py", 1, True), "zoo.core.cli imports only"),
    (Import("zoo.core.module", "zoo.dit", ROOT / "zoo/core/module.py", 1, True), "only lazily"),
    (Import("zoo.core.seeds", "data_modules", ROOT / "zoo/core/seeds.py", 1, False), "only zoo.core.lightning_cli"),
    (Import("data_modules.digits", "zoo.icl.model", ROOT / "data_modules/digits.py", 1, False), "never import a paper"),
    (Import("data_modules.digits", "zoo.core.registry", ROOT / "data_modules/digits.py", 1, False), "not the registry"),
    (Import("zoo.dp_strings.index", "torch", ROOT / "zoo/dp_strings/index.py", 1, False), "numpy only"),
    (Import("zoo.icl.module", "zoo.core.lightning_cli", ROOT / "zoo/icl/module.py", 1, False), "sits above the papers"),
    (Import("zoo", "torch", ROOT / "zoo/__init__.py", 1, True), "stay light"),
])
def test_the_rules_catch_a_bad_arrow(imp, expected):
    """The checker itself: each rule fires on an arrow that breaks it."""
    assert expected in (violation(imp) or "")


def test_allowed_arrows_pass():
    ok = [
        Import("zoo.core.registry", "zoo.dit", ROOT / "zoo/core/registry.py", 1, False),
        Import("zoo.core.lightning_cli", "data_modules", ROOT / "zoo/core/lightning_cli.py", 1, True),
        Import("zoo.hopfield.retrieval", "zoo.nn.entmax", ROOT / "zoo/hopfield/retrieval.py", 1, True),
        Import("zoo.icl.baselines", "data_modules.icl_tasks", ROOT / "zoo/icl/baselines.py", 1, True),
        Import("zoo.dit.latent_image", "zoo.core.registry", ROOT / "zoo/dit/latent_image.py", 1, True),
        Import("data_modules.base", "lightning.pytorch", ROOT / "data_modules/base.py", 1, True),
        Import("zoo.dp_strings.index", "numpy", ROOT / "zoo/dp_strings/index.py", 1, True),
    ]
    assert [violation(imp) for imp in ok] == [None] * len(ok)


# -- fresh interpreters ------------------------------------------------------------------------
#: ``python -m zoo ARGS`` in this interpreter (runpy, as ``-m`` does), then the top-level packages
#: it imported, on stderr's last line. (``-X importtime`` misses modules loaded by
#: ``importlib.import_module``, which is how ``zoo.core.cli`` loads its commands.)
AS_MAIN = """
import runpy, sys
sys.argv = ["zoo", *sys.argv[1:]]
try:
    runpy.run_module("zoo", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert exit.code in (None, 0), f"exit status {exit.code}"
sys.stdout.flush()
print("IMPORTED", sorted({name.partition(".")[0] for name in sys.modules}), file=sys.stderr)
"""


def run_fresh(*args: str, code: str = AS_MAIN) -> tuple[str, set[str]]:
    """stdout and the top-level packages imported by ``code`` (default: ``python -m zoo ARGS``) in
    a fresh interpreter."""
    import os
    import subprocess

    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("IMPORTED "), done.stderr[-2000:]
    return done.stdout, set(ast.literal_eval(last.removeprefix("IMPORTED ")))


@pytest.mark.parametrize("statement, absent", [
    ("import zoo.nn", LIGHTNING),
    ("import zoo", (*TORCH, *LIGHTNING)),
    ("import zoo.dp_strings", (*TORCH, *LIGHTNING)),
])
def test_light_imports_in_a_fresh_interpreter(statement, absent):
    code = f"import sys\n{statement}\nprint('IMPORTED', sorted({{n.partition('.')[0] for n in sys.modules}}), file=sys.stderr)"
    _, imported = run_fresh(code=code)
    assert "zoo" in imported
    assert not imported & set(absent), f"`{statement}` imported {sorted(imported & set(absent))}"


def test_zoo_help_lists_every_command_without_lightning():
    from zoo.core.cli import COMMANDS

    out, imported = run_fresh("--help")
    assert not imported & set(LIGHTNING), f"`python -m zoo --help` imported {sorted(imported & set(LIGHTNING))}"
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.strip()}
    missing = sorted(set(COMMANDS) - listed)
    assert not missing, f"`python -m zoo --help` does not list {missing}:\n{out}"
    done = run_zoo("--help", timeout=120)  # the real entry point prints the same
    assert done.returncode == 0 and done.stdout == out, done.stderr[-2000:]


def test_dp_strings_help_imports_neither_lightning_nor_torch():
    out, imported = run_fresh("dp-strings", "--help")
    assert "usage:" in out and "dp-strings" in out
    assert "numpy" in imported, "the command was loaded"
    found = sorted(imported & {*TORCH, *LIGHTNING})
    assert not found, f"`python -m zoo dp-strings --help` imported {found}"
