"""The Celery configuration of a preloading gpu worker: the Celery provider's default configuration, plus
:mod:`curate.airflow.preload` in ``imports`` (Celery imports those in the worker's main process before it forks
its pool). Point ``[celery] celery_config_options`` of the gpu workers here and name the modules in
``CURATE_CELERY_PRELOAD`` (see :mod:`curate.airflow.preload`)::

    AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=curate.airflow.celery_config.CELERY_CONFIG

Importing this module imports nothing heavy: the scheduler may read it too (it only publishes tasks).
"""

from __future__ import annotations

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

PRELOAD_MODULE = "curate.airflow.preload"

CELERY_CONFIG = {**DEFAULT_CELERY_CONFIG,
                 "imports": (*tuple(DEFAULT_CELERY_CONFIG.get("imports") or ()), PRELOAD_MODULE)}
