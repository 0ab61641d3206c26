"""Publish: cut only the kept clips and write WebDataset shards, ``annotations.parquet`` and a card.

Layout of ``ROOT/subsets/<name>/``::

    selection.parquet   filter.json       (written by `curate filter`; not data: the card's configs leave them out)
    shards/shard-00000.tar ...            <key>.mp4, <key>.json, <key>.npy per clip (+ shard-00000.json manifest)
    annotations.parquet                   one row per published clip (shard, key, caption, scores, times, licence)
    annotations/annotations-00000.tar.gz  the same rows as WebDataset samples (<clip_id>.json): the `annotations`
                                          config of the Hugging Face loader, which reads one format per folder
    README.md                             the dataset card: a Hub metadata block (configs, license, features...)
                                          and the body (counts, licences, thresholds, encoders, software)

The folder is a Hugging Face Hub dataset as it is: ``datasets.load_dataset(folder)`` reads the shards (one row
per clip), ``load_dataset(folder, "annotations")`` the annotations; :func:`copy_subset` uploads it.

Clips are assigned to shards in clip-id order, so a rerun rebuilds only shards whose content
changed (or that a crash left unfinished: shards are written under a temporary name and renamed).
"""

from __future__ import annotations

import io
import json
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.captions import caption_texts
from curate.embeddings import EmbeddingSet, names_from_columns
from curate.errors import CurateError
from curate.faults import crashpoint
from curate.media.video import CRF, CUT_MODES, PRESET, Encoding, MediaError, cut_clip, keyframes
from curate.progress import NullProgress, Progress, StageResult
from curate.query.report import embed_in_card
from curate.stages.sources import PROVENANCE, clip_url, license_key, source_provenance
from curate.store import Root
from curate.store.names import caption_source_label, parse_caption_source
from curate.store.storage import scratch_dir

#: publish's cut mode (see :func:`publish`): measured faster than re-encoding every clip, and as exact
DEFAULT_CUT = "auto"


def _primary_encoder(summary: dict, columns: list[str]) -> str | None:
    """The embedding set whose vectors go into the shards: the one a rule filtered on, else the first scored."""
    ruled = names_from_columns([r["column"] for r in summary.get("rules", []) if r.get("column")])
    sims = ruled or names_from_columns(columns)
    return sims[0] if sims else None


def publish(root: Root | str, subset: str, *, shard_size: int = 1000, workers: int | None = None,
            cut: str = DEFAULT_CUT, caption: str | None = None, shard: tuple[int, int] | None = None,
            preset: str | None = None, crf: int | None = None, progress: Progress | None = None) -> StageResult:
    """Cut and package the clips selected by `curate filter` for ``subset``.

    Each clip's JSON carries ``caption`` (``caption``: ``source`` or ``captions:NAME``; by default what
    ``curate filter --caption`` chose, else the source list's), ``source_caption`` (the source list's) and
    ``captions`` (every generated caption of the clip, by captions-set name).

    ``shard=(i, n)`` makes it per-batch work (mapped Airflow tasks, ``curate publish --shard i/n``): it
    writes only the WebDataset shards ``k`` with ``k % n == i`` (each shard a file of its own, with its
    manifest: no two tasks write one file, no lock), nothing else. Without it (the root-scope step, run
    once after them) it writes every shard not written yet, removes shards of an earlier, larger
    selection, then ``annotations.parquet`` and the card, under the ``publish-<subset>`` lock.

    ``cut``: ``auto`` (default) stream-copies the clips whose both ends fall on the source's keyframes (exact:
    checked, and only from H.264 yuv420p sources) and re-encodes the others; ``accurate`` re-encodes every
    clip; ``copy`` stream-copies every clip (exact only at keyframes). Re-encodes are H.264 at ``preset`` and
    ``crf`` (default :data:`curate.media.video.PRESET`/``CRF``); ``workers`` ffmpeg cuts run at once (default:
    :func:`cut_workers`, two per core)."""
    root = Root(root) if not isinstance(root, Root) else root
    progress = progress or NullProgress()
    if cut not in CUT_MODES:
        raise CurateError("cut must be 'auto' (stream copy where the cut falls on keyframes, else re-encode), "
                          "'accurate' (frame-accurate re-encode of every clip) or 'copy' (stream copy of every clip, "
                          f"exact only at keyframes), not {cut!r}")
    cutting = Cutting(cut, workers, Encoding(preset or PRESET, CRF if crf is None else int(crf)))
    out = root.subset_rel(subset)
    sel_path = f"{out}/selection.parquet"
    if not root.exists(sel_path):
        raise CurateError(f"Subset {subset!r} has no selection: run `curate filter --root {root} --subset {subset} ...` first.")
    result = StageResult("publish", extra={"subset": subset})
    if shard is not None:
        _write_shards(root, out, shard_size, cutting, caption, shard, progress, result)
        result.extra.update(shard=f"{shard[0]}/{shard[1]}", path=str(out))
        return result.done()
    with root.lock(f"publish-{subset}"):
        summary, enc, choice, annotations, expected, score_types = _write_shards(root, out, shard_size, cutting, caption, None,
                                                                    progress, result)
        shards_dir = f"{out}/shards"
        for p in root.ls(shards_dir, dirs=False):  # shards of an earlier, larger selection
            if p not in expected:
                root.rm(f"{shards_dir}/{p}")
        ann_table = annotation_table(annotations)
        root.write_parquet(ann_table, f"{out}/annotations.parquet")
        write_annotation_shards(root, out, ann_table)
        n_shards = len(expected) // 2
        result.extra.update(shards=n_shards, published=sum(1 for a in annotations if a["status"] == "ok"),
                            path=root.url(out))
        card = dataset_card(root, subset, summary, annotations, enc, n_shards, cutting.describe(), choice)
        meta = card_metadata(root, out, annotations, ann_table, score_types, has_npy=enc is not None)
        root.write_bytes(f"{out}/README.md", keep_date(root, f"{out}/README.md", meta + card))
        if root.exists(f"{out}/report/report.md"):  # keep an earlier `curate report` in the new card
            embed_in_card(root, f"{out}/README.md", root.read_text(f"{out}/report/report.md"), prefix="report/")
    return result.done()


