"""Caption: run a captioner plugin (a vision-language model) over every clip -> ``ROOT/captions/<name>/``.

Raw web video has no clip-level captions (a title describes a whole video), so InternVid, Panda-70M and
Open-Sora captioned every clip with a VLM and then scored how well each caption matches its clip. This
stage writes one row per clip: ``clip_id, caption, captioner, model, weights, prompt, generation``
(JSON of the generation options), ``tokens`` (generated), ``seconds`` (the clip's share of its batch's
generation time), ``status, error``. Frames are decoded by :func:`curate.media.frames.decode_clips` in
threads ahead of the model, clips are batched across sources, and the configuration is recorded in
``_meta.json`` (running again with other options asks for another ``--name``).

Degenerate outputs never pass as captions: an empty caption, the prompt echoed back, or a phrase
repeated until generation hit ``max_new_tokens`` becomes an error row that says which.

Downstream stages name a caption source as ``source`` (the clips table's caption, from the source list)
or ``captions:NAME`` (this stage's output): ``curate embed --caption captions:NAME`` embeds the
generated texts as the ``text_emb`` of an embedding set (reusing the clip vectors of a set made with
the same encoder and options), which ``score``, ``filter``, ``search``, ``eval-retrieval`` and
``publish`` then follow.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

# the imports `X as X` re-export names that moved down a floor (curate.captions, curate.store.names), for their
# old path, until the merge
from curate.errors import CurateError
from curate.faults import crashpoint
from curate.media.frames import batches, clip_groups, decode_clips
from curate.plugins import get_captioner
from curate.progress import NullProgress, Progress, StageResult
from curate.store import Root, caption_schema, rows_to_table


# ----------------------------------------------------------------------------- degenerate outputs
def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", s.lower())).strip()


def repeated_tail(text: str, max_period: int = 200) -> tuple[str, int] | None:
    """The shortest phrase whose repetition makes up the end of ``text`` (at least 3 times and half the
    text; the last repetition may be cut off): ``(phrase, characters covered)``, or None."""
    s = re.sub(r"\s+", " ", text.strip())
    n = len(s)
    for p in range(1, min(max_period, n // 3) + 1):
        run = 0
        for i in range(n - 1, p - 1, -1):
            if s[i] != s[i - p]:
                break
            run += 1
        span = run + p
        if span >= 3 * p and span >= n / 2:
            return s[n - span:n - span + p], span
    return None


def degenerate_reason(text: str, *, prompt: str = "", tokens: int | None = None, truncated: bool | None = None,
                      max_new_tokens: int | None = None) -> str | None:
    """Why a generated caption is unusable, or None: empty, the prompt echoed, a phrase repeated to the
    token limit (``truncated``, or ``tokens >= max_new_tokens``; when neither is known, a phrase that
    repeats at least 4 times over 80% of the text)."""
    t = (text or "").strip()
    if not any(ch.isalnum() for ch in t):
        return "empty caption" if not t else f"empty caption (only {t[:20]!r})"
    nt, np_ = _norm(t), _norm(prompt or "")
    if np_ and (nt == np_ or nt.startswith(np_ + " ")):
        return "the model echoed the prompt"
    if truncated is None and tokens is not None and max_new_tokens:
        truncated = tokens >= int(max_new_tokens)
    rep = repeated_tail(t)
    if rep is None:
        return None
    phrase, span = rep
    if truncated or (truncated is None and span >= 0.8 * len(t) and span >= 4 * len(phrase)):
        limit = f" ({tokens} tokens)" if tokens is not None else ""
        return f"degenerate: {phrase.strip()[:60]!r} repeated to the token limit{limit}"
    return None


# ----------------------------------------------------------------------------- the stage
def load_captioner(captioner: str, options: dict[str, Any] | None = None, device: str = "auto"):
    """Create a captioner from its plugin."""
    return get_captioner(captioner).create(device=device, **dict(options or {}))


def _meta(captioner: str, options: dict, cap, batch_size: int) -> dict:
    info = cap.info
    return {"captioner": captioner, "options": options, "model": info.model, "weights": info.weights,
            "prompt": info.prompt, "num_frames": info.num_frames, "generation": info.generation,
            "batch_size": batch_size, "extra": info.extra}


def check_meta(root: Root, name: str, captioner: str, options: dict) -> None:
    meta = root.caption_meta(name)
    if meta and (meta.get("captioner") != captioner or meta.get("options") != options):
        raise CurateError(
            f"captions/{name} were made with captioner {meta.get('captioner')!r} options {meta.get('options')}; "
            f"this run asks for {captioner!r} options {options}. Pass --name NAME to keep both side by side, "
            f"or delete {root.url('captions/' + name)} to redo them."
        )


class CaptionsPending(CurateError):
    """A batch's generated captions are not all committed yet: its caption embeddings must wait for them."""


