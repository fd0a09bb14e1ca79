"""The package's shape, read from the source with `ast` (nothing in pipeline/ is imported).

- Imports form no cycle. Edges: `import pipeline.x`, `from pipeline.x import y` (y a submodule
  when pipeline/x/y.py or pipeline/x/y/__init__.py exists, else pipeline.x itself),
  `from pipeline import x`, relative imports, at any depth (inside functions too). A package's
  __init__ is the node `pipeline.x`; importing pipeline.x.y is not counted as importing the
  parent packages. Dynamic imports (importlib, "module:object" strings) are not seen.
- Import floors (DESIGN.md): a module imports only modules of its own floor or lower, and
  every module has a floor (FLOORS below: place a new top-level module there).
- No source file in pipeline/ is longer than MAX_LINES lines.
- A test module per source module: every pipeline/**/X.py (except __init__.py and names
  starting with "_") has tests/test_X.py or tests/test_<parent>_X.py, <parent> being the
  folder holding X.py (pipeline/distill/loop.py: tests/test_distill_loop.py;
  pipeline/distributed/tfgan/backend.py: tests/test_tfgan_backend.py; pipeline/app/demo.py:
  tests/test_app_demo.py or tests/test_demo.py).
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
TESTS = ROOT / "tests"
MAX_LINES = 300

# Floor by path under pipeline/ (a file, or a folder ending in "/"); the longest match wins.
FLOORS = {
    "__init__.py": 1, "errors.py": 1, "config.py": 1, "io.py": 1, "rundir.py": 1, "checkpoint.py": 1,
    "report.py": 1, "schedules.py": 1, "lock.py": 1, "progress.py": 1, "accelerator.py": 1,
    "samplers/": 2, "metrics/": 2, "data/": 2, "models/": 2,
    "teacher/__init__.py": 3, "teacher/config.py": 3, "teacher/model.py": 3,
    "evaluation/": 4,
    "distributed/": 5,
    "teacher/train.py": 6, "teacher/importer.py": 6, "ddss/": 6, "distill/": 6,
    "app/": 7,
}


def source_modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `package` (its __init__ named as the package)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = (package.name, *path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _existing(name: str, modules) -> str | None:
    """`name`, or its longest prefix that is a module (None when none is)."""
    while name not in modules:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str, path: Path, modules, top: str) -> dict[str, int]:
    """The modules of the package `top` that `module` imports -> the first line doing so."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(name, line):
        name = _existing(name, modules)
        if name and name != module:
            found.setdefault(name, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == top:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                if node.module:
                    base = f"{base}.{node.module}"
            else:
                base = node.module
            if base.split(".")[0] != top:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, node.lineno)
    return found


def import_graph(package: Path) -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """({module: {imported module: line}}, {module: file}) for the package folder `package`."""
    modules = source_modules(package)
    return {m: imports(m, p, modules, package.name) for m, p in modules.items()}, modules


def strongly_connected(graph) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (each one holds a cycle)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def shortest_cycle(graph, component) -> list[str]:
    """A shortest cycle through the component's first module: [m0, m1, ..., m0]."""
    start, inside = component[0], set(component)
    parent = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph.get(v, ())):
            if w == start:
                path = [v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if w in inside and w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component has one


def floor_of(path: Path, package: Path = PACKAGE) -> int | None:
    rel = path.relative_to(package).as_posix()
    keys = [k for k in FLOORS if rel == k or (k.endswith("/") and rel.startswith(k))]
    return FLOORS[max(keys, key=len)] if keys else None


def test_the_graph_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "pkg"
    for rel, text in {
        "__init__.py": "",
        "a.py": "import pkg.b\n",
        "b.py": "from pkg.sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "def f():\n    from ..d import x\n",
        "d.py": "from . import e\nfrom pkg.sub import name_in_init\n",
        "e.py": "from .a import y\nimport os\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph, _ = import_graph(pkg)
    assert {m: sorted(e) for m, e in graph.items()} == {
        "pkg": [], "pkg.a": ["pkg.b"], "pkg.b": ["pkg.sub.c"], "pkg.sub": [], "pkg.sub.c": ["pkg.d"],
        "pkg.d": ["pkg.e", "pkg.sub"], "pkg.e": ["pkg.a"]}
    (comp,) = strongly_connected(graph)
    assert comp == ["pkg.a", "pkg.b", "pkg.d", "pkg.e", "pkg.sub.c"]
    assert shortest_cycle(graph, comp) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.d", "pkg.e", "pkg.a"]


def test_floors_go_by_path_the_longest_match_winning():
    got = {rel: floor_of(PACKAGE / rel) for rel in [
        "__init__.py", "io.py", "samplers/registry.py", "teacher/model.py", "teacher/__init__.py",
        "evaluation/spec.py", "distributed/tfgan/backend.py", "teacher/train.py", "distill/loop.py",
        "app/commands/sample.py", "cli.py", "teacher/other.py"]}
    assert got == {"__init__.py": 1, "io.py": 1, "samplers/registry.py": 2, "teacher/model.py": 3,
                   "teacher/__init__.py": 3, "evaluation/spec.py": 4, "distributed/tfgan/backend.py": 5,
                   "teacher/train.py": 6, "distill/loop.py": 6, "app/commands/sample.py": 7, "cli.py": None,
                   "teacher/other.py": None}


def test_imports_have_no_cycle():
    graph, modules = import_graph(PACKAGE)
    assert len(graph) > 10 and any(graph.values()), "the import graph came out empty"
    cycles = []
    for comp in strongly_connected(graph):
        cycle = shortest_cycle(graph, comp)
        where = [f"{modules[a].relative_to(ROOT)}:{graph[a][b]}" for a, b in zip(cycle, cycle[1:])]
        cycles.append(f"{cycle} (imports at {', '.join(where)}; all in the cycle: {comp})")
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_module_imports_only_its_floor_or_lower():
    graph, modules = import_graph(PACKAGE)
    floor = {m: floor_of(p) for m, p in modules.items()}
    unplaced = sorted(str(p.relative_to(ROOT)) for m, p in modules.items() if floor[m] is None)
    violations = sorted(
        f"{modules[a].relative_to(ROOT)}:{line} (floor {floor[a]}) imports {b} (floor {floor[b]})"
        for a, edges in graph.items() for b, line in edges.items()
        if floor[a] is not None and floor[b] is not None and floor[b] > floor[a])
    problems = [f"no floor in FLOORS: {p}" for p in unplaced] + [f"imports up a floor: {v}" for v in violations]
    assert not problems, "\n".join(problems)


def test_no_source_file_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_every_source_module_has_a_test_module():
    tests = {p.name for p in TESTS.glob("test_*.py")}
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name.startswith("_"):
            continue
        names = {f"test_{path.name}", f"test_{path.parent.name}_{path.name}"}
        if not names & tests:
            missing.append(f"{path.relative_to(ROOT)} (tests/{' or tests/'.join(sorted(names))})")
    assert not missing, "source modules with no test module:\n" + "\n".join(missing)
