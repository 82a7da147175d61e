"""Imports point one way (tests/import_rules.py states the rules), so a later change cannot quietly break
the layout: the real tree is read from its source files, and made-up graphs show the check can fail."""
from __future__ import annotations

from pathlib import Path

from tests.import_rules import ModuleImports, read_graph, violations

ROOT = Path(__file__).resolve().parents[1]


def test_the_tree_keeps_the_import_rules():
    graph = read_graph(ROOT)
    assert {"protocol.verdict", "scanners.media", "node.runtime", "node.federation.inbox", "node.workers.hub"} \
        <= set(graph)  # it really read the tree
    assert violations(graph) == []


def _graph(**modules: dict[str, set[str]]) -> dict[str, ModuleImports]:
    return {name.replace("__", "."): ModuleImports(**kinds) for name, kinds in modules.items()}


def test_each_rule_is_caught_in_a_made_up_graph():
    clean = _graph(protocol__verdict={"top": set()}, scanners__media={"top": {"protocol.verdict"}},
                   node__store={"top": {"protocol.verdict"}},
                   node__runtime={"top": {"node.store", "scanners.media"}},
                   node__federation__inbox={"top": {"node.runtime", "node.federation.auth"}},
                   node__federation__auth={"top": {"node.store"}},
                   node__workers__hub={"top": {"node.store"}},
                   node__serve={"top": {"node.federation", "node.workers", "node.runtime"}},
                   node__federation={"top": {"node.federation.inbox"}},
                   node__workers={"top": {"node.workers.hub"}},
                   node__federation__commands={"top": {"node.workers.hub"}},
                   scanners__clip={"top": set(), "local": {"torch"}},
                   node__pipeline={"top": set(), "type_only": {"node.runtime"}})
    assert violations(clean) == []

    def broken(module: str, **kinds: set[str]) -> list[str]:
        graph = dict(clean)
        graph[module] = ModuleImports(**kinds)
        return violations(graph)

    # (A broken edge that points "up" may also close a cycle with the clean graph's edges: both are said.)
    assert broken("protocol.verdict", top={"scanners.media"}) == \
        ["protocol.verdict (protocol) imports scanners.media (scanners)",
         "import cycle: protocol.verdict -> scanners.media"]
    assert broken("scanners.media", top={"node.store"}) == ["scanners.media (scanners) imports node.store (core)"]
    assert broken("node.store", top={"node.workers.hub"}) == \
        ["node.store (core) imports node.workers.hub (feature)", "import cycle: node.store -> node.workers.hub"]
    assert broken("node.runtime", top={"node.federation.auth"}) == \
        ["node.runtime (core) imports node.federation.auth (feature)"]
    assert broken("node.federation.auth", top={"node.workers.hub"}) == \
        ["node.federation.auth (feature federation) imports node.workers.hub (feature workers)"]
    assert broken("node.store", local={"node.runtime"})[0].startswith("node.store imports node.runtime inside a function")
    assert broken("node.store", type_only={"node.runtime"}) == ["node.store imports node.runtime under TYPE_CHECKING"]
    assert broken("node.store", top={"node.runtime"}) == ["import cycle: node.runtime -> node.store"]