def captions_pending(root: Root | str, name: str, clip_ids: Iterable[str]) -> list[str]:
    """The clips among ``clip_ids`` that have no row (ok or error) in ``captions/<name>`` yet: the ones a
    caption run of their batch has not committed. Empty once the batch's ``caption()`` has returned."""
    root = Root(root) if not isinstance(root, Root) else root
    ids = list(dict.fromkeys(clip_ids))
    if not ids:
        return []
    have = set(_caption_status(root.captions(name), ids))
    return [c for c in ids if c not in have]


def _caption_status(table, clip_ids: list[str] | None) -> dict[str, str]:
    """clip id -> status of the rows of a captions table (only among ``clip_ids`` when given: a batch reads
    its own rows, not the whole table)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    if clip_ids is not None and not clip_ids:
        return {}
    flt = None if clip_ids is None else pads.field("clip_id").isin(pa.array(clip_ids, pa.string()))
    t = table.read_arrow(columns=["clip_id", "status"], filter=flt)
    return dict(zip(t["clip_id"].to_pylist(), t["status"].to_pylist()))


def _ok_clip_ids(root: Root, source_ids: set[str] | None) -> list[str]:
    """The ok clips of the root (of ``source_ids`` only when given), in table order."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    if source_ids is not None and not source_ids:
        return []
    flt = None if source_ids is None else pads.field("source_id").isin(pa.array(sorted(source_ids), pa.string()))
    clips = root.clips.read_arrow(columns=["clip_id", "status"], filter=flt)
    return clips.filter(pc.equal(clips["status"], "ok"))["clip_id"].to_pylist()


def caption(root: Root | str, captioner: str = "hf", *, options: dict[str, Any] | None = None,
            name: str | None = None, device: str = "auto", batch_size: int = 8, workers: int = 2,
            clip_ids: Iterable[str] | None = None, source_ids: Iterable[str] | None = None,
            retry_errors: bool = False, flush_every: int = 64, progress: Progress | None = None,
            captioner_obj: Any = None) -> StageResult:
    """Caption every ok clip (only ``clip_ids`` when given) not captioned yet under ``captions/<name>``.

    ``retry_errors`` redoes the clips whose earlier row is an error (a degenerate output, a failed
    generation). Returns counts; ``extra`` has ``tokens`` (generated, degenerate outputs included),
    ``generate_s`` and the captions/s and tokens/s of this run's generation.

    ``source_ids`` makes it per-batch work (a mapped Airflow task, a resident worker's batch, ``curate
    caption --shard i/n``): only those sources' clips, no lock on the root, rows inserted only where the
    table has none for the clip (so two processes that caption one batch at once still leave one row per
    clip), no table maintenance (:func:`curate.store.maintain` runs once after the batches). The first
    batch to write ``_meta.json`` wins (a conditional create); the others check theirs equals it. Without
    ``source_ids`` the run covers the whole root, holds the ``caption-<name>`` lock and compacts the
    table when appends left it fragmented.

    ``captioner_obj``: a captioner already created (:func:`load_captioner`) for ``captioner`` with these
    ``options``: a resident worker loads its model once and passes it to every batch. Without it the
    model is loaded here, and only when there is something to caption.
    """
    root = Root(root) if not isinstance(root, Root) else root
    options = {k: str(v) for k, v in (options or {}).items()}
    name = name or captioner
    get_captioner(captioner)  # an unknown name is an invocation error even when there is nothing to do
    kw = dict(options=options, name=name, device=device, batch_size=batch_size, workers=workers,
              clip_ids=clip_ids, retry_errors=retry_errors, flush_every=flush_every,
              progress=progress or NullProgress(), captioner_obj=captioner_obj)
    if source_ids is not None:  # per-batch: no root lock, inserts only
        return _caption(root.ensure(), captioner, source_ids=set(source_ids), **kw)
    with root.ensure().lock(f"caption-{name}"):
        return _caption(root, captioner, source_ids=None, **kw)


