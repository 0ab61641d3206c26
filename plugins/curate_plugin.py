from curate.airflow.plugin import CuratePlugin  # noqa: F401  (re-export for $AIRFLOW_HOME/plugins)
