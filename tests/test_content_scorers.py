"""Content filters with real models, offline: on-screen text (PP-OCR via rapidocr), NSFW (NudeNet's shipped
detector) and model-free visual quality, on ffmpeg-made clips whose content is known."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import curate, read_table

from curate.stages.ingest import ingest
from curate.stages.score import score
from curate.stages.split import split
from curate.store import Root

SIZE = "640x360"
FRAMES = 40  # 1.6 s at 25 fps: one clip per video
WORDS = ["HELLO", "CURATE", "WORLD"]


def font_file() -> str | None:
    """A TrueType font for ffmpeg drawtext: fontconfig's sans, else the DejaVu files Debian ships."""
    try:
        p = subprocess.run(["fc-match", "-f", "%{file}", "sans"], capture_output=True, text=True, timeout=10).stdout
        if p and Path(p).is_file():
            return p
    except (OSError, subprocess.TimeoutExpired):
        pass
    for p in ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"]:
        if Path(p).is_file():
            return p
    return None


def lavfi(path: Path, src: str, vf: str | None = None) -> Path:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"{src}{':' if '=' in src else '='}size={SIZE}:rate=25"]
    if vf:
        cmd += ["-vf", vf]
    cmd += ["-frames:v", str(FRAMES), "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
            str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def content_root(tmp_path_factory) -> Path:
    """One clip per video: burned-in subtitles, the same footage clean, blurred, black, frozen, letterboxed,
    and a source whose file is destroyed after splitting (it cannot decode)."""
    font = font_file()
    if font is None:
        pytest.skip("no TrueType font on this machine for ffmpeg drawtext (install fonts-dejavu-core)")
    d = tmp_path_factory.mktemp("content")
    text = " ".join(WORDS)
    videos = {
        "subs": lavfi(d / "subs.mp4", "mandelbrot",
                      f"drawtext=fontfile={font}:text='{text}':fontsize=30:fontcolor=white:borderw=2:"
                      "x=(w-tw)/2:y=h-th-24"),
        "clean": lavfi(d / "clean.mp4", "mandelbrot"),
        "blur": lavfi(d / "blur.mp4", "mandelbrot", "gblur=sigma=6"),
        "black": lavfi(d / "black.mp4", "color=c=black"),
        "frozen": lavfi(d / "frozen.mp4", "mandelbrot", "trim=end_frame=1,loop=loop=-1:size=1"),
        "letterbox": lavfi(d / "letterbox.mp4", "mandelbrot", "crop=640:270,pad=640:360:0:45:black"),
        "broken": lavfi(d / "broken.mp4", "mandelbrot"),
    }
    lst = d / "sources.csv"
    lst.write_text("url,caption\n" + "".join(f"{p},{name}\n" for name, p in videos.items()))
    r = d / "ds"
    ingest(r, lst)
    split(r, min_clip_s=0.5)
    src = read_table(r / "sources")
    broken = src[src.url.str.endswith("broken.mp4")].media_path.iloc[0]
    (r / broken).write_bytes(b"\x00not a video any more" * 100)
    return r


@pytest.fixture(scope="module")
def scored(content_root) -> pd.DataFrame:
    r = score(content_root, scorers=["technical", "text", "nsfw", "quality"], options={"text": {"recognize": "true"}})
    assert r.error == 1  # the destroyed source only
    s = read_table(content_root / "scores")
    src = read_table(content_root / "sources")[["source_id", "url"]]
    s = s.merge(src, on="source_id")
    s["name"] = s.url.map(lambda u: Path(u).stem)
    return s.set_index("name")


def test_one_clip_per_video(scored):
    assert sorted(scored.index) == sorted(["subs", "clean", "blur", "black", "frozen", "letterbox", "broken"])


def test_burned_in_subtitles_score_a_text_area_and_their_words_are_recognised(scored):
    subs, clean = scored.loc["subs"], scored.loc["clean"]
    assert subs.text_area > 0.02 and subs.text_area > 20 * max(clean.text_area, 1e-4)
    assert subs.text_boxes >= 1 and clean.text_boxes == 0
    assert 0 < subs.text_area_mean <= subs.text_area
    recognised = subs.ocr_text.upper().replace(" ", "")
    assert all(w in recognised for w in WORDS), subs.ocr_text
    assert clean.ocr_text == ""


def test_blur_black_frozen_and_bars_score_as_such(scored):
    clean, blur, black, frozen, lb = (scored.loc[n] for n in ["clean", "blur", "black", "frozen", "letterbox"])
    assert blur.sharpness < 0.2 * clean.sharpness
    assert black.black_frac == 1.0 and clean.black_frac == 0.0 and black.brightness < 0.05
    assert black.contrast < 0.01 < clean.contrast
    assert frozen.frozen_frac == 1.0 and clean.frozen_frac == 0.0
    assert lb.letterbox == pytest.approx(90 / 360, abs=0.03) and lb.pillarbox == 0.0
    assert clean.letterbox == 0.0 and clean.pillarbox == 0.0
    for n in ["clean", "blur", "frozen", "letterbox", "subs"]:
        assert 0.0 <= scored.loc[n].brightness <= 1.0 and scored.loc[n].black_frac == 0.0


def test_nsfw_model_loads_from_the_wheel_and_scores_ordinary_footage_low(scored):
    from curate.scorers.nsfw import UNSAFE, NsfwScorer

    s = NsfwScorer()
    s.load()
    assert set(UNSAFE) <= set(s.labels) and s.size == 320
    ok = scored.drop(index="broken")
    assert ok.nsfw.notna().all() and (ok.nsfw < 0.2).all(), ok.nsfw.to_dict()
    assert (ok.nsfw_classes == "").all()


def test_nsfw_detector_as_curate_runs_it_finds_a_face_in_a_portrait():
    """The shipped detector is really running, with the right input: its (safe) FACE_FEMALE class fires on
    matplotlib's Grace Hopper portrait, while the unsafe score stays low."""
    import cv2
    import matplotlib

    from curate.scorers.nsfw import NsfwScorer
    from curate.scorers.pixels import size_for_long_side

    p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not p.exists():
        pytest.skip("matplotlib's sample data is not installed")
    rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
    s = NsfwScorer()
    s.load()
    w, h = s.decode_size(rgb.shape[1], rgb.shape[0])
    assert (w, h) == size_for_long_side(rgb.shape[1], rgb.shape[0], 320)
    x = s.preprocess(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)[None])
    scores = s.class_scores(x)
    assert scores[0, s.labels.index("FACE_FEMALE")] > 0.6
    row = s.clip_row(scores)
    assert row["nsfw"] < 0.1 and row["nsfw_classes"] == ""


