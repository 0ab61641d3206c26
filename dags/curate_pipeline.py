"""curate_pipeline: a source list -> a published, curated video-text subset.

register -> [ingest -> split] per batch of sources (mapped) -> embed (GPU) -> caption (GPU, optional) -> score (GPU)
-> filter -> publish.
With ``one_pass``, the split tasks leave their batch alone and embed splits and embeds in one decode per
source (`curate process`) on the GPU worker.

Every task is a thin shell over one curate stage (``curate.ingest.ingest`` ... ``curate.publish.publish``);
the stages are idempotent, so clearing and re-running any task only finishes what is missing. Bad sources
end as error rows and the run goes on; a batch fails only when none of its sources got through.
The published subset is the asset ``curate://<subset>`` (announced through the alias ``curate_subsets``)
with counts and thresholds in the event's extra. See the README's Airflow section for params and settings.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Metadata, dag, task, task_group
from airflow.sdk.exceptions import AirflowFailException

from curate.airflow import tasks as ct

GPU = ct.gpu_task_kwargs()
#: mapped ingest/split batches of one run active at once (they share the work safely on one root)
PARALLEL = int(ct.setting("CURATE_PARALLEL_BATCHES", "4") or 4)


@dag(dag_id="curate_pipeline", schedule=None, catchup=False, params=ct.pipeline_params(), tags=["curate"],
     doc_md=__doc__, default_args=ct.default_args())
def curate_pipeline():
    @task
    def register(params=None) -> list[dict]:
        """Add the list's sources to ROOT/sources (pending) and cut their ids into batches."""
        from curate.ingest import register_sources
        from curate.store import Root

        root = ct.check_root(params["root"])
        sources = ct.check_local(params["sources"], ct.allowed_dirs(root), "source list")
        r = Root(root).ensure()

        def _register():
            with r.lock("ingest"):
                return register_sources(r, sources)

        batches = ct.make_batches(ct.locked(_register), params["batch_size"])
        if not batches:
            raise AirflowFailException(f"{sources} lists no sources")
        return batches

    @task_group
    def batch(b: dict):
        @task(map_index_template="{{ curate_label }}", max_active_tis_per_dagrun=PARALLEL,
              retries=3, retry_delay=timedelta(minutes=1))
        def ingest(b: dict, params=None) -> dict:
            """Fetch this batch's sources; on a retry, sources that failed for a retryable reason go again."""
            from curate.ingest import ingest as run

            ct.label(f"batch {b['index']} ({ct.plural(len(b['source_ids']), 'source')})")
            root = ct.check_root(params["root"])
            res = ct.locked(run, root, source_ids=b["source_ids"], local_dirs=ct.allowed_dirs(root),
                            retry_errors=ct.try_number() > 1).as_dict()
            return ct.require_ingested(root, b, res)

        @task(map_index_template="{{ curate_label }}", max_active_tis_per_dagrun=PARALLEL)
        def split(b: dict, ingested: dict, params=None) -> dict:
            from curate.split import split as run

            ct.label(f"batch {b['index']} ({ct.plural(ingested['sources_ok'], 'source')} ingested)")
            if params["one_pass"]:  # the embed task splits, in the same decode as the embedding
                return {"stage": "split", "one_pass": True, "sources": ingested["sources_ok"]}
            res = ct.locked(run, ct.check_root(params["root"]), source_ids=b["source_ids"],
                            detector=params["detector"], min_clip_s=params["min_clip_s"],
                            max_clip_s=params["max_clip_s"]).as_dict()
            return ct.require_some(res, f"split of batch {b['index']}")

        return split(b, ingest(b))

    # all_done: one failed batch does not stop the others from being embedded and published
    @task(**GPU, trigger_rule="all_done")
    def embed(batches: list[dict], params=None) -> dict:
        from curate.embed import embed as run

        if not batches:  # all_done also fires when register failed: its XCom is then missing
            raise AirflowFailException("register did not produce batches of sources: nothing to embed")
        root = ct.check_root(params["root"])
        ids = [s for b in batches for s in b["source_ids"]]
        options = ct.check_encoder_options(params["encoder_options"], ct.allowed_dirs(root))
        if params["one_pass"]:
            from curate.process import process

            res = ct.locked(process, root, params["encoder"], options=options, name=params["embedding_name"],
                            detector=params["detector"], min_clip_s=params["min_clip_s"],
                            max_clip_s=params["max_clip_s"], device=params["device"],
                            batch_size=params["embed_batch_size"], workers=params["decode_workers"]).as_dict()
            if ct.run_clip_count(root, ids) == 0:
                raise AirflowFailException(f"no source of this run produced a clip: {res.get('errors')}")
            return res
        if ct.run_clip_count(root, ids) == 0:
            raise AirflowFailException("no source of this run produced a clip (see the failed batches)")
        res = ct.locked(run, root, params["encoder"], options=options, name=params["embedding_name"],
                        device=params["device"], batch_size=params["embed_batch_size"]).as_dict()
        return ct.require_some(res, "embed")

    @task(**GPU)
    def caption(embedded: dict, params=None) -> dict:
        """With a ``captioner``: caption every clip (``curate caption``), then embed the generated captions with
        the run's encoder (clip vectors copied from the embed task's set: ``curate embed --caption``)."""
        if not params["captioner"]:
            return {"stage": "caption", "skipped": True}
        from curate.caption import caption as run
        from curate.embed import embed as run_embed

        root = ct.check_root(params["root"])
        dirs = ct.allowed_dirs(root)
        res = ct.require_some(ct.locked(run, root, params["captioner"], device=params["device"],
                                        options=ct.check_encoder_options(params["captioner_options"], dirs)).as_dict(),
                              "caption")
        emb = ct.locked(run_embed, root, params["encoder"], name=f"{embedded['name']}_{res['name']}",
                        caption=f"captions:{res['name']}", device=params["device"],
                        options=ct.check_encoder_options(params["encoder_options"], dirs),
                        batch_size=params["embed_batch_size"]).as_dict()
        return {**res, "caption": f"captions:{res['name']}", "embedding_name": emb["name"]}

    @task(**GPU)
    def score(embedded: dict, captioned: dict, params=None) -> dict:
        from curate.score import score as run

        root = ct.check_root(params["root"])
        options = ct.check_scorer_options(params["scorer_options"], ct.allowed_dirs(root))
        res = ct.locked(run, root, scorers=params["scorers"], encoder=embedded["name"], options=options).as_dict()
        if captioned.get("embedding_name"):  # alignment with the generated captions too
            ct.locked(run, root, scorers=["alignment"], encoder=captioned["embedding_name"])
        return ct.require_some(res, "score")

    @task(task_id="filter")
    def filter_clips(scored: dict, embedded: dict, captioned: dict, params=None) -> dict:
        from curate.filter import filter_clips as run

        return run(ct.check_root(params["root"]), params["subset"],
                   encoder=captioned.get("embedding_name") or embedded["name"], caption=captioned.get("caption"),
                   **ct.filter_kwargs(params))

    @task(outlets=[ct.SUBSETS])
    def publish(summary: dict, params=None):
        from curate.publish import publish as run

        root = ct.check_root(params["root"])
        res = ct.require_some(ct.locked(run, root, params["subset"], shard_size=params["shard_size"]).as_dict(),
                              "publish")
        yield Metadata(ct.subset_asset(params["subset"]), ct.asset_extra(root, summary, res), alias=ct.SUBSETS)
        return res

    batches = register()
    done = batch.expand(b=batches)
    embedded = embed(batches)
    done >> embedded
    captioned = caption(embedded)
    publish(filter_clips(score(embedded, captioned), embedded, captioned))


curate_pipeline()
