"""Apache Airflow 3 integration of curate: what the DAG files in ``dags/`` wire together. :mod:`~curate.airflow.settings`
(settings, roots, the paths a run may touch), :mod:`~curate.airflow.params` (the DAG params, generated from the stage
option declarations), :mod:`~curate.airflow.tasks` (retries, batching, GPU slots, result checks, assets),
:mod:`~curate.airflow.inbox` (lists dropped into ROOT/inbox, run once), :mod:`~curate.airflow.plugin` (the Curation UI)
and :mod:`~curate.airflow.localcluster` (a CeleryExecutor cluster on 127.0.0.1). Every task calls a curate stage."""
