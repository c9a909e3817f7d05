"""The house's layout, read from the source with `ast`: no two modules of the package import
each other (at module level or inside a function), and the package's `__init__` imports no
submodule at import time but the TensorFlow-free `_console`."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "tfprobunet")


def _modules():
    """`{module name: path}` of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def _imports(path, module, known, is_package):
    """The modules of `known` that the file at `path` imports, anywhere in it."""
    with open(path) as f:
        tree = ast.parse(f.read())
    package = module if is_package else module.rpartition(".")[0]
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        imported |= {n for n in names if n in known and n != module}
    return imported


def _graph():
    known = _modules()
    return {m: _imports(p, m, known, p.endswith("__init__.py")) for m, p in known.items()}


def _pairs(graph):
    """Two modules that import each other, but a package and its own submodules (a package's
    `__init__` may re-export what its modules define; they import it as their parent)."""
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if a < b and a in graph.get(b, ()) and not b.startswith(a + ".")
                  and not a.startswith(b + "."))


def test_no_two_modules_import_each_other():
    assert _pairs(_graph()) == []


def test_the_check_finds_a_circle():
    graph = {"tfprobunet.data.folders": {"tfprobunet.data.sources"},
             "tfprobunet.data.sources": {"tfprobunet.data.folders"},
             "tfprobunet.data": {"tfprobunet.data.sources"}}
    assert _pairs(graph) == [("tfprobunet.data.folders", "tfprobunet.data.sources")]


def test_the_package_imports_nothing_heavy_at_import_time():
    with open(os.path.join(PACKAGE, "__init__.py")) as f:
        tree = ast.parse(f.read())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {alias.name for node in top_level for alias in node.names}
    assert names == {"_console"}, names
