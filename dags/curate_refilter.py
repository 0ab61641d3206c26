"""curate_refilter: publish a new subset from the stored scores with other thresholds.

filter -> publish only: embeddings and scores are read, never recomputed, so trying thresholds costs
seconds. Trigger it with params (root, subset, min_sim, min_duration, max_duration), or set
``CURATE_REFILTER_ON=<subset>[,<subset>...]`` to run it whenever one of those subsets is published
(the root then comes from the triggering asset event, the thresholds from the param defaults).
"""

from __future__ import annotations

import functools
import operator

from airflow.sdk import Metadata, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from curate.airflow import params as cp
from curate.airflow import settings as cs
from curate.airflow import tasks as ct

WATCH = [ct.subset_asset(s) for s in cs.split_list(cs.setting("CURATE_REFILTER_ON"))]


@dag(dag_id="curate_refilter", schedule=functools.reduce(operator.or_, WATCH) if WATCH else None, catchup=False,
     params=cp.refilter_params(), tags=["curate"], doc_md=__doc__, default_args=ct.default_args(retries=1))
def curate_refilter():
    @task
    def target(params=None) -> str:
        """The root to refilter: the triggering event's root, else the ``root`` param."""
        event_root, event_subset = ct.triggering_root(get_current_context())
        if event_subset and event_subset == params["subset"]:
            raise AirflowFailException(f"subset {params['subset']!r} would re-trigger this DAG: pick another name")
        return cs.check_root(event_root or params["root"])

    @task(task_id="filter")
    def filter_clips(root: str, params=None) -> dict:
        from curate.stages.filter import filter_clips as run

        return run(root, params["subset"], encoder=params["encoder"], **cp.filter_kwargs(params)).as_dict()

    @task(outlets=[ct.SUBSETS])
    def publish(root: str, summary: dict, params=None):
        from curate.stages.publish import publish as run

        res = ct.require_some(ct.locked(run, root, params["subset"], shard_size=params["shard_size"]).as_dict(),
                              "publish")
        yield Metadata(ct.subset_asset(params["subset"]), ct.asset_extra(root, summary, res), alias=ct.SUBSETS)
        return res

    root = target()
    publish(root, filter_clips(root))


curate_refilter()
