"""curate_inbox: run every new source list dropped into ``ROOT/inbox`` through curate_pipeline, once.

Lists (``*.csv``, ``*.jsonl``, ``*.parquet``) are identified by content hash, copied to
``inbox/.processed/<sha256>.<ext>`` and claimed atomically (``.processed/<sha256>.json``); each claimed
list triggers one ``curate_pipeline`` run whose run id derives from the hash, so a list is never run
twice, across restarts and scheduler crashes alike. Schedule: ``CURATE_INBOX_SCHEDULE`` (cron, default
every 10 minutes; ``none`` to disable).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from curate.airflow import inbox as ci
from curate.airflow import params as cp
from curate.airflow import settings as cs
from curate.airflow import tasks as ct

SCHEDULE = cs.setting("CURATE_INBOX_SCHEDULE", "*/10 * * * *")


@dag(dag_id="curate_inbox", schedule=None if SCHEDULE.lower() in ("none", "off") else SCHEDULE,
     start_date=datetime(2025, 1, 1, tzinfo=UTC), catchup=False, max_active_runs=1,
     params=cp.inbox_params(), tags=["curate"], doc_md=__doc__, default_args=ct.default_args(retries=1))
def curate_inbox():
    @task
    def claim(params=None) -> list[dict]:
        root = cs.check_root(params["root"])
        return ci.claim_inbox(root, params["subset"], params["pipeline_conf"], params["settle_s"])

    @task(trigger_rule="none_failed")  # a run that already existed is a skipped trigger: still done
    def mark_done(claims: list[dict], params=None) -> list[str]:
        return ci.mark_inbox_done(cs.check_root(params["root"]), list(claims))

    claims = claim()
    runs = TriggerDagRunOperator.partial(
        task_id="run_pipeline", trigger_dag_id="curate_pipeline", skip_when_already_exists=True,
        map_index_template="{{ task.trigger_run_id }}",
    ).expand_kwargs(claims)
    runs >> mark_done(claims)


curate_inbox()
