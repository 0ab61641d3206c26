"""The rooms talk through public names: no module imports another's underscored names or reaches into them."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "curate"


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(SRC) if path.is_relative_to(SRC) else path.name
    modules: set[str] = set()  # local names bound to curate modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("curate"):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{where}:{node.lineno} imports {node.module}.{a.name}")
                modules.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("curate"):
                    modules.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append(f"{where}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    found = [f for p in sorted(SRC.rglob("*.py")) for f in _private_uses(p)]
    assert not found, "\n".join(found)


def test_the_checker_sees_a_private_import(tmp_path):
    p = tmp_path / "probe.py"
    p.write_text("from curate.stages.embed import _hidden\nimport curate.store as st\nst._x\nfrom os import _exit\n")
    assert len(_private_uses(p)) == 2


def test_listing_commands_and_parsing_dag_glue_load_nothing_heavy():
    """`curate --help` and the DAG glue the DAG processor imports on every parse pay no pyarrow/Lance/torch import."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from curate.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "import curate.airflow.tasks, curate.airflow.params, curate.airflow.inbox, curate.pipeline, curate.store.storage\n"
            "heavy = sorted(m for m in ('pyarrow', 'lance', 'torch', 'pandas', 'numpy') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out[-500:]


def test_the_store_package_exports_what_its_modules_define():
    """curate.store loads its modules on first use: its name table, __all__ and the names importable agree."""
    import curate.store as store

    assert sorted(store.__all__) == sorted(store._WHERE)
    for name in store.__all__:
        assert getattr(store, name) is not None, name
    source = (SRC / "store" / "__init__.py").read_text()
    typed = source[source.index("if TYPE_CHECKING:"):]
    assert all(name in typed for name in store.__all__)  # type checkers see every lazy name too


# ----------------------------------------------------------------------------- the floors
#: The floors of src/curate, lowest first: the ONE place they are declared. A module may import its own floor and
#: the floors below it, never one above (a module belongs to the floor of its longest listed prefix). Only the
#: shells (the top floor) may import curate inside a function: they defer pyarrow, Lance and torch so that
#: `curate --help` and a DAG parse stay fast; everywhere else a curate import sits at the top of the module
#: (heavy third-party packages, torch above all, may still be imported lazily).
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("leaf: building blocks and the plugin registry",
     ("curate", "curate.errors", "curate.faults", "curate.progress", "curate.weights", "curate.vectors",
      "curate.optspec", "curate.samples", "curate.hookspecs", "curate.plugins", "curate.store.names")),
    ("store: the root, its tables and their shapes", ("curate.store",)),
    ("media and models: decoding, encoders, splitters, captioners",
     ("curate.media", "curate.encoders", "curate.splitters", "curate.captioners")),
    ("sets: reading embedding and captions sets", ("curate.embeddings", "curate.captions")),
    ("scorers and queries", ("curate.scorers", "curate.query")),
    ("stages", ("curate.stages",)),
    ("workers: resident loops over the stages, and the status of a root's runs", ("curate.workers", "curate.status")),
    ("shells: CLI, console, YAML runner, demo, Airflow, the built-in plugins' registrations",
     ("curate.cli", "curate.console", "curate.pipeline", "curate.demo", "curate.airflow", "curate.default_plugins")),
]
SHELLS = len(FLOORS) - 1
#: library modules whose function-level imports another branch is changing; the lead hoists them after the merge
NOT_YET_HOISTED: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> int:
    """The floor of ``module``: the one of its longest prefix in :data:`FLOORS` (a module nobody placed fails)."""
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(FLOORS) for p in prefixes
                if module == p or (p != "curate" and module.startswith(p + "."))), default=None)
    assert best is not None, f"{module} is on no floor: add it to FLOORS in tests/test_layout.py"
    return best[1]


