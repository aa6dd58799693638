"""The import graph of ``sgq_bench/``: no cycles, and no edge running up the layers of the data flow.

Why a test: a cycle (``report.tables`` importing ``report.figures`` importing ``report.tables``) or an
upward edge (``train`` importing ``evaluate``) makes modules impossible to read, test or reuse alone,
and creeps back in unnoticed. Every import counts, including those inside functions: a late import
hides a dependency from the import machinery, not from the design. So do imports under
``if TYPE_CHECKING:``: a type named in a signature is a dependency of the reader.

The rule, kept simple: each module belongs to one layer of ``LAYERS`` (first matching pattern); a
module may import modules of its own layer or of layers listed before it, never after, and the graph
has no cycle at all (within a layer too). The root package ``sgq_bench`` (the public API) depends on
every module named in its lazy ``_EXPORTS`` table, although it imports them only on first use.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sgq_bench"
ROOT = "sgq_bench"

# Bottom to top. Patterns are module names without the "sgq_bench." prefix ("" is the root package).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("infrastructure", ("errors", "_[!_]*", "results")),        # private helpers, plugin base classes, row schema
    ("config", ("config", "config.*")),                         # suites, recipes, methods
    ("specs", ("specs",)),                                      # TrainSpec, Cell, ExecContext, Task
    ("pieces", ("data", "models", "explainers", "deploy", "checkpoints", "builtin", "builtin.*")),
    ("train", ("train", "weights")),                          # the loop and cache; models from files
    ("metrics", ("metrics", "metrics.*")),                      # some schedule tasks of their own (ROAR)
    ("evaluate", ("evaluate",)),
    ("report", ("report", "report.*")),
    ("run", ("orchestration", "orchestration.cells", "orchestration.rundir", "orchestration.costs",
             "orchestration.graph", "orchestration.executors", "orchestration.driver", "orchestration.runner")),
    ("views", ("orchestration.calibration", "orchestration.plan", "orchestration.status")),  # run nothing
    ("leaderboard", ("leaderboard",)),
    ("site", ("site",)),                                        # the results page: over reports and boards
    ("bench", ("bench", "bench.*")),                            # reference adapters, timing benches
    ("api", ("",)),                                             # sgq_bench/__init__: the public API
    ("cli", ("cli", "cli.*", "__main__")),
]


# Source folders installed under another name (pyproject's package-dir): baselines/ is sgq_bench.builtin.
MAPPED = {"sgq_bench.builtin": PACKAGE.parent / "baselines"}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (mapped folders included)."""
    out = {}
    roots = [(ROOT, PACKAGE), *MAPPED.items()]
    for name, folder in roots:
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = (*name.split("."), *path.relative_to(folder).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an imported name lives in (``sgq_bench.a.b.func`` -> ``sgq_bench.a.b``)."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name if name in modules else None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``module`` imports anywhere in its file (function bodies included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import func` the module.
            names.update(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                         for alias in node.names)
    if module == ROOT:  # the lazy public API: {"Name": "sgq_bench.module", ...}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
                names.update(v.value for v in node.value.values if isinstance(v, ast.Constant))
    found = {_resolve(n, modules) for n in names if n == ROOT or n.startswith(ROOT + ".")}
    return {m for m in found if m is not None and m != module}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def layer_of(module: str) -> int:
    short = "" if module == ROOT else module.removeprefix(ROOT + ".")
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(short, p) for p in patterns):
            return i
    raise AssertionError(f"module {module} belongs to no layer; add it to LAYERS in {Path(__file__).name}")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                components.append(_cycle_path(sorted(comp), graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _cycle_path(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle through the component's first module: a -> b -> ... -> a (breadth-first)."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def test_the_graph_is_read_from_every_module() -> None:
    graph = import_graph()
    assert f"{ROOT}.train" in graph and f"{ROOT}.config.suite" in graph
    assert f"{ROOT}.config.suite" in graph[f"{ROOT}.train"]  # a module-level import
    assert f"{ROOT}.orchestration.runner" in graph[ROOT]  # through the lazy _EXPORTS table


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    shown = "\n".join(" -> ".join(m.removeprefix(ROOT + ".") for m in c) for c in cycles)
    assert not cycles, f"import cycles in sgq_bench/:\n{shown}"


def test_no_edge_runs_up_the_layers() -> None:
    graph = import_graph()
    upward = sorted(
        f"{m.removeprefix(ROOT + '.')} ({LAYERS[layer_of(m)][0]}) imports {d.removeprefix(ROOT + '.')} "
        f"({LAYERS[layer_of(d)][0]})"
        for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)
    )
    assert not upward, "imports running up the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b"}, "b": set(), "c": {"d"}, "d": {"c"}}, [["c", "d", "c"]]),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, []),
])
def test_cycle_finder(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert find_cycles(graph) == expected


def test_function_level_imports_count(tmp_path: Path) -> None:
    pkg = tmp_path / "sgq_bench"
    (pkg / "report").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "report" / "__init__.py").write_text("")
    (pkg / "report" / "tables.py").write_text("def f():\n    from sgq_bench.report.figures import g\n")
    (pkg / "report" / "figures.py").write_text("from .tables import f\n")
    modules = {"sgq_bench": pkg / "__init__.py", "sgq_bench.report": pkg / "report" / "__init__.py",
               "sgq_bench.report.tables": pkg / "report" / "tables.py",
               "sgq_bench.report.figures": pkg / "report" / "figures.py"}
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    assert graph["sgq_bench.report.tables"] == {"sgq_bench.report.figures"}
    assert graph["sgq_bench.report.figures"] == {"sgq_bench.report.tables"}
    assert find_cycles(graph) == [["sgq_bench.report.figures", "sgq_bench.report.tables",
                                   "sgq_bench.report.figures"]]


def test_the_orchestration_imports_no_metric() -> None:
    """The task graph, executors, plan and status dispatch on ``Task`` objects: a metric (built-in or a
    plugin's) schedules work through ``Metric.tasks()``, never by being known to the run by name."""
    graph = import_graph()
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items() if m.startswith(f"{ROOT}.orchestration")
                 for d in deps if d == f"{ROOT}.metrics" or d.startswith(f"{ROOT}.metrics."))
    assert not bad, "\n".join(bad)


VALUE_PARAMS = {"spec": "TrainSpec", "learner": "TrainSpec", "model_spec": "TrainSpec", "cell": "Cell",
                "task": "Task", "node": "Node", "ctx": None}


def test_value_objects_are_typed_in_signatures() -> None:
    """A parameter named ``spec``, ``cell``, ``task``, ``node`` or ``ctx`` is never typed ``Any``: a reader
    (or a parameter walk) must not lose what it is."""
    untyped = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                if arg.arg in VALUE_PARAMS and arg.annotation is not None and ast.unparse(arg.annotation) == "Any":
                    untyped.append(f"{module}.{node.name}({arg.arg}: Any)")
    assert not untyped, "value objects typed as Any:\n" + "\n".join(sorted(untyped))
