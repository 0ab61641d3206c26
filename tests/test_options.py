"""Every stage option is declared once (curate.stages.options); the CLI, `curate run` and the DAG params follow it.

The walk a newcomer would take, for ``min_sim``: from ``curate filter --min-sim``, from a ``filter:`` section of
a YAML config and from the ``min_sim`` param of ``curate_refilter`` to the rule that applies it. Then the same
walk with a changed declaration (default, help, minimum): every shell must follow, which fails if one of
them declares the option again.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import json
from dataclasses import replace
from pathlib import Path

import airflow_helpers  # noqa: F401  (first: it points Airflow at a throw-away home before anything imports it)
import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from curate.errors import CurateError
from curate.stages import options
from curate.store import Root

REPO = Path(__file__).resolve().parents[1]
SIMS = [0.1, 0.2, 0.3, 0.4, 0.5, None]


@pytest.fixture
def scored(tmp_path):
    """A root with only a scores table: one alignment column (clip_sim), one null."""
    root = Root(tmp_path / "root")
    root.scores.rewrite(pa.table({"clip_id": [f"c{i}" for i in range(len(SIMS))], "source_id": ["a"] * len(SIMS),
                                  "duration_s": [2.0] * len(SIMS), "clip_sim": SIMS}))
    return root


def kept_with(value):
    return sum(1 for s in SIMS if s is not None and s >= value)


def min_sim_rule(summary: dict) -> dict | None:
    rules = [r for r in summary["rules"] if r["name"] == "min_sim"]
    return rules[0] if rules else None


# ----------------------------------------------------------------------------- the three shells
def cli_filter(root: Root, subset: str, *args: str, check: bool = True):
    import curate.cli

    r = CliRunner().invoke(curate.cli.app, ["filter", "--root", str(root.path), "--subset", subset, *args, "--json"],
                           env={"COLUMNS": "250", "NO_COLOR": "1"})
    if not check:
        return r
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def yaml_filter(root: Root, tmp_path: Path, section: dict) -> dict:
    from curate.pipeline import load_config, run_config

    path = tmp_path / f"{section['subset']}.yaml"
    path.write_text(yaml.safe_dump({"root": str(root.path), "filter": section}))
    (result,) = run_config(load_config(path))
    return result.as_dict()


def refilter_dag():
    """dags/curate_refilter.py, imported afresh (its params are built when the file is parsed)."""
    spec = importlib.util.spec_from_file_location("curate_refilter_under_test", REPO / "dags" / "curate_refilter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.curate_refilter()


def dag_filter(root: Root, conf: dict) -> dict:
    """What a triggered curate_refilter run does: validate the conf against the DAG's params, then its
    ``filter`` task."""
    dag = refilter_dag()
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return dag.get_task("filter").python_callable(str(root.path), params=params.validate())


# ----------------------------------------------------------------------------- tests
def test_min_sim_reaches_the_rule_the_same_way_from_every_shell(scored, tmp_path):
    via_cli = cli_filter(scored, "cli", "--min-sim", "0.3")
    via_yaml = yaml_filter(scored, tmp_path, {"subset": "yaml", "min_sim": "3e-1"})  # YAML reads 3e-1 as a string
    via_dag = dag_filter(scored, {"subset": "dag", "min_sim": 0.3})
    rule = {"name": "min_sim", "column": "clip_sim", "op": ">=", "value": 0.3, "kind": "threshold", "extra": {}}
    for s in (via_cli, via_yaml, via_dag):
        assert min_sim_rule(s) == rule
        assert s["stage"] == "filter" and s["kept"] == s["ok"] == kept_with(0.3) and s["total"] == len(SIMS)
        assert s["dropped_by_rule"] == {"min_sim": len(SIMS) - kept_with(0.3)}
    # one default everywhere: no similarity rule unless asked for
    assert min_sim_rule(cli_filter(scored, "cli0")) is None
    assert min_sim_rule(yaml_filter(scored, tmp_path, {"subset": "yaml0", "min_duration": 1})) is None
    assert min_sim_rule(dag_filter(scored, {"subset": "dag0"})) is None


def test_every_shell_follows_a_changed_declaration(scored, tmp_path, monkeypatch):
    import curate.cli
    from curate.airflow import params as cp

    old = options.option("filter", "min_sim")
    new = replace(old, default=0.25, help="Keep clips whose alignment is at least this (as declared).", minimum=0.15)
    monkeypatch.setitem(options.STAGES, "filter", tuple(new if o.name == "min_sim" else o
                                                        for o in options.STAGES["filter"]))
    importlib.reload(curate.cli)  # the commands are built from the declarations when the module is imported
    try:
        help_text = CliRunner().invoke(curate.cli.app, ["filter", "--help"], env={"COLUMNS": "250"}).stdout
        assert new.help in help_text and old.help not in help_text
        assert min_sim_rule(cli_filter(scored, "cli"))["value"] == 0.25
        r = cli_filter(scored, "low", "--min-sim", "0.1", check=False)
        assert r.exit_code == 2 and "--min-sim: must be >= 0.15" in r.output

        assert min_sim_rule(yaml_filter(scored, tmp_path, {"subset": "yaml"}))["value"] == 0.25
        with pytest.raises(CurateError, match=r"filter\.min_sim: must be >= 0.15"):
            yaml_filter(scored, tmp_path, {"subset": "yamllow", "min_sim": 0.1})

        for params in (cp.pipeline_params(), cp.refilter_params()):
            assert params["min_sim"].value == 0.25 and new.help in params["min_sim"].description
            assert params["min_sim"].schema["minimum"] == 0.15
        assert min_sim_rule(dag_filter(scored, {"subset": "dag"}))["value"] == 0.25
        with pytest.raises(Exception, match="min_sim"):
            dag_filter(scored, {"subset": "daglow", "min_sim": 0.1})
    finally:
        monkeypatch.undo()
        importlib.reload(curate.cli)
    assert options.option("filter", "min_sim") == old


def test_threshold_rules_come_from_their_declarations():
    from curate.stages.filter import THRESHOLDS

    declared = {o.name: (o.column, o.op) for o in options.STAGES["filter"] if o.column}
    assert THRESHOLDS == declared and THRESHOLDS["min_sim"] == ("{sim}", ">=")
    assert THRESHOLDS["max_dup_sim"] == ("dup_sim", "<")


def test_declared_defaults_are_the_stage_functions_defaults():
    """Python callers of the stage functions get what the shells pass (the shells pass the declared ones)."""
    from curate.stages import caption, dedup, embed, features, filter, ingest, process, publish, score, split

    functions = {"ingest": ingest.ingest, "split": split.split, "process": process.process, "dedup": dedup.dedup,
                 "caption": caption.caption, "embed": embed.embed, "score": score.score,
                 "filter": filter.filter_clips, "publish": publish.publish, "features": features.features}
    # positional in the function, a default only in `curate run` / the DAG; "source" is what None means
    different = {("filter", "subset"): "default", ("publish", "subset"): None, ("embed", "caption"): "source"}
    assert set(functions) == set(options.STAGES)
    for stage, opts in options.STAGES.items():
        sig = inspect.signature(functions[stage])
        for o in opts:
            if o.into:  # --threshold: a key of the detector options
                assert o.into in sig.parameters
                continue
            if (stage, o.name) in different:
                assert o.default == different[stage, o.name]
                continue
            p = sig.parameters.get(o.name)
            if p is None:  # filter_clips(**thresholds)
                assert o.column and o.default is None, (stage, o.name)
                continue
            d = tuple(o.default) if isinstance(o.default, list) else o.default
            assert p.default == d, (stage, o.name, p.default, o.default)


def test_yaml_sections_come_from_the_declarations(tmp_path):
    from curate.pipeline import SECTIONS, load_config

    assert list(SECTIONS) == ["ingest", "split", "process", "caption", "embed", "score", "filter", "publish"]
    assert SECTIONS["filter"] == {o.name for o in options.STAGES["filter"]}
    assert "threshold" in SECTIONS["split"] and "detector_options" in SECTIONS["process"]

    def load(cfg):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"root": "r", **cfg}))
        return load_config(path)

    cfg = load({"ingest": {"max_filesize": "500M", "workers": "3"}, "split": {"threshold": 30, "min_clip_s": 1},
                "filter": {"where": "clip_sim > 0.2"}})
    assert cfg["ingest"] == {"max_filesize": 500 << 20, "workers": 3}
    assert cfg["split"] == {"options": {"threshold": 30.0}, "min_clip_s": 1.0}  # --threshold is a detector option
    assert cfg["filter"] == {"where": "clip_sim > 0.2"}
    with pytest.raises(CurateError, match=r"unknown keys in filter: \['min_simm'\] \(known: .*'min_sim'"):
        load({"filter": {"min_simm": 0.2}})
    with pytest.raises(CurateError, match=r"c\.yaml: publish\.shard_size: expected an integer, got 'many'"):
        load({"publish": {"shard_size": "many"}})
    with pytest.raises(CurateError, match=r"filter\.top_percent: must be > 0"):
        load({"filter": {"top_percent": 0}})
    with pytest.raises(CurateError, match=r"publish\.cut: not one of accurate, copy"):
        load({"publish": {"cut": "fast"}})
    with pytest.raises(CurateError, match="give it or a 'split' section, not both"):
        load({"split": {}, "process": {}})
    with pytest.raises(CurateError, match="must be a mapping"):
        load({"score": [{}]})


def test_dag_params_are_the_declarations():
    from curate.airflow import params
    from curate.store import NAME_PATTERN

    assert params.NAME_PATTERN is NAME_PATTERN
    p = params.pipeline_params()
    assert p["min_sim"].value is None and p["min_sim"].schema["type"] == ["null", "number"]
    assert p["embed_batch_size"].value == options.option("embed", "batch_size").default
    assert p["embed_batch_size"].schema["maximum"] == options.option("embed", "batch_size").maximum
    assert p["subset"].schema["pattern"] == NAME_PATTERN and p["scorers"].value == ["technical", "alignment"]
    assert set(p["detector"].schema["enum"]) == set(options.SPLITTERS)
    presets = sorted(x.stem for x in (REPO / "configs" / "presets").glob("*.yaml"))
    assert params.FILTER_SCHEMA["preset"]["enum"] == presets == options.preset_names()
    rules = set(options.stage_options("filter")) - {"subset", "encoder", "caption", *params.FILTER_PARAMS}
    assert set(params.FILTER_SCHEMA) == rules
    assert params.refilter_params()["subset"].value == "refiltered"


def test_a_process_section_runs_split_and_embed_in_one_decode(tmp_path, source_list, tiny_clip):
    from curate.pipeline import load_config, run_config

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"root": "ds", "sources": str(source_list),
                                    "process": {"encoder": "clip", "options": tiny_clip, "device": "cpu",
                                                "detector": "content", "threshold": 27, "min_clip_s": 0.5,
                                                "max_clip_s": 3.0}}))
    results = run_config(load_config(path))
    assert [r.stage for r in results] == ["ingest", "process"]
    assert results[1].ok > 0, results[1].errors
    root = Root(tmp_path / "ds")
    assert root.embedding_meta("clip")["options"]["decoder"] == "ffmpeg"
    clips = root.clips.read(columns=["clip_id", "status"])
    ok = set(clips[clips.status == "ok"].clip_id)
    emb = root.embeddings("clip").read(columns=["clip_id", "status"])
    assert ok and set(emb[emb.status == "ok"].clip_id) == ok
