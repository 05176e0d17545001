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


# Packages that are slow to import or optional; only these may be imported inside a function.
LAZY_OK = {"torch", "transformers", "datasets", "bm25s", "tensorboardX", "matplotlib", "elasticsearch",
           "fcntl"}


def test_function_level_imports_are_of_slow_optional_packages_and_say_so():
    """Imports sit at a module's top; one inside a function must be of a slow or optional
    third-party package (LAZY_OK) and carry a comment (on its line or the line above)."""
    import ast
    import pathlib

    bad = []
    root = pathlib.Path(__file__).resolve().parent.parent / "gmem"
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                here = f"{path.relative_to(root.parent)}:{node.lineno}"
                if (mod or "").split(".")[0] not in LAZY_OK:
                    bad.append(f"{here} imports {mod} inside a function")
                elif not ("#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
                          or any("#" in lines[i] for i in range(max(0, node.lineno - 3), node.lineno - 1))):
                    bad.append(f"{here} imports {mod} lazily without a comment saying why")
    assert not bad, "\n".join(sorted(set(bad)))
