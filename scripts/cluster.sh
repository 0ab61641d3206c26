#!/usr/bin/env bash
# A local Airflow CeleryExecutor cluster for curate: PostgreSQL + Redis on 127.0.0.1 (throw-away data
# dirs), scheduler, dag-processor, API server (UI), one Celery worker on the default queue and N on the
# gpu queue. What tests/test_cluster.py runs the pipeline on. Ctrl-C stops it all.
#
#   scripts/cluster.sh --dir /tmp/curate-cluster [--gpu-workers 2] [--cuda] [--port 8080] [--heartbeat-timeout 60]
#                      [--preload [MODULES]]   # gpu workers import torch, torchvision, open_clip before forking (docs/cluster.md)
#   source /tmp/curate-cluster/cluster.env    # then `airflow dags trigger curate_pipeline --conf ...`
#
# Needs redis-server and PostgreSQL (scripts/system-deps.sh) and curate[airflow,cluster]. Set
# CURATE_ROOTS / CURATE_ALLOWED_DIRS (and any other CURATE_* setting) before starting it: every
# component inherits the environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3)}"
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m curate.airflow.localcluster up --dags "$here/dags" "$@"
