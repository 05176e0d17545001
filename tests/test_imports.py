"""No import cycles anywhere in gmem (the layers contract in setup.cfg, checked by lint-imports,
covers imports between layers; this covers cycles inside one layer or package too)."""

import grimp
import networkx as nx


def test_no_import_cycles():
    graph = grimp.build_graph("gmem", include_external_packages=False)
    g = nx.DiGraph()
    for module in graph.modules:
        g.add_node(module)
        for imported in graph.find_modules_directly_imported_by(module):
            g.add_edge(module, imported)
    cycles = list(nx.simple_cycles(g))
    assert cycles == [], f"import cycles: {cycles[:5]}"