def _caption(root: Root, captioner: str, *, options: dict[str, str], name: str, device: str, batch_size: int,
             workers: int, clip_ids: Iterable[str] | None, source_ids: set[str] | None, retry_errors: bool,
             flush_every: int, progress: Progress, captioner_obj: Any) -> StageResult:
    result = StageResult("caption", extra={"captioner": captioner, "name": name})
    check_meta(root, name, captioner, options)
    table = root.captions(name)
    ids = _ok_clip_ids(root, source_ids)
    if clip_ids is not None:
        wanted = set(clip_ids)
        ids = [c for c in ids if c in wanted]
    old = _caption_status(table, ids if source_ids is not None else None)
    ok_done = {c for c, st in old.items() if st == "ok"}
    err_done = set(old) - ok_done
    done = ok_done if retry_errors else ok_done | err_done
    todo = [c for c in ids if c not in done]
    result.skipped = len(ids) - len(todo)
    result.total = len(todo)
    if not todo:
        return result.done()
    cap = captioner_obj or load_captioner(captioner, options, device)
    info = cap.info
    if not root.write_caption_meta(name, _meta(captioner, options, cap, batch_size)):
        check_meta(root, name, captioner, options)  # another batch wrote it first (or an earlier run): the same?
    result.extra.update(model=info.model, weights=info.weights)
    redo = set(todo) & err_done
    rows: list[dict] = []
    gen_s, tokens, generated = 0.0, 0, 0

    def flush() -> None:
        if rows:
            t = rows_to_table(rows, caption_schema())
            if redo:  # error rows of an earlier run are replaced
                table.upsert(t)
            elif source_ids is not None:  # a batch run twice at once (a lease taken over) keeps one row
                table.insert_missing(t)
            else:
                table.append(t)
            rows.clear()
            crashpoint("caption-flush")

    progress.start(len(todo), f"caption ({name})")
    decoded = decode_clips(root, cap, clip_groups(root, todo), workers=workers, frames_per_clip=info.num_frames)
    try:
        for out, secs in caption_rows(cap, captioner, decoded, batch_size):
            gen_s += secs
            for r in out:
                rows.append(r)
                if r.get("seconds") is not None:  # went through generation (ok or refused as degenerate)
                    generated += 1
                    tokens += r.get("tokens") or 0
                result.count(r)
            progress.advance(len(out))
            if len(rows) >= flush_every:
                flush()
    finally:  # a captioner that stops the run (its endpoint went away) keeps the captions made so far
        flush()
    if source_ids is None:
        table.maybe_compact()
    result.extra.update(generate_s=round(gen_s, 3), tokens=tokens,
                        captions_per_s=round(generated / gen_s, 4) if gen_s else None,
                        tokens_per_s=round(tokens / gen_s, 2) if gen_s else None)
    return result.done()


