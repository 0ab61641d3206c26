"""README.md documents every CLI command and option (the test fails when one is added without docs)."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from curate.cli import app

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_documents_every_command_and_option():
    from curate.cli import _register_plugin_commands

    _register_plugin_commands()  # built-in commands added through the register_commands hook (search...)
    group = typer.main.get_command(app)
    missing = []
    for name, cmd in group.commands.items():
        if f"`curate {name}" not in README:
            missing.append(f"command {name}")
        for param in cmd.params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help" and not re.search(rf"`{re.escape(opt)}\b", README):
                    missing.append(f"{name} {opt}")
    assert not missing, f"README.md does not document: {missing}"


def test_readme_starts_with_the_two_commands():
    quick = README.split("## Quick start", 1)[1][:400]
    assert "make demo" in quick and "make test" in quick


def test_readme_documents_every_dag_param():
    from curate.airflow import tasks as ct

    airflow = README.split("## Airflow", 1)[1].split("\n## ", 1)[0]
    missing = [f"{dag} {name}" for dag, params in (("curate_pipeline", ct.pipeline_params()),
                                                   ("curate_refilter", ct.refilter_params()),
                                                   ("curate_inbox", ct.inbox_params()))
               for name in params if f"`{name}`" not in airflow]
    missing += [f"filters.{k}" for k in ct.FILTER_SCHEMA if f"`{k}`" not in airflow]
    assert not missing, f"README's Airflow section does not document: {missing}"
