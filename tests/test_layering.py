"""Dependencies point one way (ARCHITECTURE.md, "Layers"): every import in the package, lazy ones inside
functions included, is read from the source with `ast` and checked against the layer rules.

    base     edgewise (root modules: logs, config), edgewise.v1   imports nothing of ours above it
    core     edgewise.core      base only, and neither gRPC nor protobuf nor edgewise.v1
    sync     edgewise.sync      core, base
    edge     edgewise.edge      sync, core, base
    offline  edgewise.offline   sync, core, base
    top      edgewise.cli, .demo, .call, .ctl, .client, .processes   anything in the product
    bench    edgewise.bench     anything

Nothing in the product imports bench, except `edgewise.cli`, which hands `edgewise bench ...` to
`edgewise.bench.cli` lazily (DESIGN.md: the CLI's bench commands).
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Where each subpackage's source lives (pyproject.toml's package-dir).
PACKAGE_DIRS = {
    "edgewise.core": ROOT / "core",
    "edgewise.edge": ROOT / "edge",
    "edgewise.sync": ROOT / "sync",
    "edgewise.bench": ROOT / "bench",
    "edgewise": ROOT / "proto" / "edgewise",
}

BASE = "base"
RANK = {"base": 0, "core": 1, "sync": 2, "edge": 3, "offline": 3, "top": 4, "bench": 5}
TOP_MODULES = ("edgewise.cli", "edgewise.demo", "edgewise.call", "edgewise.ctl", "edgewise.client")
TOP_MODULES += ("edgewise.processes",)
MAY_IMPORT = {
    "base": {"base"},
    "core": {"base", "core"},
    "sync": {"base", "core", "sync"},
    "edge": {"base", "core", "sync", "edge"},
    "offline": {"base", "core", "sync", "offline"},
    "top": {"base", "core", "sync", "edge", "offline", "top"},
    "bench": set(RANK),
}
# The one sanctioned reach into bench/: `edgewise bench ...`, lazily, from the CLI's main().
ALLOWED = {("edgewise.cli", "edgewise.bench.cli")}
# core is the domain: no transport, no wire format.
CORE_FORBIDDEN = ("grpc", "google.protobuf", "edgewise.v1", "grpc_health", "grpc_reflection")


def layer(module: str) -> str:
    for prefix, name in (
        ("edgewise.core", "core"),
        ("edgewise.sync", "sync"),
        ("edgewise.edge", "edge"),
        ("edgewise.offline", "offline"),
        ("edgewise.bench", "bench"),
        ("edgewise.v1", BASE),
    ):
        if module == prefix or module.startswith(prefix + "."):
            return name
    if any(module == top or module.startswith(top + ".") for top in TOP_MODULES):
        return "top"
    return BASE


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (or the package whose attribute is imported)
    path: Path
    line: int
    lazy: bool  # inside a function


def _module_name(path: Path) -> str:
    for package, folder in PACKAGE_DIRS.items():
        if package == "edgewise" and any(
            path.is_relative_to(d) for p, d in PACKAGE_DIRS.items() if p != package
        ):
            continue
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    raise ValueError(path)


def _sources() -> list[Path]:
    files: list[Path] = []
    for folder in PACKAGE_DIRS.values():
        files += [p for p in folder.rglob("*.py") if "_pb2" not in p.name]
        files += list(folder.rglob("*.pyx"))
    return sorted(set(files))


@functools.cache
def _known_modules() -> frozenset[str]:
    return frozenset(_module_name(p) for p in _sources())


def _imports_of(path: Path) -> list[Import]:
    source = _module_name(path)
    text = path.read_text()
    if path.suffix == ".pyx":  # Cython: only its Python-level imports matter here
        text = "\n".join(
            line
            for line in text.splitlines()
            if line.startswith(("import ", "from ")) and " cimport " not in line
        )
    tree = ast.parse(text)
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(source, alias.name, path, child.lineno, inner))
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against the importing package
                    base = source.split(".")
                    is_package = path.name == "__init__.py"
                    base = base[: len(base) - child.level + (1 if is_package else 0)]
                    module = ".".join([*base, child.module] if child.module else base)
                else:
                    module = child.module or ""
                for alias in child.names:
                    # `from edgewise import ctl` imports the module edgewise.ctl; `from edgewise.core.store
                    # import Store` the module edgewise.core.store
                    submodule = f"{module}.{alias.name}"
                    target = submodule if submodule in _known_modules() else module
                    found.append(Import(source, target, path, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return found


def violations(imports: list[Import]) -> list[str]:
    problems: list[str] = []
    for imp in imports:
        src_layer = layer(imp.source)
        where = f"{imp.path.relative_to(ROOT)}:{imp.line}"
        if src_layer == "core" and imp.target.startswith(CORE_FORBIDDEN):
            problems.append(f"{where}: {imp.source} (core) imports {imp.target}: core has no transport")
            continue
        if not (
            imp.target == "edgewise"
            or imp.target.startswith("edgewise.")
            or imp.target == "bench"
            or imp.target.startswith("bench.")
        ):
            continue
        target = imp.target if imp.target.startswith("edgewise") else "edgewise." + imp.target
        if target == "edgewise":
            continue  # the root package's __init__ (its version)
        dst_layer = layer(target)
        if (imp.source, target) in ALLOWED and imp.lazy:
            continue
        if dst_layer not in MAY_IMPORT[src_layer]:
            kind = "lazily " if imp.lazy else ""
            problems.append(f"{where}: {imp.source} ({src_layer}) {kind}imports {target} ({dst_layer})")
    return sorted(set(problems))


def test_every_import_points_the_right_way() -> None:
    imports = [imp for path in _sources() for imp in _imports_of(path)]
    assert len(imports) > 300, "the walk found too few imports: is it reading the package?"
    assert violations(imports) == []


@pytest.mark.parametrize(
    ("source", "target", "lazy"),
    [
        # each wrong-way import the layout had before this test (b71f101)
        ("edgewise.sync.edge_sync", "edgewise.edge.logs", False),
        ("edgewise.sync.edge_setup", "edgewise.edge.config", False),
        ("edgewise.edge.cli", "edgewise.bench.cli", True),
        ("edgewise.edge.demo", "edgewise.bench.synth", True),
        ("edgewise.sync.bundle_cli", "edgewise.bench.synth", True),
        ("edgewise.core.pipeline", "edgewise.sync.bundle", False),
        ("edgewise.core.records", "edgewise.v1.personalizer_pb2", False),
        ("edgewise.core.scoring", "grpc", True),
        ("edgewise.offline.retail", "edgewise.edge.config", False),
        ("edgewise.cli", "edgewise.bench.load", False),  # only bench.cli, only lazily
        ("edgewise.cli", "edgewise.bench.cli", False),
    ],
)
def test_a_wrong_way_import_is_caught(source: str, target: str, lazy: bool) -> None:
    imp = Import(source, target, ROOT / "core" / "x.py", 1, lazy)
    assert violations([imp]) != []


def test_the_sanctioned_lazy_bench_import_passes() -> None:
    imp = Import("edgewise.cli", "edgewise.bench.cli", ROOT / "proto" / "edgewise" / "cli.py", 1, True)
    assert violations([imp]) == []