def caption_rows(cap, captioner: str, decoded: Iterable[tuple[dict, Any, str | None]],
                 batch_size: int) -> Iterator[tuple[list[dict], float]]:
    """Rows of the decoded clips ``(clip, input | None, decode error | None)``, about ``batch_size`` at a time,
    each with the seconds spent generating them: batches through ``caption_batch``, or, for a captioner that
    ``streams`` (many requests in flight), every clip through ``caption_stream`` in completion order (the
    seconds are then wall time, requests overlapping; each row's ``seconds`` is its own request's)."""
    if not getattr(cap, "streams", False):
        for batch in batches(decoded, batch_size):
            yield caption_batch_rows(cap, captioner, batch)
        return
    base, max_new = _base_row(cap, captioner), cap.info.generation.get("max_new_tokens")
    undecoded: deque[dict] = deque()  # filled while the stream reads the clips, drained as its captions come

    def good() -> Iterator[tuple[dict, Any]]:
        for c, x, err in decoded:
            if err is None:
                yield c, x
            else:
                undecoded.append({**base, "clip_id": c["clip_id"], "status": "error", "error": f"decode: {err}"})

    rows: list[dict] = []
    t0 = time.perf_counter()
    try:
        for c, o, s in cap.caption_stream(good()):
            while undecoded:
                rows.append(undecoded.popleft())
            rows.append(_output_row({**base, "updated_at": time.time()}, c, o, s, cap.info.prompt, max_new))
            if len(rows) >= batch_size:
                t1 = time.perf_counter()
                yield rows, t1 - t0
                rows, t0 = [], t1
    except Exception:  # the captioner stopped the run: the rows made so far are written first
        rows.extend(undecoded)
        if rows:
            yield rows, time.perf_counter() - t0
        raise
    rows.extend(undecoded)
    if rows:
        yield rows, time.perf_counter() - t0


def _base_row(cap, captioner: str) -> dict:
    info = cap.info
    return {"captioner": captioner, "model": info.model, "weights": info.weights, "prompt": info.prompt,
            "generation": json.dumps(info.generation, sort_keys=True, default=str), "updated_at": time.time()}


def _output_row(base: dict, c: dict, o: Any, seconds: float, prompt: str, max_new: int | None) -> dict:
    """The row of one clip that went through generation: its caption, or why it is not one."""
    row = {**base, "clip_id": c["clip_id"], "seconds": seconds, "status": "ok", "error": None}
    if isinstance(o, Exception):
        return {**row, "status": "error", "error": f"captioner: {type(o).__name__}: {str(o)[:300]}"}
    text, ntok, trunc = (o, None, None) if isinstance(o, str) else (o.text, o.tokens, o.truncated)
    text = (text or "").strip()
    row.update(caption=text, tokens=ntok)
    why = degenerate_reason(text, prompt=prompt, tokens=ntok, truncated=trunc, max_new_tokens=max_new)
    if why:
        row.update(status="error", error=why)
    return row


def caption_batch_rows(cap, captioner: str, batch: list[tuple[dict, Any, str | None]]) -> tuple[list[dict], float]:
    """Rows for one batch of decoded clips ``(clip, input | None, decode error | None)`` and the seconds
    spent generating. A failing batch is retried clip by clip, so one bad clip is one error row."""
    info = cap.info
    base = _base_row(cap, captioner)
    rows: list[dict] = []
    good = [(c, x) for c, x, err in batch if err is None]
    for c, _, err in batch:
        if err is not None:
            rows.append({**base, "clip_id": c["clip_id"], "status": "error", "error": f"decode: {err}"})
    if not good:
        return rows, 0.0
    t0 = time.perf_counter()
    try:
        outs: list[Any] = list(cap.caption_batch([x for _, x in good]))
        if len(outs) != len(good):
            raise RuntimeError(f"caption_batch returned {len(outs)} captions for {len(good)} clips")
        share = [(time.perf_counter() - t0) / len(good)] * len(good)
    except Exception:  # isolate the failing clip(s)
        outs, share = [], []
        for _, x in good:
            t1 = time.perf_counter()
            try:
                outs.append(cap.caption_batch([x])[0])
            except Exception as e:
                outs.append(e)
            share.append(time.perf_counter() - t1)
    secs = time.perf_counter() - t0
    max_new = info.generation.get("max_new_tokens")
    for (c, _), o, s in zip(good, outs, share):
        rows.append(_output_row(base, c, o, s, info.prompt, max_new))
    return rows, secs
