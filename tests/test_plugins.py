"""Plugins: built-ins registered like third-party ones, and a real pip-installed third-party package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_table

from curate.samples import make_video

EXAMPLE = Path(__file__).parents[1] / "examples" / "curate-colorhist"


def test_listing_plugins_loads_no_model_code():
    code = ("import sys; from curate.plugins import all_components; cs = all_components(); "
            "heavy = [m for m in ('torch', 'open_clip', 'transformers', 'decord', 'cv2') if m in sys.modules]; "
            "print(len(cs), heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    n, heavy = out.split(" ", 1)
    assert int(n) >= 7 and heavy.strip() == "[]"


def test_builtins_are_registered_through_the_plugin_manager():
    from curate.plugins import get_encoders, get_scorers, get_splitters, pm

    assert {"content", "adaptive", "threshold", "none"} <= set(get_splitters())
    assert {"alignment", "technical"} <= set(get_scorers())
    clip = get_encoders()["clip"]
    assert clip.plugin == "curate.default_plugins.clip" and clip.package.startswith("curate ")
    assert pm.has_plugin("curate.default_plugins.clip")


@pytest.fixture(scope="module")
def installed_example():
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", str(EXAMPLE)]
    subprocess.run(pip, check=True, capture_output=True)
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", "curate-colorhist"], capture_output=True)


def test_pip_installed_plugin_is_listed_and_usable(installed_example, tmp_path):
    out = subprocess.run([sys.executable, "-m", "curate.cli", "plugins", "--json"], capture_output=True, text=True, check=True)
    comps = {c["name"]: c for c in json.loads(out.stdout)}
    assert comps["colorhist"]["package"] == "curate-colorhist 0.1.0" and comps["colorhist"]["kind"] == "encoder"

    video = tmp_path / "rb.mp4"
    make_video(video, [("red", 40), ("blue", 40)])
    lst = tmp_path / "l.csv"
    lst.write_text(f"url,caption\n{video},a plain red screen\n")
    root = tmp_path / "ds"
    cli = [sys.executable, "-m", "curate.cli"]
    for args in (["ingest", str(lst)], ["split", "--min-clip-s", "0.5"],
                 ["embed", "--encoder", "colorhist", "-o", "bins=4"], ["score", "--encoder", "colorhist"]):
        subprocess.run([*cli, *args, "--root", str(root)], check=True, capture_output=True)
    clips = read_table(root / "clips").sort_values("start_frame")
    scores = read_table(root / "scores").set_index("clip_id")
    red, blue = (scores.loc[c, "colorhist_sim"] for c in clips.clip_id)
    assert len(clips) == 2 and red > 0.9 and blue < 0.1  # the red shot matches "a plain red screen"


def test_splitters_follow_the_one_splitter_protocol_the_hookspec_names():
    """The splitter contract is written once, as :class:`curate.splitters.base.Splitter`: the hookspec points to it
    and the built-in splitters implement it (``(path, fps, num_frames) -> ranges``)."""
    import inspect

    from curate import hookspecs
    from curate.plugins import get_splitter
    from curate.splitters.base import Splitter

    assert "curate.splitters.base.Splitter" in hookspecs.register_splitters.__doc__
    for name in ("content", "adaptive", "threshold", "none"):
        splitter = get_splitter(name).create()
        assert isinstance(splitter, Splitter), name
        assert list(inspect.signature(splitter).parameters)[-2:] == ["fps", "num_frames"], name
