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
            "import curate.airflow.tasks, curate.pipeline, curate.store.storage\n"
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
