"""curate_pipeline: a source list -> a published, curated video-text subset.

register (plans the run's batches on its board, ROOT/.work/<board>) -> per batch of sources (mapped): ingest ->
split (marks the batch ready) | GPU stages as resident worker slots, mapped over ``gpu_slots`` (not batches) on
the ``gpu`` queue: embed (one_pass: split + embed in one decode, `curate process`) -> per-clip scorers and
captioning (+ the caption embedding) -> maintain (once) -> score (root-scope scorers) -> dedup_plan ->
dedup_group (mapped, per group of k-means clusters) -> dedup_merge -> filter -> cut (mapped, per group of
WebDataset shards) -> publish (annotations, card, asset).

A slot loads its model once, then claims ready batches by leases on the root (a batch is ready as soon as its own
split is done: no barrier after all splits), commits their rows and goes on until no batch is left; a killed
slot's batch is taken over by another slot or the retried task (see docs/workers.md). Per-batch tasks and slots
take no lock on the root: a batch owns its sources' rows and only appends them; table maintenance (compaction)
and what needs the whole root (dedup, alignment, filter, the card, the asset) run once, after the batches. With
``one_pass`` (the default, when the detector and encoder options allow it), the split tasks leave their batch
alone and the embed slots split and embed in one decode per source; ``one_pass: false`` splits on the default
workers first.

Every task is a thin shell over one curate stage (``curate.stages.ingest.ingest`` ... ``curate.stages.publish.publish``);
the stages are idempotent, so clearing and re-running any task (or Airflow retrying one whose worker died)
only finishes what is missing. Bad sources end as error rows and the run goes on; a batch fails only when
none of its sources got through. The published subset is the asset ``curate://<subset>`` (announced
through the alias ``curate_subsets``) with counts and thresholds in the event's extra. See docs/airflow.md and
docs/airflow-params.md for params and settings.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Metadata, dag, task, task_group
from airflow.sdk.exceptions import AirflowFailException

from curate.airflow import params as cp
from curate.airflow import settings as cs
from curate.airflow import tasks as ct

GPU = cs.gpu_task_kwargs()
#: mapped ingest/split tasks of one run active at once (GPU tasks are bounded by the gpu pool instead)
PARALLEL = int(cs.setting("CURATE_PARALLEL_BATCHES", "4") or 4)


@dag(dag_id="curate_pipeline", schedule=None, catchup=False, params=cp.pipeline_params(), tags=["curate"],
     doc_md=__doc__, default_args=ct.default_args())
def curate_pipeline():
    @task
    def register(params=None) -> list[dict]:
        """Add the list's sources to ROOT/sources (pending), cut their ids into batches and put them on this run's
        board (ROOT/.work/<board>/batches: what the GPU slots claim)."""
        from curate.stages.sources import register_sources
        from curate.store import Root
        from curate.workers import Board

        root = cs.check_root(params["root"])
        sources = cs.check_source_list(root, params["sources"])
        r = Root(root).ensure()

        def _register():
            with r.lock("ingest"), cs.source_list_file(root, sources) as path:
                return register_sources(r, str(path))

        batches = ct.make_batches(ct.locked(_register), params["batch_size"])
        if not batches:
            raise AirflowFailException(f"{sources} lists no sources")
        board = Board(r, ct.board_name())
        if not board.sealed():  # (a cleared register finds its board planned)
            board.add_batches([b["source_ids"] for b in batches], seal=True)
        index = {tuple(ids): i for i, ids in board.batches().items()}
        return [{**b, "index": index.get(tuple(b["source_ids"]), b["index"])} for b in batches]

    @task_group
    def batch(b: dict):
        @task(map_index_template="{{ curate_label }}", max_active_tis_per_dagrun=PARALLEL,
              retries=3, retry_delay=timedelta(minutes=1))
        def ingest(b: dict, params=None) -> dict:
            """Fetch this batch's sources; on a retry, sources that failed for a retryable reason go again."""
            from curate.stages.ingest import ingest as run

            ct.label(f"batch {b['index']} ({ct.plural(len(b['source_ids']), 'source')})")
            root = cs.check_root(params["root"])
            res = ct.locked(run, root, source_ids=b["source_ids"], **cs.local_access(root),
                            retry_errors=ct.try_number() > 1).as_dict()
            return ct.require_ingested(root, b, res)

        @task(map_index_template="{{ curate_label }}", max_active_tis_per_dagrun=PARALLEL)
        def split(b: dict, ingested: dict, params=None) -> dict:
            """Split this batch (unless one_pass: the GPU slots split it in the decode of the embedding), then mark it
            ready for the GPU slots."""
            from curate.stages.split import split as run

            ct.label(f"batch {b['index']} ({ct.plural(ingested['sources_ok'], 'source')} ingested)")
            root = cs.check_root(params["root"])
            if ct.use_one_pass(params):  # the embed slots split, in the same decode as the embedding
                res = {"stage": "split", "one_pass": True, "sources": ingested["sources_ok"]}
            else:
                res = ct.require_some(ct.locked(run, root, source_ids=b["source_ids"], detector=params["detector"],
                                                min_clip_s=params["min_clip_s"],
                                                max_clip_s=params["max_clip_s"]).as_dict(), f"split of batch {b['index']}")
            ct.mark_batch(root, b["index"], "split", "done", {"sources": ingested["sources_ok"]})
            return res

        return split(b, ingest(b))

    @task(trigger_rule="all_done")
    def splits_done(params=None) -> dict:
        """Every batch's ingest/split ended (a failed one never becomes ready): the GPU slots may end."""
        from curate.workers import Board

        board = Board(cs.check_root(params["root"]), ct.board_name())
        board.finish("split")
        return board.summary("split")

    @task
    def slots(batches: list[dict], params=None) -> list[dict]:
        """The worker slots of each GPU stage (``gpu_slots``, default the gpu pool's size)."""
        return ct.gpu_slots(params)

    @task(**GPU, map_index_template="{{ curate_label }}")
    def embed(slot: dict, params=None) -> dict:
        """A resident worker slot: load the encoder (and splitter) once, then embed (one_pass: split and embed in
        one decode, `curate process`) every batch it claims as soon as that batch is split."""
        from curate.workers import EmbedWork, ProcessWork

        root = cs.check_root(params["root"])
        options = cs.check_encoder_options(params["encoder_options"], cs.allowed_dirs(root))
        common = dict(options=options, name=params["embedding_name"], device=params["device"],
                      batch_size=params["embed_batch_size"])
        if ct.use_one_pass(params):
            work = ProcessWork(params["encoder"], detector=params["detector"], min_clip_s=params["min_clip_s"],
                               max_clip_s=params["max_clip_s"], workers=params["decode_workers"], **common)
        else:
            work = EmbedWork(params["encoder"], **common)
        work.upstream = "split"
        return ct.run_slot(root, work, slot)

    @task(**GPU, task_id="score_clips", map_index_template="{{ curate_label }}", trigger_rule="all_done")
    def score_clips(slot: dict, params=None) -> dict:
        """A resident worker slot of the per-clip scorers (aesthetic, motion, ...), staged for the root step."""
        from curate.workers import ScoreWork

        root = cs.check_root(params["root"])
        options = cp.check_scorer_options(params["scorer_options"], cs.allowed_dirs(root))
        work = ScoreWork(params["scorers"], encoder=cp.embedding_name(params), options=options)
        work.upstream = "embed"
        return ct.run_slot(root, work, slot)

    # captioning is the heaviest GPU stage: its slots are queued before the per-clip scorers' so that every gpu
    # worker takes a caption slot first (else one worker can run both caption slots one after the other)
    @task(**GPU, task_id="caption_clips", map_index_template="{{ curate_label }}", trigger_rule="all_done",
          priority_weight=10)
    def caption_clips(slot: dict, params=None) -> dict:
        """With a ``captioner``: a resident worker slot that captions each batch's clips (``curate caption``), then
        embeds the generated captions with the run's encoder (clip vectors copied from the run's set)."""
        if not params["captioner"]:
            ct.label(f"slot {slot['slot']}/{slot['of']} (no captioner)")
            return {"stage": "caption", "skipped": True}
        from curate.workers import CaptionWork

        root = cs.check_root(params["root"])
        dirs = cs.allowed_dirs(root)
        work = CaptionWork(params["captioner"], options=cs.check_encoder_options(params["captioner_options"], dirs),
                           device=params["device"], encoder=params["encoder"],
                           encoder_options=cs.check_encoder_options(params["encoder_options"], dirs),
                           embedding_name=f"{cp.embedding_name(params)}_{params['captioner']}",
                           embed_batch_size=params["embed_batch_size"])
        work.upstream = "embed"
        return ct.run_slot(root, work, slot)

    # all_done: one failed batch does not stop the others from being scored and published
    @task(trigger_rule="all_done")
    def maintain(batches: list[dict], params=None) -> dict:
        """Once, after the batches: compact the tables they appended to (no per-batch task does)."""
        from curate.store import maintain as run

        if not batches:  # all_done also fires when register failed: its XCom is then missing
            raise AirflowFailException("register did not produce batches of sources: nothing to score")
        root = cs.check_root(params["root"])
        ids = [s for b in batches for s in b["source_ids"]]
        if ct.run_clip_count(root, ids) == 0:
            raise AirflowFailException("no source of this run produced a clip (see the failed batches)")
        return {"tables": run(root), "clips": ct.run_clip_count(root, ids)}

    @task
    def caption(maintained: dict, params=None) -> dict:
        """The captioning slots' outcome: which captions and which embedding set of them the later steps use."""
        if not params["captioner"]:
            return {"stage": "caption", "skipped": True}
        from curate.workers import Board

        root = cs.check_root(params["root"])
        name = params["captioner"]
        summary = Board(root, ct.board_name()).summary("caption")
        if summary["done"] == 0 and summary["failed"]:
            raise AirflowFailException(f"caption: every batch failed ({summary['failed']})")
        return {**summary, "name": name, "caption": f"captions:{name}",
                "embedding_name": f"{cp.embedding_name(params)}_{name}"}

    @task
    def score(captioned: dict, params=None) -> dict:
        """Merge the batches' per-clip scores, then run the root-scope scorers (alignment, ...) once; dedup runs
        after it in dedup_plan -> dedup_group (mapped) -> dedup_merge."""
        from curate.stages.score import score as run

        root = cs.check_root(params["root"])
        options = cp.check_scorer_options(params["scorer_options"], cs.allowed_dirs(root))
        res = ct.locked(run, root, scorers=[x for x in params["scorers"] if x != "dedup"],  # dedup: its own tasks
                        encoder=cp.embedding_name(params), options=options, scope="root").as_dict()
        if captioned.get("embedding_name"):  # alignment with the generated captions too
            ct.locked(run, root, scorers=["alignment"], encoder=captioned["embedding_name"])
        return ct.require_some(res, "score")

    @task
    def dedup_plan(scored: dict, params=None) -> list[dict]:
        """With the dedup scorer, once: rank, train the centroids, assign every clip (a plan that still matches is
        kept); the groups of clusters still to run (none when dedup is exact or incremental on this root)."""
        if "dedup" not in params["scorers"]:
            return []
        from curate.stages.dedup import dedup as run

        res = ct.locked(run, cs.check_root(params["root"]), plan=True, groups=params["dedup_groups"],
                        **cp.dedup_kwargs(params)).as_dict()
        return res["groups"]

    @task(map_index_template="{{ curate_label }}")
    def dedup_group(group: dict, params=None) -> dict:
        """One group of clusters, to its own file (no lock); a group already written is skipped."""
        from curate.stages.dedup import dedup as run

        ct.label(f"clusters {group['index']}/{group['of']}")
        return run(cs.check_root(params["root"]), shard=(group["index"], group["of"]),
                   **cp.dedup_kwargs(params)).as_dict()

    # none_failed: runs when dedup_group was mapped over no group (skipped), not when a group failed
    @task(trigger_rule="none_failed")
    def dedup_merge(scored: dict, params=None) -> dict:
        """The groups' results into dup_sim/dup_of (or, with no group, exact/incremental dedup here)."""
        if "dedup" not in params["scorers"]:
            return scored
        from curate.stages.dedup import dedup as run

        res = ct.locked(run, cs.check_root(params["root"]), merge=True, **cp.dedup_kwargs(params)).as_dict()
        return {**scored, "dedup": res}

    @task(task_id="filter")
    def filter_clips(scored: dict, captioned: dict, params=None) -> dict:
        from curate.stages.filter import filter_clips as run

        return run(cs.check_root(params["root"]), params["subset"],
                   encoder=captioned.get("embedding_name") or cp.embedding_name(params),
                   caption=captioned.get("caption"), **cp.filter_kwargs(params)).as_dict()

    @task
    def plan_cut(summary: dict, params=None) -> list[dict]:
        """The groups of WebDataset shards that the mapped cut tasks write, one group each."""
        from curate.stages.publish import shard_count

        n = shard_count(cs.check_root(params["root"]), params["subset"], params["shard_size"])
        return ct.cut_tasks(n, params["publish_tasks"])

    @task(map_index_template="{{ curate_label }}")
    def cut(part: dict, params=None) -> dict:
        """Cut this group's clips and write its shards (per-batch work: its own files, no lock)."""
        from curate.stages.publish import publish as run

        ct.label(f"shards {part['index']}/{part['of']}")
        res = run(cs.check_root(params["root"]), params["subset"], shard_size=params["shard_size"],
                  shard=(part["index"], part["of"])).as_dict()
        return ct.require_some(res, f"cut of shards {part['index']}/{part['of']}")

    @task(outlets=[ct.SUBSETS])
    def publish(summary: dict, params=None):
        """Once: shards a cut task did not write, annotations.parquet, the card, the asset event."""
        from curate.stages.publish import publish as run

        root = cs.check_root(params["root"])
        res = ct.require_some(ct.locked(run, root, params["subset"], shard_size=params["shard_size"]).as_dict(),
                              "publish")
        yield Metadata(ct.subset_asset(params["subset"]), ct.asset_extra(root, summary, res), alias=ct.SUBSETS)
        return res

    batches = register()
    done = batch.expand(b=batches)
    sealed = splits_done()
    done >> sealed
    gpu = slots(batches)
    embedded = embed.expand(slot=gpu)
    scored_clips = score_clips.expand(slot=gpu)
    captioned_clips = caption_clips.expand(slot=gpu)
    embedded >> [scored_clips, captioned_clips]  # (after the embed slots: a waiting slot never holds the pool)
    maintained = maintain(batches)
    [sealed, scored_clips, captioned_clips] >> maintained
    captioned = caption(maintained)
    scored = score(captioned)
    merged = dedup_merge(scored)
    dedup_group.expand(group=dedup_plan(scored)) >> merged
    summary = filter_clips(merged, captioned)
    cuts = cut.expand(part=plan_cut(summary))
    cuts >> publish(summary)

curate_pipeline()
