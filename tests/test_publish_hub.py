"""A published subset read by the field's real clients: `datasets` (the Hub's loader), `webdataset` + a torch
DataLoader, DuckDB; its card's metadata parsed by huggingface_hub; licences from a yt-dlp info JSON (a site
extractor plugin over a local HTTP server) and from a source-list column; `publish --to` a bucket (moto)."""

from __future__ import annotations

import csv
import functools
import http.server
import json
import logging
import re
import shutil
import tarfile
import threading
import warnings
from pathlib import Path

import pandas as pd
import pytest
from conftest import curate

from curate.stages.embed import embed
from curate.stages.filter import filter_clips
from curate.stages.publish import copy_subset, publish
from curate.stages.score import score
from curate.stages.split import split

datasets = pytest.importorskip("datasets")

DOCS = Path(__file__).parents[1] / "docs" / "publishing.md"
YOUTUBE_CC = "Creative Commons Attribution license (reuse allowed)"

#: a yt-dlp extractor for the test "site": its watch page is JSON (title, licence, uploader, channel, media URL)
#: on the local HTTP server, as a real site's page carries them; yt-dlp finds it as a plugin on PYTHONPATH
EXTRACTOR = '''
from yt_dlp.extractor.common import InfoExtractor


class CurateTestSiteIE(InfoExtractor):
    _VALID_URL = r"http://127\\.0\\.0\\.1:\\d+/watch/(?P<id>[\\w-]+)"

    def _real_extract(self, url):
        video_id = self._match_id(url)
        page = self._download_json(url + ".json", video_id)
        return {"id": video_id, "title": page["title"], "url": page["media"], "ext": "mp4",
                "license": page["license"], "uploader": page["uploader"], "channel": page["channel"]}
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory, videos):
    """A local HTTP server with a watch page (JSON) and its video, and the yt-dlp plugin that reads it."""
    www = tmp_path_factory.mktemp("site")
    (www / "watch").mkdir()
    shutil.copy(videos["three_shots"], www / "three_shots.mp4")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}), directory=str(www)))
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    (www / "watch" / "cc-clip.json").write_text(json.dumps({
        "title": "three shots", "media": f"{base}/three_shots.mp4", "license": YOUTUBE_CC,
        "uploader": "Test Uploader", "channel": "Test Channel"}))
    plugins = tmp_path_factory.mktemp("ytdlp-plugins")
    (plugins / "yt_dlp_plugins" / "extractor").mkdir(parents=True)
    (plugins / "yt_dlp_plugins" / "extractor" / "curate_test_site.py").write_text(EXTRACTOR)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield {"watch": f"{base}/watch/cc-clip", "plugins": plugins}
    srv.shutdown()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, site, videos, tiny_clip):
    """A root with three sources: a watch page whose licence only yt-dlp's info JSON states, a local file whose
    licence is the source list's column, a local file without one; the subset ``all`` published."""
    d = tmp_path_factory.mktemp("hub")
    lst = d / "sources.csv"
    with open(lst, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["url", "caption", "license"])
        w.writeheader()
        w.writerow({"url": site["watch"], "caption": "test pattern then fractal then color bars", "license": ""})
        w.writerow({"url": str(videos["two_shots"]), "caption": "a color gradient then stripes",
                    "license": "CC BY-SA 4.0"})
        w.writerow({"url": str(videos["long_shot"]), "caption": "a fractal zoom", "license": ""})
    root = d / "root"
    mp = pytest.MonkeyPatch()
    import os

    mp.setenv("PYTHONPATH", os.pathsep.join([str(site["plugins"]), os.environ.get("PYTHONPATH", "")]))
    try:  # the ingest as a user runs it: a process of its own, where yt-dlp loads the plugin
        curate("ingest", lst, "--root", root, "--workers", "2")
    finally:
        mp.undo()
    split(root, min_clip_s=0.5, max_clip_s=2.0)
    embed(root, "clip", options=tiny_clip, device="cpu", batch_size=4)
    score(root)
    filter_clips(root, "all", min_duration=0.5)
    r = publish(root, "all", shard_size=3, workers=2)
    assert r.ok > 0 and r.error == 0
    return root


def subset_dir(root: Path, name: str = "all") -> Path:
    return root / "subsets" / name


def annotations(root: Path, name: str = "all") -> pd.DataFrame:
    return pd.read_parquet(subset_dir(root, name) / "annotations.parquet")


def load(path: Path, config: str | None = None, **kw):
    """``datasets.load_dataset`` on a folder, as a user would; a cache of the test's own."""
    return datasets.load_dataset(str(path), config, split="train", cache_dir=str(path.parent / ".hf-cache"), **kw)


def test_load_dataset_gives_one_row_per_published_clip(hub):
    ann = annotations(hub)
    ok = ann[ann.status == "ok"].set_index("clip_id")
    ds = load(subset_dir(hub)).cast_column("mp4", datasets.Video(decode=False))
    assert ds.num_rows == len(ok) > 0  # not selection + annotations read as one table
    assert sorted(ds["__key__"]) == sorted(ok.index)
    for row in ds:
        j, a = row["json"], ok.loc[row["__key__"]]
        assert j["caption"] == a.caption and j["clip_id"] == row["__key__"]
        assert j["scores"]["clip_sim"] == pytest.approx(a.clip_sim)
        assert j["scores"]["duration_s"] == pytest.approx(a.duration_s)
        mp4 = row["mp4"]["bytes"]
        assert mp4[4:8] == b"ftyp"  # an MP4 file
        assert len(row["npy"]) == 32  # the tiny model's clip embedding


def test_annotations_config_matches_annotations_parquet(hub):
    ann = annotations(hub).set_index("clip_id")
    ds = load(subset_dir(hub), "annotations")
    assert ds.num_rows == len(ann)
    rows = {r["clip_id"]: r for r in ds["json"]}
    assert rows.keys() == set(ann.index)
    for cid, r in rows.items():
        want = {"clip_id": cid, **ann.loc[cid].to_dict()}
        assert set(r) == set(want)
        for k, v in want.items():
            if isinstance(v, float):
                assert (r[k] is None and pd.isna(v)) or r[k] == pytest.approx(v), k
            else:
                assert r[k] == (None if v is None or (not isinstance(v, str) and pd.isna(v)) else v), k


def test_internal_files_are_not_data(hub):
    """The loader reads only what the configs name: selection.parquet and the manifests are left out."""
    d = subset_dir(hub)
    assert (d / "selection.parquet").exists() and list((d / "shards").glob("*.json"))
    card = datasets.load_dataset_builder(str(d), cache_dir=str(hub.parent / ".hf-cache"))
    files = [Path(f).name for f in card.config.data_files["train"]]
    assert files and all(f.endswith(".tar") and f.startswith("shard-") for f in files)


def test_card_metadata_is_a_valid_dataset_card(hub, caplog):
    from huggingface_hub import DatasetCard, DatasetCardData

    path = subset_dir(hub) / "README.md"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            card = DatasetCard.load(path)
            data = DatasetCardData(**card.data.to_dict())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert [c["config_name"] for c in data.configs] == ["default", "annotations"]
    assert data.configs[0]["data_files"] == [{"split": "train", "path": "shards/*.tar"}]
    assert sorted(data.license) == ["cc-by-3.0", "cc-by-sa-4.0", "unknown"]
    assert data.size_categories == ["n<1K"] and "text-to-video" in data.task_categories
    assert "video" in data.tags
    # the body is still the card of today: counts, thresholds, encoders, software
    for heading in ("## Counts", "## Licences", "## Thresholds", "## Encoders", "## Software"):
        assert heading in card.text
    feats = datasets.Features._from_yaml_list(card.data.dataset_info[0]["features"])
    assert isinstance(feats["mp4"], datasets.Video) and "license" in feats["json"]


def test_licences_flow_from_the_info_json_and_the_source_list(hub, site):
    ann = annotations(hub)
    ok = ann[ann.status == "ok"]
    by_url = {u: g for u, g in ok.groupby("url")}
    web = by_url[site["watch"]]
    assert set(web.license) == {YOUTUBE_CC} and set(web.uploader) == {"Test Uploader"}
    assert set(web.channel) == {"Test Channel"} and set(web.webpage_url) == {site["watch"]}
    for r in web.itertuples():
        assert r.clip_url == f"{site['watch']}#t={r.url_start_s:.3f}".rstrip("0").rstrip(".") + \
            "," + f"{r.url_end_s:.3f}".rstrip("0").rstrip(".")
    listed = [g for u, g in by_url.items() if u.endswith("two_shots.mp4")][0]
    assert set(listed.license) == {"CC BY-SA 4.0"} and listed.uploader.isna().all() and listed.clip_url.isna().all()
    unknown = [g for u, g in by_url.items() if u.endswith("long_shot.mp4")][0]
    assert unknown.license.isna().all()
    # the same in each clip's JSON in the shards
    for shard in (subset_dir(hub) / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    j = json.loads(tar.extractfile(m).read())
                    a = ok[ok.clip_id == j["clip_id"]].iloc[0]
                    assert j["license"] == (None if pd.isna(a.license) else a.license)
                    assert j["clip_url"] == (None if pd.isna(a.clip_url) else a.clip_url)
    # the card sums them up and says plainly what is unknown
    card = (subset_dir(hub) / "README.md").read_text()
    n_unknown = len(unknown)
    assert f"| {YOUTUBE_CC} | {len(web)} |" in card and f"| CC BY-SA 4.0 | {len(listed)} |" in card
    assert f"| unknown | {n_unknown} |" in card
    assert f"The licence of {n_unknown} of {len(ok)} clips is unknown." in card


def test_filter_license_keeps_only_the_named_licences(hub):
    ann = annotations(hub)
    ok = ann[ann.status == "ok"]
    r = filter_clips(hub, "sa", min_duration=0.5, license=["cc-by-sa-4.0"])  # as the list spells it: CC BY-SA 4.0
    sel = pd.read_parquet(subset_dir(hub, "sa") / "selection.parquet")
    assert set(sel.clip_id) == set(ok[ok.license == "CC BY-SA 4.0"].clip_id) and r.ok == len(sel) > 0
    assert r.extra["dropped_by_rule"]["license"] == len(ok) - len(sel)
    sel = pd.read_parquet(subset_dir(hub, "sa") / "selection.parquet")
    r = filter_clips(hub, "known", min_duration=0.5, license=[YOUTUBE_CC, "CC BY-SA 4.0"])
    assert r.ok == int(ok.license.notna().sum())
    r = filter_clips(hub, "nolicence", min_duration=0.5, license="unknown")
    assert r.ok == int(ok.license.isna().sum()) > 0
    # the option is declared once: the CLI takes it too
    p = curate("filter", "--root", hub, "--subset", "sa2", "--min-duration", "0.5", "--license", "cc-by-sa-4.0",
               "--json")
    assert json.loads(p.stdout)["ok"] == len(sel)


def test_publish_to_a_bucket_copies_once(hub, s3):
    import s3fs

    url = f"{s3}/hub/all"
    first = copy_subset(hub, "all", url)
    local = sorted(p.relative_to(subset_dir(hub)).as_posix() for p in subset_dir(hub).rglob("*")
                   if p.is_file() and ".hf-cache" not in p.parts)
    fs = s3fs.S3FileSystem()
    there = sorted(p.split("/hub/all/", 1)[1] for p in fs.find(url))
    assert first.ok == len(local) and there == sorted([*local, ".curate-copy.json"])
    assert fs.cat_file(f"{url}/README.md") == (subset_dir(hub) / "README.md").read_bytes()
    # a second call, as a user runs it (publish again, then copy), copies nothing
    p = curate("publish", "--root", hub, "--subset", "all", "--shard-size", "3", "--to", url, "--json")
    copy = json_objects(p.stdout)[-1]
    assert copy["stage"] == "publish-copy" and copy["ok"] == 0 and copy["skipped"] == len(local)
    # a changed file is copied again, and only it
    (subset_dir(hub) / "filter.json").write_text((subset_dir(hub) / "filter.json").read_text() + "\n")
    again = copy_subset(hub, "all", url)
    assert again.ok == 1 and again.skipped == len(local) - 1


def json_objects(text: str) -> list[dict]:
    """The JSON objects a command printed one after the other (``--json`` of publish, then of the copy)."""
    dec, out, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) >= 0:
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
    return out


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)


def test_the_readers_of_the_docs_run(hub, capsys, monkeypatch):
    """Each Python snippet of docs/publishing.md, run as it is on the published subset."""
    code = snippets()
    assert len(code) == 3
    d = subset_dir(hub)
    ann = annotations(hub)
    ok = ann[ann.status == "ok"]
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hub.parent / ".hf-cache")  # not the home's cache
    ns: dict = {"SUBSET_DIR": str(d)}
    exec(code[0], ns)
    assert ns["ds"].num_rows == len(ok) and ns["mp4_bytes"][4:8] == b"ftyp"
    assert ns["annotations"].num_rows == len(ann)
    ns = {"SUBSET_DIR": str(d)}
    exec(code[1], ns)
    shapes = re.findall(r"torch.Size\(\[8, 3, (\d+), (\d+)\]\)", capsys.readouterr().out)
    assert len(shapes) == len(ok) and set(shapes) == {("240", "320")}
    ns = {"SUBSET_DIR": str(d)}
    exec(code[2], ns)
    df = ns["df"]
    assert df.clips.sum() == len(ok) and set(df.license.dropna()) == set(ok.license.dropna())


def test_report_plots_sit_beside_the_card_and_are_not_data(hub, s3):
    """`curate report --subset` after publish: the card shows its plots from image files in the folder (copied
    with it), the Hub loader still reads one row per clip, the card still parses, and publishing again keeps it."""
    from huggingface_hub import DatasetCard

    from curate.query.report import make_report

    make_report(hub, "all", top_k=2)
    d = subset_dir(hub)
    card = (d / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\((report/[^)]+\.png)\)", card)
    assert images and all((d / p).is_file() for p in images)
    assert DatasetCard.load(d / "README.md").data.configs[0]["config_name"] == "default"
    ann = annotations(hub)
    assert load(d).num_rows == int((ann.status == "ok").sum())
    old = re.sub(r"on \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", "on 2020-01-02 03:04 UTC", card, count=1)
    assert old != card
    (d / "README.md").write_text(old)  # as if published long ago
    before = (d / "README.md").read_bytes()
    publish(hub, "all", shard_size=3, workers=2)
    assert (d / "README.md").read_bytes() == before  # same date, same report section: nothing to upload again
    url = f"{s3}/hub/with-report"
    assert copy_subset(hub, "all", url).ok > len(images)
    import s3fs

    fs = s3fs.S3FileSystem()
    assert all(fs.exists(f"{url}/{p}") for p in images)


def test_publish_to_a_directory_gives_a_loadable_copy(hub, tmp_path):
    dest = tmp_path / "copy" / "all"
    first = copy_subset(hub, "all", str(dest))
    assert first.ok > 0 and copy_subset(hub, "all", f"file://{dest}").ok == 0  # the record says it is there
    ann = annotations(hub)
    assert load(dest).num_rows == int((ann.status == "ok").sum())


def test_a_subset_published_before_licences_gets_them_on_the_next_publish(hub):
    """Manifests written by an older curate (no provenance digest, annotations without licence fields): the
    shards with a licensed clip are cut again, the others kept, and annotations.parquet has every field."""
    d = subset_dir(hub)
    want = annotations(hub).sort_values("clip_id").reset_index(drop=True)
    kept = 0
    for m in sorted((d / "shards").glob("*.json")):
        man = json.loads(m.read_text())
        man.pop("provenance", None)
        man["annotations"] = [{k: v for k, v in a.items() if k not in ("license", "uploader", "channel",
                                                                       "webpage_url", "clip_url")}
                              for a in man["annotations"]]
        m.write_text(json.dumps(man))
        kept += len(man["clip_ids"]) if all(pd.isna(want.set_index("clip_id").loc[c, "license"]) and
                                            pd.isna(want.set_index("clip_id").loc[c, "uploader"])
                                            for c in man["clip_ids"]) else 0
    r = publish(hub, "all", shard_size=3, workers=2)
    assert r.skipped == kept < len(want)  # only the shards without any licence are kept
    got = annotations(hub).sort_values("clip_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[want.columns], want)


def test_license_is_one_declared_option_of_every_shell():
    from curate.airflow import params as cp
    from curate.optspec import json_schema
    from curate.stages.options import check_section, option

    assert check_section("filter", {"license": "cc-by-4.0"}) == {"license": ["cc-by-4.0"]}
    assert check_section("filter", {"license": ["cc-by-4.0", "unknown"]}) == {"license": ["cc-by-4.0", "unknown"]}
    assert json_schema(option("filter", "license"))["type"] == "array"
    assert "license" in cp.FILTER_SCHEMA
