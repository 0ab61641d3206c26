"""Celery preloading of the gpu workers (curate.airflow.preload): what it imports, that it leaves CUDA alone and
that processes forked after it run torch; the cluster's --preload reaches the gpu workers only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# a preloading worker's main process, then what Airflow does per task: fork, and run the model in the child
FORKED = r"""
import json, os, sys, time
import curate.airflow.preload as p
out = {"preloaded": sorted(p.PRELOADED), "torch_imported": "torch" in sys.modules,
       "cuda_initialized": p.cuda_initialized()}
pid = os.fork()
if pid == 0:  # the task process: parallel torch work (2 threads) must not hang
    import torch
    torch.set_num_threads(2)
    x = torch.randn(384, 384)
    (x @ x).sum().item()
    torch.nn.Conv2d(3, 8, 3)(torch.randn(2, 3, 48, 48)).mean().item()
    os._exit(0)
t = time.monotonic()
while time.monotonic() - t < 60:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        out["child_exit"] = os.waitstatus_to_exitcode(status)
        break
    time.sleep(0.1)
else:
    os.kill(pid, 9)
    out["child_exit"] = "hung"
print(json.dumps(out))
"""


def _run(code: str, preload: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CURATE_CELERY_PRELOAD")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    if preload is not None:
        env["CURATE_CELERY_PRELOAD"] = preload
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_preloading_imports_torch_and_open_clip_without_cuda_and_forked_children_run_torch():
    out = _run(FORKED, "torch,open_clip")
    assert out["preloaded"] == ["open_clip", "torch"]
    assert out["torch_imported"] and not out["cuda_initialized"]
    assert out["child_exit"] == 0  # a preload that ran a parallel op would leave the child hung


def test_preloading_is_off_unless_set():
    out = _run("import json, sys\nimport curate.airflow.preload as p\n"
               "print(json.dumps({'preloaded': sorted(p.PRELOADED), 'torch': 'torch' in sys.modules}))", None)
    assert out == {"preloaded": [], "torch": False}


def test_preload_setting_names_the_modules():
    from curate.airflow.preload import DEFAULT_MODULES, modules

    assert modules("") == modules("0") == modules("off") == []
    assert modules("1") == modules("default") == list(DEFAULT_MODULES) == ["torch", "torchvision", "open_clip"]
    assert modules(" torch , transformers ") == ["torch", "transformers"]


def test_the_celery_config_is_the_providers_default_plus_the_preload_import():
    pytest.importorskip("airflow.providers.celery")
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    from curate.airflow.celery_config import CELERY_CONFIG

    assert {k: v for k, v in CELERY_CONFIG.items() if k != "imports"} == \
        {k: v for k, v in DEFAULT_CELERY_CONFIG.items() if k != "imports"}
    assert CELERY_CONFIG["imports"][-1] == "curate.airflow.preload"
    out = _run("import json, sys\nimport curate.airflow.celery_config\nprint(json.dumps('torch' in sys.modules))", "1")
    assert out is False


def test_cluster_preload_reaches_the_gpu_workers_only(tmp_path):
    from curate.airflow.localcluster import LocalCluster, arg_parser, find_binaries

    assert arg_parser().parse_args(["up", "--dir", "d", "--preload"]).preload == "1"
    assert arg_parser().parse_args(["up", "--dir", "d", "--preload", "torch"]).preload == "torch"
    assert arg_parser().parse_args(["up", "--dir", "d"]).preload is None
    if find_binaries() is None:
        pytest.skip("redis-server / PostgreSQL not installed")
    c = LocalCluster(tmp_path, dags_folder=REPO / "dags", preload="torch,open_clip")
    gpu, default = c.worker_env("gpu1", "gpu"), c.worker_env("default", "default")
    assert gpu["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] == "curate.airflow.celery_config.CELERY_CONFIG"
    assert gpu["CURATE_CELERY_PRELOAD"] == "torch,open_clip" and gpu["CURATE_WORKER_NAME"] == "gpu1"
    assert "CURATE_CELERY_PRELOAD" not in default and "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS" not in default
    plain = LocalCluster(tmp_path / "plain", dags_folder=REPO / "dags").worker_env("gpu1", "gpu")
    assert plain == {"CURATE_WORKER_NAME": "gpu1"}