#: how the card says when the subset was curated
CARD_DATE = re.compile(r"on \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")


def keep_date(root: Root, rel: str, card: str) -> str:
    """``card`` with the date of the card already at ``rel`` when nothing else changed (the report section
    that `curate report` appends aside): publishing again leaves the card as it is, and a copy elsewhere
    (``--to``) has nothing to upload."""
    old = root.read_text(rel) if root.exists(rel) else ""
    m = CARD_DATE.search(old)
    if m is None:
        return card
    same = CARD_DATE.sub(m.group(0), card, count=1)
    return same if old.startswith(same.rstrip("\n")) else card


def shard_count(root: Root | str, subset: str, shard_size: int) -> int:
    """How many WebDataset shards the subset's selection makes (what ``--shard i/n`` splits among ``n``)."""
    root = Root(root) if not isinstance(root, Root) else root
    sel = f"{root.subset_rel(subset)}/selection.parquet"
    rows = root.read_parquet(sel).num_rows if root.exists(sel) else 0
    return -(-rows // max(1, int(shard_size)))


def _write_shards(root: Root, out: str, shard_size: int, cutting: Cutting, caption: str | None,
                  shard: tuple[int, int] | None, progress: Progress, result: StageResult):
    """Write the shards (all, or those of ``shard``) that are missing or out of date; returns (filter summary,
    primary encoder, caption choice, annotations of those shards, file names of every shard, score columns and
    their types)."""
    summary = root.read_json(f"{out}/filter.json", {})
    choice = parse_caption_source(caption if caption is not None else (summary.get("options") or {}).get("caption"))
    if choice is not None and choice not in root.caption_names():
        raise CurateError(f"No captions named {choice!r} under {root.url('captions')}: run `curate caption "
                          f"--name {choice}` first, or publish with --caption source.")
    sel = root.read_parquet(f"{out}/selection.parquet")
    score_cols = [c for c in sel.column_names if c not in ("clip_id", "source_id")]
    clips = root.clips.read_arrow(columns=["clip_id", "source_id", "start_s", "end_s", "start_frame", "end_frame",
                                           "duration_s", "caption"], filter=pc.field("clip_id").isin(sel["clip_id"].combine_chunks()))
    srcs = root.sources.read_arrow(columns=["source_id", "url", "title", "meta", "media_path", "fps", "start_s",
                                            "info_path"], filter=pc.field("source_id").isin(
        pc.unique(clips["source_id"].combine_chunks())))
    prov = source_provenance(root, srcs.select(["source_id", "meta", "info_path"]).to_pylist())
    srcs = srcs.rename_columns([c if c != "start_s" else "segment_start_s" for c in srcs.column_names])
    t = clips.join(srcs, "source_id", join_type="left outer").join(
        sel.select(["clip_id", *score_cols]), "clip_id", join_type="left outer").sort_by("clip_id")
    enc = _primary_encoder(summary, sel.column_names)
    starts = list(range(0, t.num_rows, shard_size))
    mine = [si for si in range(len(starts)) if shard is None or si % shard[1] == shard[0]]
    wanted_ids = pa.concat_arrays([t["clip_id"].slice(starts[si], shard_size).combine_chunks() for si in mine]) \
        if mine else pa.array([], pa.string())
    emb = _Embeddings(root, enc, wanted_ids) if enc else None
    gen = _Generated(root, wanted_ids, choice)
    result.extra["caption"] = caption_source_label(choice)
    result.total = sum(min(shard_size, t.num_rows - starts[si]) for si in mine)
    shards_dir = f"{out}/shards"
    if shard is None:
        for tmp in root.ls(shards_dir):  # left by a crash (older versions): never visible as a shard
            if tmp.startswith(".tmp-"):
                root.rm(f"{shards_dir}/{tmp}", recursive=True)
    progress.start(result.total, f"publish ({PurePosixPath(out).name})")
    annotations: list[dict] = []
    expected = {n for si in range(len(starts)) for n in (f"shard-{si:05d}.tar", f"shard-{si:05d}.json")}
    for si in mine:
        group = t.slice(starts[si], shard_size).to_pylist()  # Python rows of one shard at a time
        name = f"shard-{si:05d}.tar"
        manifest_path = f"{shards_dir}/{name.replace('.tar', '.json')}"
        ids = [r["clip_id"] for r in group]
        for r in group:
            r.update(prov.get(r["source_id"]) or dict.fromkeys(PROVENANCE))
        digest, prov_digest = gen.digest(group), provenance_digest(group)
        if root.exists(f"{shards_dir}/{name}") and root.exists(manifest_path):
            manifest = root.read_json(manifest_path)
            if manifest.get("clip_ids") == ids and cutting.made(manifest.get("cut")) and \
                    manifest.get("captions") == digest and manifest.get("provenance") == prov_digest:
                annotations.extend(manifest["annotations"])
                result.skipped += len(group)
                result.ok += sum(1 for a in manifest["annotations"] if a["status"] == "ok")
                result.error += sum(1 for a in manifest["annotations"] if a["status"] != "ok")
                progress.advance(len(group))
                continue
        ann = _write_shard(root, f"{shards_dir}/{name}", group, si, emb, score_cols, cutting, progress, result,
                           gen)
        root.write_bytes(manifest_path, json.dumps({"clip_ids": ids, "cut": cutting.label(), "captions": digest,
                                                    "provenance": prov_digest, "annotations": ann}, default=str))
        annotations.extend(ann)
    score_types = [(c, sel.schema.field(c).type) for c in score_cols if not c.endswith("_error")]
    return summary, enc, choice, annotations, expected, score_types


class _Embeddings:
    """The selected clips' clip vectors (ok rows of the embedding set), streamed once; one array per clip."""

    def __init__(self, root: Root, name: str, clip_ids: pa.ChunkedArray) -> None:
        self.vectors: dict[str, np.ndarray] = {}
        for ids, video, _ in EmbeddingSet(root, name).vectors(clip_ids):
            self.vectors.update(zip(ids.to_pylist(), video))

    def get(self, clip_id: str) -> np.ndarray | None:
        return self.vectors.get(clip_id)


class _Generated:
    """The generated captions of the selected clips (every captions set of the root) and which caption the
    ``caption`` field holds (``choice``: a captions-set name, or None for the source list's)."""

    def __init__(self, root: Root, clip_ids: pa.ChunkedArray, choice: str | None) -> None:
        self.choice = choice
        self.names = root.caption_names()
        ids = clip_ids.to_pylist()
        self.texts = {n: caption_texts(root, n, ids) for n in self.names} if ids else {}

    def fields(self, r: dict) -> dict:
        """``caption``, ``source_caption`` and ``captions`` ({set: text}) of one clip row."""
        key = r["clip_id"]
        captions = {n: self.texts[n][key] for n in self.names if key in self.texts.get(n, {})}
        chosen = r.get("caption") if self.choice is None else captions.get(self.choice)
        return {"caption": chosen, "source_caption": r.get("caption"), "captions": captions}

    def digest(self, group: list[dict]) -> str | None:
        """Changes when any generated caption of the shard's clips (or the choice) changes: the shard is
        rebuilt. None without generated captions (as manifests written before captioning existed)."""
        import hashlib

        if not self.names and self.choice is None:
            return None

        blob = json.dumps([self.choice, [self.fields(r) for r in group]], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_shard(root: Root, path: str, group: list[dict], shard_index: int, emb: dict, score_cols: list[str],
                 cutting: Cutting, progress: Progress, result: StageResult, gen: _Generated) -> list[dict]:
    """Cut the clips of one shard (in the scratch directory) and write the shard at ``path`` (under the root)."""
    shard_name = PurePosixPath(path).name
    tmpdir = Path(tempfile.mkdtemp(prefix="cut-", dir=scratch_dir()))
    try:
        done = cutting.cut(root, group, tmpdir, result)
        ann = []
        with root.local_output(path) as tmp_tar, tarfile.open(tmp_tar, "w") as tar:
            for r, mp4, err in done:
                key = r["clip_id"]
                scores = {c: r.get(c) for c in score_cols if c in r and not c.endswith("_error")}
                meta = json.loads(r["meta"]) if r.get("meta") else {}
                offset = r.get("segment_start_s") or 0.0
                caps = gen.fields(r)
                source = provenance_fields(r, offset)
                record = {"key": key, "clip_id": key, **caps, "source_id": r["source_id"],
                          "url": r.get("url"), "title": r.get("title"), "start_s": r["start_s"], "end_s": r["end_s"],
                          "duration_s": r["duration_s"], "url_start_s": offset + r["start_s"],
                          "url_end_s": offset + r["end_s"], **source, "scores": scores, "meta": meta}
                if err is None:
                    _add(tar, f"{key}.mp4", mp4.read_bytes())
                    _add(tar, f"{key}.json", json.dumps(record, ensure_ascii=False, default=str).encode())
                    vec = emb.get(key) if emb is not None else None
                    if vec is not None:
                        buf = io.BytesIO()
                        np.save(buf, vec)
                        _add(tar, f"{key}.npy", buf.getvalue())
                    result.ok += 1
                else:
                    result.add_error(key, err)
                ann.append({"clip_id": key, "shard": shard_name, "status": "ok" if err is None else "error",
                            "error": err, "caption": caps["caption"], "source_caption": caps["source_caption"],
                            **{f"caption_{n}": caps["captions"].get(n) for n in gen.names},
                            "source_id": r["source_id"],
                            "url": r.get("url"), "start_s": r["start_s"], "end_s": r["end_s"],
                            "duration_s": r["duration_s"], "url_start_s": offset + r["start_s"],
                            "url_end_s": offset + r["end_s"], **source, **scores})
                progress.advance()
        crashpoint("publish-shard")
        return ann
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def cut_workers(cores: int | None = None) -> int:
    """ffmpeg cuts to run at once: two per core, at most 16 (measured on 2 cores, README "Speed": 4 beat 2 and
    1; each cut's x264 picks its own threads, ~1.5 per core, so more processes only overlap each cut's serial
    parts: start-up, seek, audio, muxing)."""
    import os

    if not cores:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(2 * int(cores), 16))


class Cutting:
    """How publish cuts the clips of a shard: ``mode`` (auto/accurate/copy), ``workers`` ffmpeg at once, the
    re-encode's ``encoding``. Every cut is one :func:`curate.media.video.cut_clip`."""

    def __init__(self, mode: str, workers: int | None, encoding: Encoding) -> None:
        self.mode, self.encoding = mode, encoding
        self.workers = max(1, int(workers)) if workers else cut_workers()

    def label(self) -> str:
        """What the shard manifest records: a shard cut another way is rebuilt."""
        return self.mode if self.mode == "copy" else f"{self.mode}:{self.encoding.preset}:crf{self.encoding.crf}"

    def made(self, label: str | None) -> bool:
        """Whether a shard whose manifest records ``label`` was cut this way (``accurate``: written before the
        encoding was recorded, with what is still the default one)."""
        return label == self.label() or (label == "accurate" and self.label() == f"accurate:{PRESET}:crf{CRF}")

    def describe(self) -> str:
        """How the clips were cut, for the dataset card."""
        if self.mode == "copy":
            return "by stream copy at keyframes"
        enc = self.encoding.label()
        if self.mode == "auto":
            return (f"by stream copy where both cut points fall on the source's keyframes (exact), else re-encoded "
                    f"frame-accurately, {enc}")
        return f"frame-accurately, {enc}"

    def cut(self, root: Root, group: list[dict], tmpdir: Path, result: StageResult) -> list[tuple[dict, Path | None, str | None]]:
        """Cut every clip of ``group`` into ``tmpdir``: [(row, mp4 or None, error or None)] in ``group``'s order."""
        keys: dict[str, list[float]] = {}
        if self.mode == "auto":  # each source's keyframes listed once (its packets read, nothing decoded)
            def list_keys(media_path: str) -> tuple[str, list[float]]:
                try:
                    return media_path, keyframes(root.media_file(media_path))
                except (MediaError, CurateError, OSError):
                    return media_path, []  # re-encoded; the cut itself says what is wrong

            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                keys = dict(pool.map(list_keys, sorted({r["media_path"] for r in group if r.get("media_path")})))

        def do_cut(r: dict) -> tuple[dict, Path | None, str | None, str | None]:
            dst = tmpdir / f"{r['clip_id']}.mp4"
            try:
                if not r.get("media_path"):
                    raise MediaError("source media is missing")
                n = int(r["end_frame"]) - int(r["start_frame"])
                how = cut_clip(root.media_file(r["media_path"]), dst, float(r["start_s"]), n, float(r["fps"]),
                               mode=self.mode, encoding=self.encoding, keys=keys.get(r["media_path"]))
                return r, dst, None, how
            except (MediaError, CurateError, OSError) as e:
                return r, None, str(e), None

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            done = list(pool.map(do_cut, group))
        result.extra["copied"] = result.extra.get("copied", 0) + sum(1 for d in done if d[3] == "copy")
        return [d[:3] for d in done]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("curate", "torch", "open_clip_torch", "transformers", "decord", "scenedetect", "yt-dlp", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        first = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        out["ffmpeg"] = first.split()[2]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        pass
    return out


def captions_section(root: Root, annotations: list[dict], choice: str | None) -> list[str]:
    """The card's ``## Captions`` section: where the caption field comes from, and which captioner, model,
    weights, prompt and generation options made every generated captions set."""
    ok = [a for a in annotations if a["status"] == "ok"]
    lines = ["## Captions", ""]
    lines.append("The `caption` field holds " + ("the caption of the source list (`source_caption`)." if choice is None
                 else f"the captions generated as `captions/{choice}` (the source list's caption is in "
                      "`source_caption`)."))
    names = root.caption_names()
    if names:
        lines.append("Every generated caption of a clip is in its JSON under `captions.<name>` "
                     "(`caption_<name>` in `annotations.parquet`).")
    lines.append("")
    for name in names:
        m = root.caption_meta(name)
        have = sum(1 for a in ok if a.get(f"caption_{name}") is not None)
        gen = ", ".join(f"{k}={v}" for k, v in (m.get("generation") or {}).items())
        lines += [f"### captions/{name}" + (" (the `caption` field)" if name == choice else ""), "",
                  f"- captioner: `{m.get('captioner')}`", f"- model: `{m.get('model')}`",
                  f"- weights: {m.get('weights')}", f"- prompt: \"{m.get('prompt')}\"",
                  f"- frames per clip: {m.get('num_frames')}", f"- generation: {gen or 'n/a'}",
                  f"- published clips with this caption: {have} of {len(ok)}", ""]
    return lines


def dataset_card(root: Root, subset: str, summary: dict, annotations: list[dict], enc: str | None, shards: int,
                 cut: str, caption: str | None = None) -> str:
    """The dataset card; ``cut`` says how the clips were cut (:meth:`Cutting.describe`)."""
    published = sum(1 for a in annotations if a["status"] == "ok")
    failed = len(annotations) - published
    lines = [f"# {subset}", "", f"Curated with curate from `{root}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    lines += ["## Counts", "", "| | clips |", "|---|---|",
              f"| scored | {summary.get('total', '?')} |", f"| kept by the filter | {summary.get('kept', '?')} |",
              f"| dropped | {summary.get('dropped', '?')} |", f"| published | {published} |",
              f"| failed to cut | {failed} |", f"| shards | {shards} |", ""]
    lines += licences_section(annotations)
    rules = summary.get("rules", [])
    lines += ["## Thresholds", ""]
    if rules:
        lines += ["| rule | column | condition | dropped (alone) | dropped (in order) |", "|---|---|---|---|---|"]
        for r in rules:
            lines.append(f"| {r['name']} | `{r['column']}` | {r['op']} {r['value']} | "
                         f"{summary['dropped_by_rule'].get(r['name'], 0)} | {summary['funnel'].get(r['name'], 0)} |")
    else:
        lines.append("No thresholds: every scored clip was kept.")
    lines += ["", "## Encoders", ""]
    for name in root.embedding_names():
        m = root.embedding_meta(name)
        if not m:
            continue
        lines += [f"### {name}" + (" (embeddings in the shards)" if name == enc else ""), "",
                  f"- encoder: `{m.get('encoder')}`", f"- model: `{m.get('model')}`", f"- weights: {m.get('weights')}",
                  f"- frames per clip: {m.get('num_frames')}, frame size: {m.get('frame_size')}",
                  f"- embedding shape: {m.get('video_emb_shape')}, similarity: {m.get('similarity')}",
                  f"- captions embedded: {m.get('caption', 'source')}",
                  f"- score range: {m.get('score_range') or 'n/a'}", ""]
        if m.get("weights") == "random":
            lines += ["> **weights: random** — this encoder ran with randomly initialised weights, so its scores",
                      "> say nothing about caption alignment. Use it only to test the pipeline.", ""]
    lines += captions_section(root, annotations, caption)
    lines += ["## Format", "", "WebDataset shards under `shards/`: per clip `<key>.mp4` (cut "
              + {"accurate": "frame-accurately, H.264", "copy": "by stream copy at keyframes"}.get(cut, cut)
              + "), `<key>.json` "
              "(caption, source_caption, generated captions, scores, source url, start/end seconds), `<key>.npy` "
              "(clip embedding). "
              "`annotations.parquet` holds the same fields, one row per clip (with `status` and `error` of the "
              "clips that failed to cut); `annotations/*.tar.gz` holds its rows as WebDataset samples, for the "
              "`annotations` config. `selection.parquet`, `filter.json` and the shards' `.json` manifests are "
              "curate's own records, not data.", "",
              "```python", "from datasets import Video, load_dataset",
              "ds = load_dataset('PATH_OR_REPO', split='train').cast_column('mp4', Video(decode=False))  "
              "# mp4 bytes, json, npy",
              "ann = load_dataset('PATH_OR_REPO', 'annotations', split='train')",
              "import webdataset as wds",
              f"ds = wds.WebDataset('{root}/subsets/{subset}/shards/shard-{{00000..{max(0, shards - 1):05d}}}.tar')",
              "```", "", "## Software", ""]
    lines += [f"- {k}: {v}" for k, v in package_versions().items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- licence and provenance
def provenance_fields(r: dict, offset: float) -> dict[str, str | None]:
    """A clip's ``license``, ``uploader``, ``channel``, ``webpage_url`` (its source's: see
    :func:`curate.stages.sources.source_provenance`) and ``clip_url``: the page (else the source URL) with the
    clip's time range on it."""
    out = {k: r.get(k) for k in PROVENANCE}
    out["clip_url"] = clip_url(out["webpage_url"] or r.get("url"), offset + r["start_s"], offset + r["end_s"])
    return out


def provenance_digest(group: list[dict]) -> str | None:
    """Changes when a licence or uploader of the shard's clips changes (the shard is rebuilt); None when no
    clip has any (as manifests written before licences were recorded: those shards are kept)."""
    import hashlib

    fields = [[r.get(k) for k in PROVENANCE] for r in group]
    if not any(v for f in fields for v in f):
        return None
    return hashlib.sha256(json.dumps(fields, default=str).encode()).hexdigest()[:16]


def licence_counts(annotations: list[dict]) -> dict[str, int]:
    """Published clips per licence (as written, the first spelling of each :func:`license_key`), the most
    first; ``unknown`` counts the clips without one."""
    counts: dict[str, int] = {}
    names: dict[str, str] = {}
    for a in annotations:
        if a["status"] != "ok":
            continue
        k = license_key(a.get("license"))
        names.setdefault(k, "unknown" if k == "unknown" else str(a["license"]).strip())
        counts[k] = counts.get(k, 0) + 1
    return {names[k]: n for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def licences_section(annotations: list[dict]) -> list[str]:
    """The card's ``## Licences`` section: clips per licence, and plainly how many have none known."""
    counts = licence_counts(annotations)
    total = sum(counts.values())
    lines = ["## Licences", "",
             "Each clip carries its source's licence, uploader, channel and page URL (`license`, `uploader`, "
             "`channel`, `webpage_url`; `clip_url` adds the clip's time range) in its JSON and in "
             "`annotations.parquet`: from the source list's columns of those names, else from what the site "
             "told yt-dlp. curate does not check them.", ""]
    if not total:
        return lines + ["No clip is published.", ""]
    lines += ["| licence | clips |", "|---|---|"] + [f"| {k.replace('|', chr(92) + '|')} | {n} |"
                                                  for k, n in counts.items()] + [""]
    unknown = counts.get("unknown", 0)
    if unknown == total:
        lines.append(f"**The licence of every clip ({total}) is unknown**: neither the source list nor the sites "
                     "stated one. Check the sources' terms before you use or share this dataset.")
    elif unknown:
        lines.append(f"**The licence of {unknown} of {total} clips is unknown.** Check those sources' terms, or "
                     "keep only known licences with `curate filter --license`.")
    else:
        lines.append("Every published clip has a stated licence.")
    return lines + [""]


# ----------------------------------------------------------------------------- Hub layout: annotations, metadata
#: annotation columns that hold text (typed as strings even when every value is null)
TEXT_COLUMNS = {"clip_id", "shard", "status", "error", "caption", "source_caption", "source_id", "url", *PROVENANCE,
                "clip_url"}
#: rows per tar of ``annotations/`` (a WebDataset sample is a 512-byte header and the JSON, padded to 512 bytes:
#: ~1.5 KiB a row, ~70 bytes gzipped)
ANNOTATION_SHARD_ROWS = 100_000


def annotation_table(annotations: list[dict]) -> pa.Table:
    """``annotations.parquet``: the rows as given, a column that is null everywhere typed as text or a number
    (so that every reader, and the card's features, see one type)."""
    if not annotations:
        return pa.table({"clip_id": pa.array([], pa.string())})
    # every key of every row (pyarrow would take the first row's): rows of shards kept from an older curate lack
    # the licence fields, which a clip of a rebuilt shard has
    keys = list(dict.fromkeys(k for a in annotations for k in a))
    t = pa.Table.from_pydict({k: [a.get(k) for a in annotations] for k in keys})
    for i, f in enumerate(t.schema):
        if pa.types.is_null(f.type):
            text = f.name in TEXT_COLUMNS or f.name.startswith("caption_")
            t = t.set_column(i, f.name, pa.nulls(t.num_rows, pa.string() if text else pa.float64()))
    return t


def write_annotation_shards(root: Root, out: str, table: pa.Table) -> list[str]:
    """``annotations/annotations-NNNNN.tar.gz``: every row of ``annotations.parquet`` as a WebDataset sample
    ``<clip_id>.json``, the rows of the card's ``annotations`` config (the Hub's loader reads one format per
    dataset: the shards' WebDataset); tars of an earlier, larger subset are removed. Returns their names."""
    import gzip

    names = []
    rows = table.to_pylist() if "status" in table.column_names else []
    for part, start in enumerate(range(0, len(rows), ANNOTATION_SHARD_ROWS)):
        name = f"annotations-{part:05d}.tar.gz"
        # gzip level 1: 20x smaller (tar headers are mostly zeros) for ~5% more time; no name or mtime in the
        # header, so that the same rows give the same bytes (a copy elsewhere skips it)
        with root.local_output(f"{out}/annotations/{name}") as tmp, open(tmp, "wb") as f, \
                gzip.GzipFile(filename="", fileobj=f, mode="wb", compresslevel=1, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w") as tar:
            for r in rows[start:start + ANNOTATION_SHARD_ROWS]:
                _add(tar, f"{r['clip_id']}.json", json.dumps(r, ensure_ascii=False, default=str).encode())
        names.append(name)
    for p in root.ls(f"{out}/annotations", dirs=False):
        if p not in names:
            root.rm(f"{out}/annotations/{p}")
    return names


_DTYPES = {"double": "float64", "float": "float32", "halffloat": "float16", "string": "string",
           "large_string": "large_string", "bool": "bool", "int64": "int64", "int32": "int32", "int16": "int16",
           "int8": "int8", "uint64": "uint64", "uint32": "uint32", "uint16": "uint16", "uint8": "uint8",
           "null": "null", "binary": "binary"}


def _feature(name: str, t: pa.DataType) -> dict | None:
    """One feature of a Hub card's ``dataset_info.features`` (the YAML ``datasets.Features`` writes), or None
    for a type it cannot state (an empty struct)."""
    if pa.types.is_struct(t):
        fields = [f for f in (_feature(t.field(i).name, t.field(i).type) for i in range(t.num_fields)) if f]
        return {"name": name, "struct": fields} if fields else None
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _feature("", t.value_type)
        if inner is None:
            return None
        inner.pop("name")
        return {"name": name, "list": inner.get("dtype", inner)}
    dtype = _DTYPES.get(str(t))
    return {"name": name, "dtype": dtype} if dtype else {"name": name, "dtype": "string"}


def _json_type(values: list) -> pa.DataType | None:
    """The Arrow type of JSON values (None when they disagree or say nothing)."""
    try:
        t = pa.array(values).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return None
    return None if pa.types.is_null(t) else t


def shard_features(root: Root, scores: list[tuple[str, pa.DataType]], metas: list[dict], has_npy: bool) -> list[dict]:
    """The features of the default config: a shard sample's ``mp4`` (video), ``json`` (its fields as
    :func:`_write_shard` writes them; ``scores`` the selection's columns and types), ``npy``."""
    s, f = pa.string(), pa.float64()
    fields = [("key", s), ("clip_id", s), ("caption", s), ("source_caption", s)]
    names = root.caption_names()
    if names:
        fields.append(("captions", pa.struct([(n, s) for n in names])))
    fields += [("source_id", s), ("url", s), ("title", s), ("start_s", f), ("end_s", f), ("duration_s", f),
               ("url_start_s", f), ("url_end_s", f), *[(k, s) for k in (*PROVENANCE, "clip_url")]]
    if scores:
        fields.append(("scores", pa.struct(scores)))
    meta = _json_type(metas) if metas else None
    if meta is not None:
        fields.append(("meta", meta))
    out = [{"name": "mp4", "dtype": "video"}, _feature("json", pa.struct(fields))]
    if has_npy:
        out.append({"name": "npy", "list": "float32"})
    return out + [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]


#: Hub licence identifiers (https://huggingface.co/docs/hub/repositories-licenses) a stated licence may name
HUB_LICENSES = {"apache-2.0", "mit", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
                "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
                "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "odc-by", "odbl", "pddl"}
#: licences as sites state them -> the Hub's identifier (YouTube's Creative Commons uploads are CC BY 3.0)
LICENSE_ALIASES = {"creative-commons-attribution-license-(reuse-allowed)": "cc-by-3.0", "cc0": "cc0-1.0",
                   "cc-by-sa": "cc-by-sa-4.0", "cc-by": "cc-by-4.0"}


def hub_license(counts: dict[str, int]) -> str | list[str]:
    """The card's ``license``: the Hub identifiers of the clips' licences (``other`` for one it has none for,
    ``unknown`` for clips without one); one value, or the list when the clips differ."""
    ids = []
    for name in counts:
        k = license_key(name)
        hub = k if k in HUB_LICENSES or k == "unknown" else LICENSE_ALIASES.get(k, "other")
        if hub not in ids:
            ids.append(hub)
    if not ids:
        return "unknown"
    return ids[0] if len(ids) == 1 else ids


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return label
    return "n>1B"


def card_metadata(root: Root, out: str, annotations: list[dict], ann: pa.Table,
                  scores: list[tuple[str, pa.DataType]], has_npy: bool) -> str:
    """The card's YAML metadata block (``---`` ... ``---``): ``configs`` (default: the WebDataset shards,
    ``annotations``: the annotation rows; nothing else in the folder is data), ``dataset_info`` features of
    both, ``license``, ``task_categories``, ``size_categories``, ``tags``, ``pretty_name``."""
    import yaml

    published = [a for a in annotations if a["status"] == "ok"]
    counts = licence_counts(annotations)
    sources = sorted({a["source_id"] for a in published})
    metas = []
    if sources:
        for r in root.sources.read_arrow(columns=["source_id", "meta"],
                                         filter=pc.field("source_id").isin(sources)).to_pylist():
            try:
                metas.append(json.loads(r["meta"]) if r["meta"] else {})
            except ValueError:
                metas.append({})
    ann_fields = [_feature(f.name, f.type) for f in ann.schema] if "status" in ann.column_names else []
    data = {
        "pretty_name": PurePosixPath(out).name,
        "license": hub_license(counts),
        "task_categories": ["text-to-video", "video-text-to-text"],
        "size_categories": [size_category(len(published))],
        "tags": ["video", "video-text", "webdataset", "curate"],
        "configs": [
            {"config_name": "default", "default": True,
             "data_files": [{"split": "train", "path": "shards/*.tar"}]},
            {"config_name": "annotations", "data_files": [{"split": "train", "path": "annotations/*.tar.gz"}]},
        ],
        "dataset_info": [
            {"config_name": "default", "features": shard_features(root, scores, metas, has_npy)},
            {"config_name": "annotations", "features": [
                {"name": "json", "struct": [f for f in ann_fields if f]},
                {"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]},
        ],
    }
    if data["license"] == "other" or (isinstance(data["license"], list) and "other" in data["license"]):
        data["license_name"] = "per-clip"
        data["license_details"] = ("Licences stated per clip (`license` in each clip's JSON): "
                                   + ", ".join(f"{k} ({n})" for k, n in counts.items()))
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000) + "---\n"



# ----------------------------------------------------------------------------- copying a subset elsewhere
#: what a copy leaves out: temporary files, locks and curate's own work files (never data)
COPY_SKIP = (".tmp-", ".lock", "_lock")
#: the record of what a copy uploaded, at the destination: {path: {size, sha256}}
COPY_RECORD = ".curate-copy.json"


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _remote_matches(info: dict, size: int, local: Path, sha256: str, recorded: dict | None) -> bool:
    """Whether the destination file (its fsspec ``info``) holds the content of ``local``: same size, and the
    same checksum as the destination states it (an S3 ETag of a single-part upload is the MD5; the Hub gives
    LFS files' SHA-256) or as this copy recorded it."""
    import hashlib

    if int(info.get("size") or -1) != size:
        return False
    lfs = info.get("lfs") or {}
    if isinstance(lfs, dict) and lfs.get("sha256"):
        return lfs["sha256"] == sha256
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if etag and "-" not in etag and len(etag) == 32:
        md5 = hashlib.md5()
        with open(local, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                md5.update(chunk)
        return md5.hexdigest() == etag
    return bool(recorded) and recorded.get("sha256") == sha256 and recorded.get("size") == size


def _open_destination(to: str) -> tuple[Any, str, bool]:
    """(the fsspec filesystem of URL ``to``, the path in it, whether it is local: a local one's folder is made)."""
    import fsspec
    import fsspec.implementations.local

    try:
        fs, base = fsspec.core.url_to_fs(to)
    except (ImportError, ValueError) as e:
        raise CurateError(f"Cannot open {to!r}: {e} (install the fsspec package for that scheme: s3fs, gcsfs, "
                          "adlfs; hf:// comes with huggingface_hub).") from None
    base = base.rstrip("/")
    local_fs = isinstance(fs, fsspec.implementations.local.LocalFileSystem)
    if local_fs:
        fs.makedirs(base, exist_ok=True)
    return fs, base, local_fs


def _at_destination(fs: Any, base: str) -> tuple[dict, dict[str, dict]]:
    """What a copy finds at ``base``: the record of what was copied before (``{}`` if none or unreadable) and
    the files there (path relative to ``base`` -> fsspec info)."""
    try:
        record = json.loads(fs.cat_file(f"{base}/{COPY_RECORD}"))
    except (FileNotFoundError, OSError, ValueError):
        record = {}
    try:
        there = {PurePosixPath(i["name"]).relative_to(PurePosixPath(base)).as_posix(): i
                 for i in fs.find(base, detail=True).values()}
    except FileNotFoundError:
        there = {}
    return record, there


def copy_subset(root: Root | str, subset: str, to: str, *, workers: int = 4,
                progress: Progress | None = None) -> StageResult:
    """Copy the published subset's folder to ``to``, any fsspec URL or local directory: a bucket
    (``s3://bucket/prefix``, ``gs://``, ``az://``) or a Hugging Face dataset repository
    (``hf://datasets/OWNER/NAME``, through huggingface_hub's ``HfFileSystem``, which takes the token from
    ``HF_TOKEN``; the repository must exist).

    Resumable: a file already there with the same size and checksum (see :func:`_remote_matches`) is skipped,
    so a second call copies nothing and a call after an interruption copies the rest. The record
    ``.curate-copy.json`` at the destination lists what was copied (size, SHA-256), for destinations that
    state no checksum. Shards and the card are copied last, so that a reader never sees a card whose data is
    not there yet."""
    root = Root(root) if not isinstance(root, Root) else root
    progress = progress or NullProgress()
    out = root.subset_rel(subset)
    if not root.exists(f"{out}/README.md"):
        raise CurateError(f"Subset {subset!r} is not published: run `curate publish --root {root} --subset {subset}` "
                          "first.")
    fs, base, local_fs = _open_destination(to)
    result = StageResult("publish-copy", extra={"subset": subset, "to": to})
    if root.remote:
        raise CurateError(f"publish --to copies a subset of a local root; {root} is remote: copy its folder "
                          f"{root.url(out)} with your storage's tools (or publish into a local root).")
    with root.local_dir(out) as src:
        files = sorted(p for p in src.rglob("*") if p.is_file() and not any(
            part.startswith(COPY_SKIP) or part.endswith(COPY_SKIP) for part in p.relative_to(src).parts))
        # data first, the card (which announces it) last
        files.sort(key=lambda p: (p.name == "README.md", str(p.relative_to(src))))
        record, there = _at_destination(fs, base)
        result.total = len(files)
        progress.start(len(files), f"copy {subset} -> {to}")
        lock = threading.Lock()

        def one(p: Path) -> None:
            rel = p.relative_to(src).as_posix()
            size, digest = p.stat().st_size, _sha256(p)
            if rel in there and _remote_matches(there[rel], size, p, digest, record.get(rel)):
                with lock:
                    result.skipped += 1
                    record[rel] = {"size": size, "sha256": digest}
                progress.advance()
                return
            if local_fs:  # object stores have no directories to make
                fs.makedirs(str(PurePosixPath(f"{base}/{rel}").parent), exist_ok=True)
            fs.put_file(str(p), f"{base}/{rel}")
            with lock:
                result.ok += 1
                result.extra["bytes"] = result.extra.get("bytes", 0) + size
                record[rel] = {"size": size, "sha256": digest}
            progress.advance()

        data = [p for p in files if p.name != "README.md"]
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                list(pool.map(one, data))
            for p in files[len(data):]:
                one(p)
        finally:  # what did get there is recorded even when a copy fails half-way
            if result.ok or not there.get(COPY_RECORD):
                fs.pipe_file(f"{base}/{COPY_RECORD}", json.dumps(record, indent=1, sort_keys=True).encode())
    result.extra["url"] = to
    return result.done()