def test_a_clip_that_fails_to_decode_is_an_error_row_and_the_rest_is_scored(scored):
    b = scored.loc["broken"]
    for col in ["text_area", "nsfw", "sharpness", "ocr_text"]:
        assert pd.isna(b[col])
    for col in ["text_area_error", "nsfw_error", "sharpness_error", "ocr_text_error"]:
        assert str(b[col]).startswith("decode:"), b[col]
    ok = scored.drop(index="broken")
    assert ok.text_area.notna().all() and ok.sharpness.notna().all() and ok.nsfw.notna().all()
    assert ok.text_area_error.isna().all() and ok.nsfw_error.isna().all() and ok.sharpness_error.isna().all()


def test_rerun_scores_nothing_new_and_any_subset_can_be_scored(content_root, scored, monkeypatch):
    from curate.scorers.quality import QualityScorer

    seen = []
    real = QualityScorer.compute

    def spy(self, root, clip_ids):
        seen.append(len(clip_ids))
        return real(self, root, clip_ids)

    monkeypatch.setattr(QualityScorer, "compute", spy)
    before = read_table(content_root / "scores").sort_values("clip_id").reset_index(drop=True)
    score(content_root, scorers=["quality"])
    assert seen == [0]  # every clip has a value or an error: nothing is decoded again
    after = read_table(content_root / "scores").sort_values("clip_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)
    # a subset of the clips, as a per-batch task would ask: the same values
    one = scored.loc["blur"].clip_id
    t = QualityScorer().compute(Root(content_root), pa.array([one]))
    assert t.num_rows == 1 and t["sharpness"][0].as_py() == pytest.approx(scored.loc["blur"].sharpness)


def test_filter_on_the_new_columns_through_the_cli(content_root, scored):
    p = curate("filter", "--root", content_root, "--subset", "clean", "--max-text-area", "0.01", "--max-nsfw", "0.5",
               "--max-black-frac", "0.5", "--max-frozen-frac", "0.5", "--min-sharpness",
               str(scored.loc["blur"].sharpness * 2), "--max-letterbox", "0.1", "--json")
    s = json.loads(p.stdout)
    kept = read_table(content_root / "subsets" / "clean" / "selection.parquet")
    names = {Path(u).stem for u in scored.set_index("clip_id").loc[kept.clip_id, "url"]}
    assert names == {"clean"}
    assert s["dropped_by_rule"]["max_text_area"] == 2  # subs, and broken (no score fails its rule)
    assert s["dropped_by_rule"]["max_black_frac"] == 2 and s["dropped_by_rule"]["max_frozen_frac"] == 3
    assert "ocr_text" in kept.columns and "nsfw_classes" in kept.columns
    p = curate("filter", "--root", content_root, "--subset", "w", "--where", "text_boxes == 0 and sharpness >= 0",
               "--json")
    assert json.loads(p.stdout)["kept"] == 5  # all but subs and broken
    p = curate("filter", "--root", content_root, "--subset", "preset", "--preset", "clean-content", "--json")
    s = json.loads(p.stdout)
    assert {r["name"] for r in s["rules"]} >= {"max_text_area", "max_nsfw", "max_black_frac", "max_frozen_frac"}
    assert 0 < s["kept"] < s["total"]


def test_plugins_list_the_content_scorers_with_their_options():
    p = curate("plugins", "--json")
    data = json.loads(p.stdout)
    scorers = {c["name"]: c for c in (data["scorers"] if isinstance(data, dict) else
                                      [c for c in data if c["kind"] == "scorer"])}
    assert {"text", "nsfw", "quality"} <= set(scorers)
    assert "recognize" in scorers["text"]["options"] and "text_area" in scorers["text"]["columns"]
    assert "sharpness" in scorers["quality"]["columns"] and "nsfw" in scorers["nsfw"]["columns"]


def test_report_has_a_histogram_and_a_contact_sheet_for_each_new_column(content_root, scored):
    """The report draws one histogram per numeric score column and a contact sheet for each non-technical one
    (rendering all of them takes a minute on 2 cores: tests/test_filtering.py renders a report for real)."""
    from curate.query.report import score_columns

    cols = score_columns(Root(content_root))
    assert {"text_area", "text_area_mean", "text_boxes", "nsfw", "sharpness", "brightness", "contrast", "black_frac",
            "frozen_frac", "letterbox", "pillarbox"} <= set(cols)
    assert "ocr_text" not in cols and "nsfw_classes" not in cols  # strings: in the card's JSON, not histograms


def test_filter_thresholds_are_in_step_across_cli_yaml_and_airflow():
    import typer.main

    from curate.airflow import params
    from curate.cli import app
    from curate.pipeline import SECTIONS
    from curate.stages.filter import THRESHOLDS

    assert set(THRESHOLDS) <= SECTIONS["filter"]
    flags = {o for p in typer.main.get_command(app).commands["filter"].params for o in p.opts}
    for name in THRESHOLDS:
        assert f"--{name.replace('_', '-')}" in flags, f"curate filter lacks --{name.replace('_', '-')}"
        assert name in params.FILTER_SCHEMA or name in params.FILTER_PARAMS, name


def test_the_drawtext_clip_really_has_text(content_root):
    """Guard for the fixture itself: the drawn subtitle line is visible pixels (not an empty drawtext)."""
    src = read_table(content_root / "sources")
    subs = src[src.url.str.endswith("subs.mp4")].media_path.iloc[0]
    clean = src[src.url.str.endswith("clean.mp4")].media_path.iloc[0]
    from curate.media.video import get_frames, open_video

    a = get_frames(open_video(content_root / subs), [20])[0].astype(int)
    b = get_frames(open_video(content_root / clean), [20])[0].astype(int)
    diff = np.abs(a - b).mean(axis=2) > 40
    assert diff[:250].mean() < 0.001 and diff[250:].mean() > 0.02


def test_quality_rules_on_synthetic_frames():
    from curate.scorers.quality import QualityScorer, frame_quality

    rng = np.random.default_rng(0)
    moving = rng.integers(40, 220, (6, 90, 160), dtype=np.uint8)
    q = frame_quality(moving)
    assert q["frozen_frac"] == 0 and q["black_frac"] == 0 and q["letterbox"] == q["pillarbox"] == 0
    assert frame_quality(np.repeat(moving[:1], 6, axis=0))["frozen_frac"] == 1.0
    sky = moving.copy()
    sky[:, :20] = 5  # a dark band at the top only: a night sky, not a letterbox
    assert frame_quality(sky)["letterbox"] == 0.0
    sky[:, -10:] = 5
    assert frame_quality(sky)["letterbox"] == pytest.approx(30 / 90)
    one_bright = sky.copy()
    one_bright[2, :20] = 200  # a bar is dark in every frame
    assert frame_quality(one_bright)["letterbox"] == 0.0
    # a clip shorter than the sample count: each frame once, so it does not look frozen
    assert QualityScorer(frames=8).frame_indices(3, 25.0) == [0, 1, 2]


def test_text_area_is_the_union_of_line_boxes():
    from curate.scorers.text import line_boxes, text_area

    a = [[0, 0], [50, 0], [50, 10], [0, 10]]
    b = [[25, 0], [75, 0], [75, 10], [25, 10]]  # overlaps a by half
    assert text_area([a, b], 100, 100) == pytest.approx(76 * 11 / 10000, rel=0.05)
    thick = [[10, 10], [60, 10], [60, 60], [10, 60]]  # 50% of the frame height: a textured blob, not a line
    assert len(line_boxes([a, thick], 100, 0.2)) == 1
