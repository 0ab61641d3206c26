"""`make demo` as a new user runs it: offline with random weights, and the plain stop without network."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import read_table


def test_offline_demo_publishes_a_subset_and_says_weights_random(tmp_path):
    root = tmp_path / "demo_root"
    p = subprocess.run([sys.executable, "-m", "curate.demo", "--root", str(root), "--offline"],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr[-3000:]
    card = (root / "subsets" / "demo" / "README.md").read_text()
    assert "weights: random" in card and "**weights: random**" in card
    ann = read_table(root / "subsets" / "demo" / "annotations.parquet")
    assert len(ann) > 5 and set(ann.status) == {"ok"}
    assert "Published" in p.stderr and "publish:demo" in p.stdout


def test_demo_without_weights_stops_and_says_how_to_continue(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CURATE_OFFLINE": "1", "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "curate.demo", "--root", str(tmp_path / "d")], capture_output=True,
                       text=True, timeout=600, env=env)
    assert p.returncode == 1
    assert "make demo OFFLINE=1" in p.stderr and "weights: random" in p.stderr
    assert not (tmp_path / "d" / "subsets").exists()  # no silent fallback: nothing published
