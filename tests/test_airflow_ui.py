"""`airflow standalone` on a free loopback port, the plugin page opened in headless Chromium."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import airflow_helpers as h  # first: it configures Airflow before anything imports it
import pytest

CHROMIUM = "/usr/bin/chromium"
HIST_BLUE = (0x4C, 0x78, 0xA8)  # the bar colour of curate.airflow.plugin.histogram_png


@pytest.fixture(scope="module")
def server():
    h.require(CHROMIUM)
    h.require("ffmpeg")
    h.pipeline_run()  # a root with a published subset for the pages to show
    home = h.BASE / "standalone"
    home.mkdir(exist_ok=True)
    port = h.free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",  # tasks reach the moved API here
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(h.free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(h.free_port()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # the inbox cron must not fire here
        "PATH": f"{os.path.dirname(h.PYTHON)}{os.pathsep}{os.environ.get('PATH', '')}",  # it spawns `airflow`
    }
    with open(home / "standalone.log", "wb") as log:
        proc = subprocess.Popen([os.path.join(os.path.dirname(h.PYTHON), "airflow"), "standalone"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_healthy(proc, base, home)
            yield base
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _wait_healthy(proc: subprocess.Popen, base: str, home) -> None:
    import httpx

    deadline = time.monotonic() + 150
    while True:
        if proc.poll() is not None:
            pytest.fail(f"airflow standalone exited: {(home / 'standalone.log').read_text()[-3000:]}")
        try:
            health = httpx.get(f"{base}/api/v2/monitor/health", timeout=5).json()
            if all(health.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler")):
                return
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"airflow standalone not healthy: {(home / 'standalone.log').read_text()[-3000:]}")
        time.sleep(1)


def chromium(*args: str, timeout: int = 90) -> str:
    profile = h.BASE / f"chromium-{time.monotonic_ns()}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_plugin_is_in_the_airflow_menu(server):
    import httpx

    plugins = httpx.get(f"{server}/api/v2/plugins", timeout=10).json()["plugins"]
    curate = next(p for p in plugins if p["name"] == "curate")
    assert curate["fastapi_apps"][0]["url_prefix"] == "/curate"
    assert curate["external_views"][0]["name"] == "Curation"
    # the Airflow UI (React) embeds the view: its page holds an iframe on the plugin app
    dom = chromium("--virtual-time-budget=20000", "--dump-dom", f"{server}/plugin/curation")
    assert re.search(r'<iframe[^>]*src="/curate/"', dom), dom[-2000:]


def test_histograms_render_in_chromium(server):
    import httpx
    from PIL import Image

    page = f"{server}/curate/roots/0/subsets/e2e"
    dom = chromium("--dump-dom", page)
    srcs = re.findall(r'<img src="([^"]+\.png)"', dom)
    assert "/curate/roots/0/subsets/e2e/hist/clip_sim.png" in srcs, dom[-2000:]
    for src in srcs:
        r = httpx.get(server + src, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content.startswith(b"\x89PNG\r\n\x1a\n")

    shot = h.BASE / "subset.png"
    chromium("--window-size=1200,1600", "--hide-scrollbars", f"--screenshot={shot}", page)
    img = Image.open(shot).convert("RGB")
    blue = sum(1 for p in img.getdata() if all(abs(a - b) <= 12 for a, b in zip(p, HIST_BLUE)))
    assert blue > 500, f"no histogram bars visible in the screenshot ({blue} bar-coloured pixels)"

    assert httpx.get(f"{server}/curate/roots/0/subsets/..%2F..%2F..%2Fetc", timeout=10).status_code == 404
