#!/usr/bin/env bash
# Installs the system packages curate needs when they are missing: ffmpeg (ffprobe) always,
# chromium for the browser test of the Airflow UI page, a font (fonts-dejavu-core) for the
# subtitle test's drawtext, redis-server and postgresql for the
# CeleryExecutor cluster (its test and scripts/cluster.sh start both on 127.0.0.1 themselves;
# CURATE_SKIP_CLUSTER=1 skips them). Uses sudo only when not root.
set -euo pipefail
need=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
if [ "${CURATE_SKIP_CHROMIUM:-0}" != 1 ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
# a font for ffmpeg's drawtext (the burned-in subtitle test of the OCR scorer)
ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1 || need+=(fonts-dejavu-core)
if [ "${CURATE_SKIP_CLUSTER:-0}" != 1 ]; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  { command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || need+=(postgresql)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "curate: please install ${need[*]} with your system's package manager" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
echo "curate: installing ${need[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
