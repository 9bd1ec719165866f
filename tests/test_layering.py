"""The package layering of docs/architecture.md, checked on the source (issue 10).

Every module has a layer; a module imports only modules of its own layer or below (lazy and
type-only imports included: a lower layer must not even name an upper one). Module-level
imports form no cycle. click lives in ``cli/`` (and the developers' ``devtools`` CLI), and
no command module imports another. The pure modules (OCI parsing, sizes, labels, gc marking,
planning, warm order, eviction plan) import no I/O.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

#: Layers, bottom first: module-name prefixes below ``cargohold.`` (the longest prefix wins).
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["errors", "units", "labels", "filekind", "oci", "interrupts", "singleflight",
              "atomicfile", "filehash"]),
    ("model", ["store.interfaces", "store.gcmark", "bake.plan", "bake.solver", "bake.spec",
               "bake.tomllines", "node.warmorder", "node.labels", "node.niceness",
               "imagebuild", "settings"]),
    ("plumbing", ["registry", "mount", "leasing", "images"]),
    ("differ", ["unpack"]),
    ("stores", ["store.embedded", "store.containerd", "store"]),
    ("operations", ["store.open", "pull", "archive", "maintain", "bake.sizes", "bake.catalog",
                    "bake.resolve", "bake.state", "bake.report", "runtime"]),
    ("jobs", ["pull.sources", "pull.pipeline", "runtime.containers", "measure", "node",
              "bake"]),
    ("commands", ["cli", "devtools", "__main__"]),
]

#: Pure logic: no file system, network, processes or databases (issue 10, the brief).
PURE = ["oci", "units", "labels", "errors", "store.gcmark", "bake.plan", "bake.solver",
        "node.warmorder", "node.evict_plan"]
IO_MODULES = {"os", "shutil", "socket", "subprocess", "sqlite3", "grpc", "httpx", "urllib3",
              "requests", "tempfile", "fcntl", "mmap", "pathlib", "io"}
#: Allowed anyway, with the reason.
PURE_EXCEPTIONS = {("cargohold.oci.platform", "os"): "host_platform() asks uname(2) only"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a module of the package), or an outside top-level name
    line: int
    top_level: bool  # executed on import (not in a function, not under TYPE_CHECKING)


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted((SRC / "cargohold").rglob("*.py")):
        parts = f.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _walk(body: list[ast.stmt], top: bool) -> Iterator[tuple[ast.stmt, bool]]:
    for node in body:
        yield node, top
        if isinstance(node, ast.If):
            inner = top and not _is_type_checking(node)
            yield from _walk(node.body, inner)
            yield from _walk(node.orelse, inner)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *[h.body for h in node.handlers]):
                yield from _walk(block, top)
        elif isinstance(node, ast.With):
            yield from _walk(node.body, top)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield from _walk(node.body, top and isinstance(node, ast.ClassDef))
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _walk([child], False)


def _imports(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out: list[Import] = []
    for node, top in _walk(tree.body, True):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # ``from pkg import submodule`` imports the submodule, not pkg's __init__
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in dict.fromkeys(names):
            target = name if name.split(".")[0] != "cargohold" else _owning_module(name)
            if target != module:
                out.append(Import(module, target, node.lineno, top))
    return out


def _owning_module(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def _layer(module: str) -> int:
    name = module.removeprefix("cargohold").removeprefix(".")
    best: tuple[int, int] | None = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (rank, len(p))
    if best is None:
        raise AssertionError(f"{module} has no layer in tests/test_layering.py LAYERS "
                             "(add it, and to docs/architecture.md)")
    return best[0]


ALL_IMPORTS = [imp for m in MODULES if m != "cargohold" for imp in _imports(m)]


def _internal(imp: Import) -> bool:
    return imp.target in MODULES and imp.target != "cargohold"


def test_every_module_has_a_layer() -> None:
    for m in MODULES:
        if m != "cargohold":
            _layer(m)


def test_no_module_imports_a_higher_layer() -> None:
    up = [f"{i.source} ({LAYERS[_layer(i.source)][0]}) imports {i.target} "
          f"({LAYERS[_layer(i.target)][0]}) at line {i.line}"
          for i in ALL_IMPORTS if _internal(i) and _layer(i.target) > _layer(i.source)]
    assert up == []


def test_module_level_imports_have_no_cycle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in ALL_IMPORTS:
        if _internal(i) and i.top_level:
            graph[i.source].add(i.target)
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append([*path[path.index(t):], t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_click_only_in_the_command_layer() -> None:
    users = sorted({i.source for i in ALL_IMPORTS if i.target.split(".")[0] == "click"})
    outside = [m for m in users if not m.startswith("cargohold.cli.")]
    assert outside == []
    assert any(m.startswith("cargohold.cli.") for m in users)  # the check sees click at all


def test_command_modules_do_not_import_each_other() -> None:
    def is_cmd(m: str) -> bool:
        return m.startswith("cargohold.cli.") and m.endswith("_cmd")

    assert [f"{i.source} -> {i.target}" for i in ALL_IMPORTS
            if is_cmd(i.source) and is_cmd(i.target)] == []


@pytest.mark.parametrize("prefix", PURE)
def test_pure_modules_import_no_io(prefix: str) -> None:
    mods = [m for m in MODULES if m.removeprefix("cargohold.") == prefix
            or m.removeprefix("cargohold.").startswith(prefix + ".")]
    assert mods, prefix
    io = [f"{i.source}:{i.line} imports {i.target}" for i in ALL_IMPORTS
          if i.source in mods and i.target.split(".")[0] in IO_MODULES
          and (i.source, i.target) not in PURE_EXCEPTIONS]
    assert io == []
