"""Shared setup of the Airflow tests (imported by test_dags / test_airflow_plugin / test_airflow_ui).

Importing this module points Airflow at a throw-away AIRFLOW_HOME (SQLite, the repo's dags/), so it
must be imported before anything imports airflow. Expensive things (``airflow db migrate``, sample
videos, a tiny open_clip checkpoint, one end-to-end pipeline run) are built once per test session and
cached here, so every test file can use them without running them twice.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BASE = Path(tempfile.mkdtemp(prefix="curate-airflow-tests-"))
atexit.register(shutil.rmtree, BASE, ignore_errors=True)
HOME = BASE / "airflow_home"
INPUTS = BASE / "inputs"
MODELS = BASE / "models"
ROOTS = BASE / "roots"
for _d in (HOME, INPUTS, MODELS, ROOTS):
    _d.mkdir(parents=True, exist_ok=True)

if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != str(HOME):
    raise RuntimeError("airflow was imported before tests/airflow_helpers.py could configure it")

def _entry_point_registered() -> bool:
    """Is curate's ``airflow.plugins`` entry point installed (pip install -e .)? Then the plugin loads from
    it, and loading plugins/curate_plugin.py as well would register it twice."""
    from importlib.metadata import entry_points

    return any(ep.value == "curate.airflow.plugin:CuratePlugin" for ep in entry_points(group="airflow.plugins"))


PLUGINS = BASE / "plugins" if _entry_point_registered() else REPO / "plugins"
PLUGINS.mkdir(exist_ok=True)

ENV = {
    "AIRFLOW_HOME": str(HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME}/airflow.db",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    "CURATE_ROOTS": os.pathsep.join(str(ROOTS / n) for n in ("main", "inbox", "other", "onepass", "captioned",
                                                                 "dedup")),
    "CURATE_ALLOWED_DIRS": f"{INPUTS}{os.pathsep}{MODELS}",
    "CURATE_INBOX_SETTLE_S": "0",
    "CURATE_GPU_SLOTS": "2",
    "CURATE_SLOT_IDLE_S": "2",  # dag.test runs one task at a time: a slot run before any split gives way at once
}
os.environ.update(ENV)
for _k in ("CURATE_GPU_QUEUE", "CURATE_GPU_POOL", "CURATE_GPU_POOL_SLOTS", "CURATE_ROOT", "CURATE_REFILTER_ON",
           "CURATE_INBOX_SCHEDULE", "CURATE_INBOX_ROOT"):
    os.environ.pop(_k, None)

#: a small open_clip architecture (fast on CPU); registered through the clip encoder's model_config option
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


@functools.cache
def migrate() -> None:
    subprocess.run([PYTHON, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ)


@functools.cache
def tiny_clip() -> dict[str, str]:
    """encoder_options for the tiny local checkpoint: model_config=<json>, weights=<state dict>."""
    import open_clip
    import torch

    cfg = MODELS / "curate-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    weights = MODELS / "curate-tiny-clip.pt"
    torch.save(open_clip.create_model(cfg.stem).state_dict(), weights)
    return {"model_config": str(cfg), "weights": str(weights), "frames": "2"}


def write_list(path: Path, rows: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["url", "caption"])
        w.writeheader()
        w.writerows(rows)
    return path


@functools.cache
def videos() -> list[Path]:
    from curate.samples import make_video

    out = []
    for name, shots in {"a": [("testsrc2", 20), ("mandelbrot", 20)], "b": [("smptebars", 20), ("red", 16)]}.items():
        p = INPUTS / f"{name}.mp4"
        make_video(p, shots, fps=10, size=(96, 64))
        out.append(p)
    return out


@functools.cache
def source_list() -> Path:
    """Five sources in batches of 2: two good videos, a missing file and two paths outside the allowed
    directories. The last batch holds only a refused path (it must fail, and the run must go on)."""
    a, b = videos()
    return write_list(INPUTS / "sources.csv", [
        {"url": str(a), "caption": "a colorful test pattern and a fractal"},
        {"url": str(INPUTS / "missing.mp4"), "caption": "missing"},
        {"url": str(b), "caption": "television color bars then red"},
        {"url": "/etc/hostname", "caption": "outside the allowed directories"},
        {"url": "/etc/passwd", "caption": "outside the allowed directories"},
    ])


def pipeline_conf(root: Path, subset: str = "e2e", **kw) -> dict:
    return {"sources": str(source_list()), "root": str(root), "subset": subset, "encoder": "clip",
            "encoder_options": tiny_clip(), "embed_batch_size": 8, "min_sim": -1.0, "min_duration": 0.5,
            "min_clip_s": 0.5, "max_clip_s": 3.0, "batch_size": 2, "shard_size": 2, **kw}


def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def run_dag(dag_id: str, conf: dict):
    """``dag.test(run_conf=conf)``; returns (state, run_id)."""
    migrate()
    dag = dagbag().get_dag(dag_id)
    dr = dag.test(run_conf=conf)
    return str(dr.state), dr.run_id


@functools.cache
def pipeline_run() -> dict:
    """One end-to-end curate_pipeline run (shared by the DAG, plugin and UI tests)."""
    root = ROOTS / "main"
    state, run_id = run_dag("curate_pipeline", pipeline_conf(root))
    return {"state": state, "run_id": run_id, "root": root, "subset": "e2e"}


def task_instances(dag_id: str, run_id: str) -> list[tuple[str, int, str | None, str]]:
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = s.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id).all()
        return sorted((t.task_id, t.map_index, t.rendered_map_index, str(t.state)) for t in rows)


def xcom_values(dag_id: str, run_id: str, task_id: str) -> list:
    """The return values of a task (one per mapped instance, in map index order)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = s.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id, key="return_value").all()
        return [XComModel.deserialize_value(r) for r in sorted(rows, key=lambda r: r.map_index)]


def asset_events(uri: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = (s.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .filter(AssetModel.uri == uri).order_by(AssetEvent.id).all())
        return [{"extra": dict(e.extra or {}), "source_dag_id": e.source_dag_id, "source_run_id": e.source_run_id}
                for e in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(binary: str) -> str:
    path = shutil.which(binary) or (binary if Path(binary).exists() else None)
    if not path:
        pytest.skip(f"{binary} is not installed")
    return path
