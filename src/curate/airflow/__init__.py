"""Apache Airflow 3 integration of curate: DAG helpers (:mod:`curate.airflow.tasks`) and the UI plugin
(:mod:`curate.airflow.plugin`). The DAG files live in ``dags/``; every stage is a curate function."""
