"""Publish: cut only the kept clips and write WebDataset shards, ``annotations.parquet`` and a card.

Layout of ``ROOT/subsets/<name>/``::

    selection.parquet   filter.json       (written by `curate filter`)
    shards/shard-00000.tar ...            <key>.mp4, <key>.json, <key>.npy per clip
    annotations.parquet                   one row per published clip (shard, key, caption, scores, times)
    README.md                             the dataset card

Clips are assigned to shards in clip-id order, so a rerun rebuilds only shards whose content
changed (or that a crash left unfinished: shards are written under a temporary name and renamed).
"""

from __future__ import annotations

import io
import json
import platform
import shutil
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

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
        summary, enc, choice, annotations, expected = _write_shards(root, out, shard_size, cutting, caption, None,
                                                                    progress, result)
        shards_dir = f"{out}/shards"
        for p in root.ls(shards_dir, dirs=False):  # shards of an earlier, larger selection
            if p not in expected:
                root.rm(f"{shards_dir}/{p}")
        ann_table = pa.Table.from_pylist(annotations) if annotations else pa.table({"clip_id": pa.array([], pa.string())})
        root.write_parquet(ann_table, f"{out}/annotations.parquet")
        n_shards = len(expected) // 2
        result.extra.update(shards=n_shards, published=sum(1 for a in annotations if a["status"] == "ok"),
                            path=root.url(out))
        card = dataset_card(root, subset, summary, annotations, enc, n_shards, cutting.describe(), choice)
        root.write_bytes(f"{out}/README.md", card)
        if root.exists(f"{out}/report/report.md"):  # keep an earlier `curate report` in the new card
            embed_in_card(root, f"{out}/README.md", root.read_text(f"{out}/report/report.md"), prefix="report/")
    return result.done()


def shard_count(root: Root | str, subset: str, shard_size: int) -> int:
    """How many WebDataset shards the subset's selection makes (what ``--shard i/n`` splits among ``n``)."""
    root = Root(root) if not isinstance(root, Root) else root
    sel = f"{root.subset_rel(subset)}/selection.parquet"
    rows = root.read_parquet(sel).num_rows if root.exists(sel) else 0
    return -(-rows // max(1, int(shard_size)))


def _write_shards(root: Root, out: str, shard_size: int, cutting: Cutting, caption: str | None,
                  shard: tuple[int, int] | None, progress: Progress, result: StageResult):
    """Write the shards (all, or those of ``shard``) that are missing or out of date; returns (filter summary,
    primary encoder, caption choice, annotations of those shards, file names of every shard)."""
    summary = root.read_json(f"{out}/filter.json", {})
    choice = parse_caption_source(caption if caption is not None else (summary.get("options") or {}).get("caption"))
    if choice is not None and choice not in root.caption_names():
        raise CurateError(f"No captions named {choice!r} under {root.url('captions')}: run `curate caption "
                          f"--name {choice}` first, or publish with --caption source.")
    sel = root.read_parquet(f"{out}/selection.parquet")
    score_cols = [c for c in sel.column_names if c not in ("clip_id", "source_id")]
    clips = root.clips.read_arrow(columns=["clip_id", "source_id", "start_s", "end_s", "start_frame", "end_frame",
                                           "duration_s", "caption"], filter=pc.field("clip_id").isin(sel["clip_id"].combine_chunks()))
    srcs = root.sources.read_arrow(columns=["source_id", "url", "title", "meta", "media_path", "fps", "start_s"])
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
        digest = gen.digest(group)
        if root.exists(f"{shards_dir}/{name}") and root.exists(manifest_path):
            manifest = root.read_json(manifest_path)
            if manifest.get("clip_ids") == ids and cutting.made(manifest.get("cut")) and \
                    manifest.get("captions") == digest:
                annotations.extend(manifest["annotations"])
                result.skipped += len(group)
                result.ok += sum(1 for a in manifest["annotations"] if a["status"] == "ok")
                result.error += sum(1 for a in manifest["annotations"] if a["status"] != "ok")
                progress.advance(len(group))
                continue
        ann = _write_shard(root, f"{shards_dir}/{name}", group, si, emb, score_cols, cutting, progress, result,
                           gen)
        root.write_bytes(manifest_path, json.dumps({"clip_ids": ids, "cut": cutting.label(), "captions": digest,
                                                    "annotations": ann}, default=str))
        annotations.extend(ann)
    return summary, enc, choice, annotations, expected


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
                record = {"key": key, "clip_id": key, **caps, "source_id": r["source_id"],
                          "url": r.get("url"), "title": r.get("title"), "start_s": r["start_s"], "end_s": r["end_s"],
                          "duration_s": r["duration_s"], "url_start_s": offset + r["start_s"],
                          "url_end_s": offset + r["end_s"], "scores": scores, "meta": meta}
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
                            "url_end_s": offset + r["end_s"], **scores})
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
              "`annotations.parquet` holds the same fields, one row per clip.", "",
              "```python", "import webdataset as wds",
              f"ds = wds.WebDataset('{root}/subsets/{subset}/shards/shard-{{00000..{max(0, shards - 1):05d}}}.tar')",
              "```", "", "## Software", ""]
    lines += [f"- {k}: {v}" for k, v in package_versions().items()]
    return "\n".join(lines) + "\n"
