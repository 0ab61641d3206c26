"""The docs stay true: generated reference pages match the code, every hook is documented, links resolve."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import curate.hookspecs as hookspecs

REPO = Path(__file__).parents[1]
README = (REPO / "README.md").read_text()


def test_readme_starts_with_the_two_commands():
    quick = README.split("## Quick start", 1)[1][:400]
    assert "make demo" in quick and "make test" in quick


def test_readme_is_short():
    assert len(README.splitlines()) <= 200, "README.md is for a first read: move reference material to docs/"


def test_generated_reference_pages_are_up_to_date():
    """docs/cli.md, docs/airflow-params.md and docs/tables.md are regenerated from the code: a command, option,
    DAG param or table column added without `make docs` fails here."""
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_docs.py"), "--check"], capture_output=True,
                       text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr + p.stdout


def test_cli_reference_names_every_command_and_option():
    from curate.cli import command_group

    page = (REPO / "docs" / "cli.md").read_text()
    group = command_group()
    missing = [f"curate {name}" for name in group.commands if f"\n## curate {name}\n" not in page]
    missing += [f"{name} {opt}" for name, cmd in group.commands.items() for p in cmd.params for opt in p.opts
                if opt.startswith("--") and opt != "--help" and opt not in page]
    assert not missing, f"docs/cli.md lacks: {missing}"


def test_every_hook_has_a_heading_with_its_signature():
    page = (REPO / "docs" / "plugins" / "hooks.md").read_text()
    headings = set(re.findall(r"^## (\w+\(.*\))$", page, re.M))
    specs = {f"{name}{inspect.signature(fn)}" for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(fn, "curate_spec")}
    assert specs, "no hookspecs found"
    assert specs <= headings, f"hooks without a heading in docs/plugins/hooks.md: {sorted(specs - headings)}"
    assert headings <= specs, f"docs/plugins/hooks.md documents hooks that do not exist: {sorted(headings - specs)}"


def test_relative_links_resolve():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, f"broken links: {broken}"
