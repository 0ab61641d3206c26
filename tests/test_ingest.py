"""Ingest: lists in every format, yt-dlp against a local HTTP server, and bad input as error rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import read_table

from curate.errors import CurateError
from curate.media.fetch import RETRYABLE_KINDS, classify_download_error
from curate.stages.ingest import ingest
from curate.stages.sources import read_source_list, register_sources


def test_http_sources_download_through_ytdlp_with_info_json(tmp_path, http_server):
    root = tmp_path / "ds"
    r = ingest(root, [f"{http_server}/two_shots.mp4"], retries=0)
    assert (r.ok, r.error) == (1, 0)
    row = read_table(root / "sources").iloc[0]
    assert row.status == "ok" and row.media_path.startswith("media/") and row.media_path.endswith(".mp4")
    info = json.loads((root / row.info_path).read_text())
    assert info["webpage_url"] == f"{http_server}/two_shots.mp4"
    assert row.num_frames == 105 and row.fps == 25


def test_bad_sources_become_error_rows_and_the_rest_goes_on(tmp_path, http_server, videos):
    root = tmp_path / "ds"
    text = tmp_path / "text.mp4"
    text.write_text("not a video at all")
    urls = [
        f"{http_server}/three_shots.mp4",       # ok
        f"{http_server}/missing.mp4",           # 404
        "http://127.0.0.1:1/closed.mp4",        # closed port
        "-f bestaudio",                         # would be an option
        str(tmp_path / "nope.mp4"),             # missing local file
        str(text),                              # text named .mp4
        "ftp://example.invalid/x.mp4",          # unsupported scheme
        str(videos["two_shots"]),               # ok (local)
    ]
    r = ingest(root, urls, retries=0)
    assert (r.total, r.ok, r.error) == (8, 2, 6)
    src = read_table(root / "sources").set_index("url")
    kinds = src.error_kind.to_dict()
    assert kinds[f"{http_server}/missing.mp4"] == "unavailable"
    assert kinds["http://127.0.0.1:1/closed.mp4"] == "network"
    assert kinds["-f bestaudio"] == "invalid_url"
    assert kinds[str(tmp_path / "nope.mp4")] == "not_found"
    assert kinds[str(text)] == "corrupt" and "not a readable media file" in src.error[str(text)]
    assert kinds["ftp://example.invalid/x.mp4"] == "invalid_url"
    assert "404" in src.error[f"{http_server}/missing.mp4"]
    # nothing was written outside the root, and no file is named after a user string
    assert {p.name.split(".")[0] for p in (root / "media").iterdir()} <= set(src.source_id)


def test_rerun_skips_done_rows_and_retry_errors_requeues_only_retryable(tmp_path, http_server):
    root = tmp_path / "ds"
    urls = [f"{http_server}/long_shot.mp4", "http://127.0.0.1:1/x.mp4", f"{http_server}/gone.mp4"]
    ingest(root, urls, retries=0)
    again = ingest(root, urls, retries=0)
    assert (again.total, again.skipped) == (0, 3)
    retry = ingest(root, retry_errors=True, retries=0)
    assert retry.total == 1  # the closed port (network) only; the 404 is permanent
    src = read_table(root / "sources")
    assert len(src) == 3 and src.source_id.is_unique
    assert src.set_index("url").attempts["http://127.0.0.1:1/x.mp4"] == 2


def test_max_filesize_rejects_big_downloads_and_local_files(tmp_path, http_server, videos):
    root = tmp_path / "ds"
    r = ingest(root, [f"{http_server}/three_shots.mp4", str(videos["two_shots"])], max_filesize=1000, retries=0)
    assert r.error == 2
    assert set(read_table(root / "sources").error_kind) == {"too_large"}


def test_local_paths_can_be_refused_or_limited_to_directories(tmp_path, videos):
    r = ingest(tmp_path / "a", [str(videos["two_shots"])], allow_local=False)
    assert r.error == 1
    r = ingest(tmp_path / "b", [str(videos["two_shots"]), "/etc/hostname"], local_dirs=[str(videos["two_shots"].parent)])
    src = read_table(tmp_path / "b" / "sources").set_index("url")
    assert src.status[str(videos["two_shots"])] == "ok"
    assert src.error_kind["/etc/hostname"] == "not_allowed"


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "tsv"])
def test_source_lists_in_every_format_keep_extra_columns(tmp_path, fmt, videos):
    df = pd.DataFrame({"url": [str(videos["two_shots"]), str(videos["two_shots"])], "caption": ["a", "a"],
                       "youtube_id": ["x1", "x1"], "score": [1, 1]})
    p = tmp_path / f"list.{fmt}"
    {"csv": lambda: df.to_csv(p, index=False), "tsv": lambda: df.to_csv(p, sep="\t", index=False),
     "jsonl": lambda: df.to_json(p, orient="records", lines=True), "parquet": lambda: df.to_parquet(p)}[fmt]()
    ids = register_sources(tmp_path / "ds", p)
    assert len(ids) == 1  # duplicate rows collapse into one source
    src = read_table(tmp_path / "ds" / "sources")
    assert len(src) == 1 and src.caption[0] == "a"
    meta = json.loads(src.meta[0])
    assert meta["youtube_id"] == "x1" and str(meta["score"]) == "1"  # CSV/TSV carry no types


def test_non_utf8_caption_is_read_not_fatal(tmp_path, videos):
    p = tmp_path / "list.csv"
    p.write_bytes(b"url,caption\n" + str(videos["two_shots"]).encode() + b",caf\xe9 \xff\n")
    ingest(tmp_path / "ds", p)
    row = read_table(tmp_path / "ds" / "sources").iloc[0]
    assert row.status == "ok" and row.caption.startswith("caf")


def test_list_without_url_column_is_an_invocation_error(tmp_path):
    p = tmp_path / "list.csv"
    p.write_text("link,caption\nx,y\n")
    with pytest.raises(CurateError, match="no 'url' column"):
        read_source_list(p)


@pytest.mark.parametrize("message,kind", [
    ("HTTP Error 429: Too Many Requests", "rate_limited"),
    ("Sign in to confirm you're not a bot", "bot_check"),
    ("Private video. Sign in if you've been granted access", "unavailable"),
    ("Video unavailable. This video has been removed by the uploader", "unavailable"),
    ("Unsupported URL: https://example.com/", "unsupported"),
    ("The read operation timed out", "timeout"),
    # a port that happens to contain 429 is not a rate limit (seen in CI: port=42977)
    ("HTTPConnectionPool(host='127.0.0.1', port=42977): Read timed out.", "timeout"),
    ("Unable to download http://127.0.0.1:4290/v.mp4: timed out", "timeout"),
    ("[Errno 104] Connection reset by peer", "network"),
])
def test_download_errors_are_classified(message, kind):
    assert classify_download_error(message) == kind
    assert (kind in RETRYABLE_KINDS) == (kind in {"rate_limited", "bot_check", "timeout", "network"})


def test_segment_rows_download_only_their_range_and_publish_absolute_times(tmp_path, http_server, tiny_clip):
    """start_s/end_s on a source row: yt-dlp fetches just that range; clips keep their time in the URL."""
    from curate.stages.filter import filter_clips
    from curate.stages.publish import publish
    from curate.stages.score import score
    from curate.stages.split import split

    lst = tmp_path / "l.csv"  # three_shots: cuts at frames 50 and 90 (2.0 s and 3.6 s)
    lst.write_text(f"url,caption,start_s,end_s\n{http_server}/three_shots.mp4,x,1.0,4.0\n")
    root = tmp_path / "ds"
    r = ingest(root, lst, retries=0)
    assert r.ok == 1, r.errors
    src = read_table(root / "sources").iloc[0]
    assert src.duration_s == pytest.approx(3.0, abs=0.1) and (src.start_s, src.end_s) == (1.0, 4.0)
    split(root, min_clip_s=0.2)
    clips = read_table(root / "clips").sort_values("start_frame")
    assert [round(s, 1) for s in clips.start_s] == [0.0, 1.0, 2.6]  # the cuts, relative to the segment
    score(root, scorers=["technical"])
    filter_clips(root, "all")
    publish(root, "all")
    ann = read_table(root / "subsets" / "all" / "annotations.parquet").sort_values("start_s")
    assert [round(s, 1) for s in ann.url_start_s] == [1.0, 2.0, 3.6]  # re-fetchable: url + time range
