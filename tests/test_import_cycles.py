"""No import cycle among fusion-edge's modules.

The import graph is read from the source with `ast` (nothing is imported): every module of
every fusion_edge package, with the folder → package mapping of setup.py (runtime/ is
fusion_edge.runtime, …). An edge is any `import` / `from … import` of a fusion_edge module,
wherever it stands: at module level and inside functions too. A cycle held together by an
import inside a function still makes the modules one unit (none can be read, moved or tested
without the others) and fails at import time as soon as the lazy import is hoisted, so it
counts. Imports under `if TYPE_CHECKING:` are not executed and do not count. Imports of
third-party packages (the lazy imports of onnxruntime, llama_cpp, torch, …) are not edges.

An edge goes to the module named: `from a.b import c` to a.b.c where that is a module, else to
a.b (c is defined in its __init__); `import a.b.c` to a.b.c. As in import-linter / grimp, the
__init__ of the packages on the way (which Python runs too) is not an edge of its own.
Dynamic imports (`importlib.import_module` of a computed name) are invisible to this test.
"""
from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_roots(root: Path = ROOT) -> dict[str, str]:
    """setup.py's ROOTS (import name → folder), read without running setup.py."""
    tree = ast.parse((root / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ROOTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no ROOTS")


def modules(root: Path, roots: dict[str, str]) -> dict[str, Path]:
    """Module name → file, for every .py file inside a package (a folder with __init__.py)
    under the mapped roots; a folder mapped to a package of its own belongs to that one."""
    out: dict[str, Path] = {}
    mapped = {(root / folder).resolve() for folder in roots.values()}
    for name, folder in roots.items():
        base = root / folder
        if not (base / "__init__.py").is_file():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            dirs = [base / Path(*rel.parts[:i]) for i in range(1, len(rel.parts))]
            if any(d.resolve() in mapped for d in dirs):
                continue                    # e.g. a subfolder that is its own mapped root
            if not all((d / "__init__.py").is_file() for d in dirs):
                continue                    # package data (launch files, …), not a module
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([name, *parts])] = path
    return out


@dataclass(frozen=True)
class Edge:
    target: str
    line: int


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` / `if typing.TYPE_CHECKING:`."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports(name: str, path: Path, known: set[str]) -> list[Edge]:
    """The fusion_edge modules `name` (its source at `path`) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[Edge] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets += [Edge(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for a in node.names:            # `from P import m`: the submodule m if it is one, else P
                sub = f"{base}.{a.name}"
                targets.append(Edge(sub if sub in known else base, node.lineno))
    return [e for e in targets if e.target in known]


def import_graph(root: Path = ROOT, roots: dict[str, str] | None = None) -> dict[str, dict[str, int]]:
    """module → {imported fusion_edge module: first line importing it}."""
    mods = modules(root, roots if roots is not None else package_roots(root))
    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges = graph.setdefault(name, {})
        for e in imports(name, path, set(mods)):
            if e.target != name:
                edges.setdefault(e.target, e.line)
    return graph


def _components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def _one_cycle(graph: dict[str, dict[str, int]], comp: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (BFS inside the component)."""
    members, start = set(comp), comp[0]
    prev: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if child in members and child not in prev:
                prev[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component: [m0, m1, …, m0]."""
    return [_one_cycle(graph, comp) for comp in _components(graph)]


def describe(graph: dict[str, dict[str, int]], cycle: list[str], mods: dict[str, Path] | None = None) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        where = f"{mods[a].relative_to(ROOT)}:{graph[a][b]}" if mods and a in mods else f"line {graph[a][b]}"
        steps.append(f"  {a} -> {b}   ({where})")
    return "\n".join(steps)


# Cycles that exist and are owned elsewhere, each with what breaks it. The test fails on any
# cycle not listed here, and on an entry that is no longer a cycle (remove it then): the list
# only shrinks.
KNOWN: dict[frozenset[str], str] = {}


def test_no_import_cycles():
    roots = package_roots()
    mods = modules(ROOT, roots)
    assert "fusion_edge.runtime.pipeline" in mods and "fusion_edge.runtime.backends.ort_session" in mods
    graph = import_graph(ROOT, roots)
    assert graph["fusion_edge.runtime.pipeline"], "the graph found no imports: the parser is broken"
    found = {frozenset(c): c for c in cycles(graph)}
    new = [c for members, c in found.items() if members not in KNOWN]
    assert not new, "import cycles (move the shared constant / helper to a leaf module):\n" + "\n\n".join(
        describe(graph, c, mods) for c in new)
    gone = [sorted(members) for members in KNOWN if members not in found]
    assert not gone, f"no longer a cycle (or a different one now), remove from KNOWN: {gone}"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")


def test_detector_finds_a_cycle_held_by_a_function_level_import(tmp_path):
    # a synthetic checkout: folder `rt` mapped to package `pkg.rt`, as runtime/ is to fusion_edge.runtime
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "rt/__init__.py": "",
        "rt/heavy.py": "from .sub.leafish import helper\nKEY = 'k'\n",
        "rt/sub/__init__.py": "",
        "rt/sub/leafish.py": ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from pkg.rt import typed_only\n"
                              "def helper():\n    from ..heavy import KEY\n    return KEY\n"),
        "rt/typed_only.py": "from .sub import leafish\n",
        "rt/fine.py": "import os\nimport numpy\nfrom . import heavy\n",
        "rt/data/launch.py": "from pkg.rt import heavy\n",     # no __init__.py: package data, not a module
    })
    roots = {"pkg": "pkg", "pkg.rt": "rt"}
    assert "pkg.rt.data.launch" not in modules(tmp_path, roots)
    graph = import_graph(tmp_path, roots)
    assert graph["pkg.rt.heavy"] == {"pkg.rt.sub.leafish": 1}
    assert graph["pkg.rt.fine"] == {"pkg.rt.heavy": 3}          # third-party imports are no edges
    assert graph["pkg.rt.typed_only"] == {"pkg.rt.sub.leafish": 1}
    assert graph["pkg.rt.sub.leafish"] == {"pkg.rt.heavy": 6}   # the TYPE_CHECKING import does not count
    assert cycles(graph) == [["pkg.rt.heavy", "pkg.rt.sub.leafish", "pkg.rt.heavy"]]
    assert "pkg.rt.sub.leafish -> pkg.rt.heavy   (line 6)" in describe(graph, cycles(graph)[0])

    # the fix of issue 26: the constant moves to a leaf module, and the cycle is gone
    _write(tmp_path, {"rt/names.py": "KEY = 'k'\n",
                      "rt/heavy.py": "from .sub.leafish import helper\nfrom .names import KEY\n",
                      "rt/sub/leafish.py": "from ..names import KEY\n\ndef helper():\n    return KEY\n"})
    assert cycles(import_graph(tmp_path, roots)) == []


def test_detector_finds_longer_cycles_through_a_package_init_and_absolute_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "rt/__init__.py": "",
        "rt/eng/__init__.py": "from ..dev import probe\nX = 1\n",       # the package imports dev …
        "rt/eng/session.py": "import pkg.rt.trt.ep\n",
        "rt/dev.py": "def probe():\n    from .eng import X\n    return X\n",   # … which imports from it
        "rt/trt/__init__.py": "",
        "rt/trt/ep.py": "def chain():\n    import pkg.rt.trt.prof as p\n    return p\n",
        "rt/trt/prof.py": "from pkg.rt.eng.session import *\n",
    })
    graph = import_graph(tmp_path, {"pkg": "pkg", "pkg.rt": "rt"})
    assert graph["pkg.rt.trt.prof"] == {"pkg.rt.eng.session": 1}   # the module, not the packages on the way
    assert cycles(graph) == [["pkg.rt.dev", "pkg.rt.eng", "pkg.rt.dev"],
                             ["pkg.rt.eng.session", "pkg.rt.trt.ep", "pkg.rt.trt.prof", "pkg.rt.eng.session"]]