def _imports(tree: ast.Module) -> list[tuple[int, str, bool]]:
    """(line, imported module or module.name, inside a function) of every runtime curate import (not the ones
    under ``if TYPE_CHECKING:``, which only a type checker runs)."""
    found: list[tuple[int, str, bool]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and (child.module or "").split(".")[0] == "curate" and not child.level:
                found.extend((child.lineno, f"{child.module}.{a.name}", in_function) for a in child.names)
            elif isinstance(child, ast.Import):
                found.extend((child.lineno, a.name, in_function) for a in child.names if a.name.split(".")[0] == "curate")
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return found


def _target(name: str, modules: set[str]) -> str:
    """The module an imported ``a.b.c`` comes from: the longest prefix that is a module of src/curate, with
    curate.store's lazy names resolved to the module that defines them."""
    import curate.store

    head, _, attr = name.rpartition(".")
    if head == "curate.store" and attr in curate.store._WHERE:
        return f"curate.store.{curate.store._WHERE[attr]}"
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def layering_problems(sources: dict[str, tuple[str, str]]) -> tuple[list[str], dict[str, set[str]]]:
    """What breaks the floors in ``sources`` (module -> (where, its text)): upward imports and function-level
    imports in library modules; and the import graph (module -> the modules it imports, inside functions too)."""
    problems, graph = [], {}
    for me, (where, text) in sources.items():
        graph[me] = set()
        for line, name, in_function in _imports(ast.parse(text, filename=where)):
            target = _target(name, set(sources))
            graph[me].add(target)
            mine, theirs = floor_of(me), floor_of(target)
            if theirs > mine:
                problems.append(f"{where}:{line} {me} (floor {mine}, {FLOORS[mine][0].split(':')[0]}) imports {target} "
                                f"(floor {theirs}, {FLOORS[theirs][0].split(':')[0]}): a lower floor imports a higher one")
            if in_function and mine < SHELLS and me not in NOT_YET_HOISTED:
                problems.append(f"{where}:{line} {me} imports {name} inside a function: import it at the top of the module")
    return problems, graph


def _tree() -> dict[str, tuple[str, str]]:
    return {_module_name(p): (str(p.relative_to(SRC.parent)), p.read_text()) for p in sorted(SRC.rglob("*.py"))}


def test_no_module_imports_a_higher_floor_or_curate_inside_a_function():
    problems, _ = layering_problems(_tree())
    assert not problems, "\n".join(problems)


def test_the_import_graph_has_no_circle():
    """Counting function-level imports too: a circle held together by an import inside a function is a circle."""
    import graphlib

    _, graph = layering_problems(_tree())
    for me in graph:
        graph[me].discard(me)  # a package's __init__ naming its own lazy attribute
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import circle: {' -> '.join(e.args[1])}") from None


def test_the_floor_checker_sees_an_upward_and_a_function_level_import():
    """Today's first circle edge (the store reaching up into the split stage for a table), put back."""
    tree = _tree()
    where, text = tree["curate.store.root"]
    tree["curate.store.root"] = (where, text + "\n\ndef late():\n    from curate.stages.split import split\n")
    problems, _ = layering_problems(tree)
    assert len(problems) == 2 and all("curate.store.root" in p for p in problems), problems


# ----------------------------------------------------------------------------- the length of a function
#: the most lines a function or method of src/curate may take (its decorators not counted, its docstring counted)
MOST_LINES = 80


def long_functions(path: Path, most: int = MOST_LINES) -> list[str]:
    """``where:line name (n lines)`` of every function or method in ``path`` longer than ``most`` lines."""
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path.name
    return [f"{where}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > most]


def test_no_function_is_over_80_lines():
    """A function that does five jobs is split along its own seams, so that a newcomer reads one job at a time."""
    found = [f for p in sorted(SRC.rglob("*.py")) for f in long_functions(p)]
    assert not found, "\n".join(found)


def test_the_length_checker_sees_a_long_function(tmp_path):
    p = tmp_path / "probe.py"
    p.write_text("def short():\n    pass\n\n\nclass A:\n    def long(self):\n" + "        x = 1\n" * 80)
    assert long_functions(p) == ["probe.py:6 long (81 lines)"]
