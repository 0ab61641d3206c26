"""A real Airflow cluster on one machine: PostgreSQL, Redis, scheduler, dag-processor, API server and Celery
workers (one on the default queue, N on the ``gpu`` queue), all on 127.0.0.1 with throw-away data dirs.

What ``scripts/cluster.sh`` starts for users, what ``tests/test_cluster.py`` proves the pipeline on and
what ``bench/bench_cluster.py`` measures. Every worker gets its own name (``--celery-hostname`` and, through
``[core] hostname_callable``, the ``hostname`` recorded on the task instances it runs), so the metadata DB
says which worker ran what. With ``cuda=True`` gpu worker ``i`` sees only GPU ``i`` (CUDA_VISIBLE_DEVICES).

    python -m curate.airflow.localcluster up --dir /tmp/cluster --gpu-workers 2

PostgreSQL refuses to run as root: as root, its data dir is made under /tmp and the server runs as
``nobody`` (``runuser``). Nothing here is for production: no passwords (trust auth on loopback), fsync off.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PG_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")


def worker_name() -> str:
    """``[core] hostname_callable`` of the cluster's workers: the name the worker was started with."""
    return os.environ.get("CURATE_WORKER_NAME") or socket.getfqdn()


def find_binaries() -> dict[str, str] | None:
    """Paths of redis-server, initdb and postgres; None when one is missing (scripts/system-deps.sh installs them)."""
    redis = shutil.which("redis-server")
    pg = next((d for d in PG_BIN_DIRS if Path(d, "initdb").exists()), None)
    if pg is None and shutil.which("initdb"):
        pg = str(Path(shutil.which("initdb")).parent)
    if not redis or not pg:
        return None
    return {"redis": redis, "initdb": str(Path(pg, "initdb")), "postgres": str(Path(pg, "postgres"))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """Start with :meth:`start` (or ``with LocalCluster(...) as c``), stop with :meth:`stop`.

    Every process gets this process's environment plus ``env`` (``CURATE_ROOTS``, ``CURATE_ALLOWED_DIRS``, and
    for a root in a bucket the usual ``AWS_ENDPOINT_URL`` / ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
    ``AWS_REGION``); ``up``'s ``cluster.env`` holds only the Airflow settings, never those.
    """

    def __init__(self, base: str | os.PathLike, *, dags_folder: str | os.PathLike, gpu_workers: int = 2,
                 default_concurrency: int = 2, gpu_pool_slots: int | None = None, heartbeat_timeout_s: int = 20,
                 cuda: bool = False, env: dict[str, str] | None = None, api_port: int | None = None,
                 preload: str | None = None) -> None:
        self.base = Path(base).resolve()
        self.base.mkdir(parents=True, exist_ok=True)
        self.home = self.base / "airflow_home"
        self.logs = self.base / "logs"
        self.home.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.gpu_workers = gpu_workers
        self.default_concurrency = default_concurrency
        self.gpu_pool_slots = gpu_pool_slots if gpu_pool_slots is not None else gpu_workers
        self.cuda = cuda
        self.preload = preload
        bins = find_binaries()
        if bins is None:
            raise RuntimeError("redis-server and PostgreSQL are needed (Debian: apt-get install redis-server "
                               "postgresql; or scripts/system-deps.sh)")
        self.bins = bins
        self.pg_port, self.redis_port = free_port(), free_port()
        self.api_port = api_port or free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self._pg_dir: Path | None = None
        db = f"airflow@127.0.0.1:{self.pg_port}/postgres"
        self.db_url = f"postgresql://{db}"
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(Path(dags_folder).resolve()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{db}",
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # a worker that dies (SIGKILL, lost machine) is noticed when its task's heartbeats stop
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(heartbeat_timeout_s),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "curate.airflow.localcluster.worker_name",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",  # one torch thread per worker
            **(env or {}),
        }
        self.env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, wait_for_dag: str | None = "curate_pipeline", timeout_s: float = 240) -> None:
        try:
            self._start_postgres()
            self._start_redis()
            self.airflow("db", "migrate")
            self.airflow("pools", "set", "gpu", str(self.gpu_pool_slots), "GPU slots (one per gpu worker)")
            for name in ("scheduler", "dag-processor", "api-server"):
                self._spawn(name, [sys.executable, "-m", "airflow", name])
            self.start_worker("default", "default", concurrency=self.default_concurrency)
            for i in range(1, self.gpu_workers + 1):
                self.start_worker(f"gpu{i}", "gpu", concurrency=1,
                                  env={"CUDA_VISIBLE_DEVICES": str(i - 1)} if self.cuda else None)
            self._wait_api(timeout_s)
            if wait_for_dag:
                self.wait_for_dag(wait_for_dag, timeout_s)
        except BaseException:
            self.stop()
            raise

    def start_worker(self, name: str, queue: str, concurrency: int = 1, env: dict[str, str] | None = None) -> None:
        """One Celery worker named ``name`` on ``queue`` (``airflow celery worker -q QUEUE -c N``)."""
        self._spawn(f"worker-{name}", [sys.executable, "-m", "airflow", "celery", "worker", "-q", queue,
                                       "-c", str(concurrency), "--celery-hostname", f"{name}@%h", "--skip-serve-logs"],
                    env=self.worker_env(name, queue, env))

    def worker_env(self, name: str, queue: str, env: dict[str, str] | None = None) -> dict[str, str]:
        """What a worker gets on top of the cluster's environment: its name, and on the gpu queue with
        ``preload`` the Celery configuration that imports those modules before the pool forks
        (:mod:`curate.airflow.preload`)."""
        out = {"CURATE_WORKER_NAME": name}
        if self.preload and queue == "gpu":
            out |= {"AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "curate.airflow.celery_config.CELERY_CONFIG",
                    "CURATE_CELERY_PRELOAD": self.preload}
        return out | (env or {})

    def worker_pids(self, name: str) -> set[int]:
        """The pids of worker ``name`` and every process under it (its pool and the tasks it runs)."""
        import psutil

        p = self.procs.get(f"worker-{name}")
        try:
            return {p.pid, *(c.pid for c in psutil.Process(p.pid).children(recursive=True))} if p else set()
        except psutil.NoSuchProcess:
            return set()

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL worker ``name`` and every process under it (its pool and the task it runs): a lost machine."""
        import psutil

        p = self.procs.pop(f"worker-{name}")
        try:
            victims = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            victims = []
        for v in victims:
            try:
                v.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        p.wait(timeout=30)
        return [v.pid for v in victims]

    def stop(self) -> None:
        """Stop every process (workers first), then remove PostgreSQL's data dir when it was made under /tmp."""
        order = sorted(self.procs, key=lambda n: (not n.startswith("worker"), n in ("postgres", "redis")))
        for name in order:
            self._terminate(self.procs[name])
        self.procs.clear()
        if self._pg_dir is not None:
            shutil.rmtree(self._pg_dir, ignore_errors=True)
            self._pg_dir = None

    @staticmethod
    def _terminate(p: subprocess.Popen, grace_s: float = 10) -> None:
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)

    # ------------------------------------------------------------------ parts
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None, user: str | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        self.procs[name] = subprocess.Popen(cmd, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, cwd=self.base)
        log.close()

    def _start_postgres(self) -> None:
        user = None
        if os.geteuid() == 0:  # PostgreSQL refuses root: run it as nobody from a dir nobody can reach
            import pwd

            self._pg_dir = Path(tempfile.mkdtemp(prefix="curate-pg-"))
            self._pg_dir.chmod(0o755)
            data = self._pg_dir / "data"
            data.mkdir()
            nobody = pwd.getpwnam("nobody")
            os.chown(data, nobody.pw_uid, nobody.pw_gid)
            user = "nobody"
        else:
            data = self.base / "pgdata"
        cmd = [self.bins["initdb"], "-D", str(data), "-U", "airflow", "-A", "trust", "-E", "UTF8", "--no-sync"]
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd="/")
        self._spawn("postgres", [self.bins["postgres"], "-D", str(data), "-p", str(self.pg_port), "-h", "127.0.0.1",
                                 "-k", str(data), "-c", "fsync=off", "-c", "synchronous_commit=off",
                                 "-c", "full_page_writes=off", "-c", "max_connections=200"], user=user)
        self._wait(lambda: self._pg_ready(), 60, "PostgreSQL")

    def _pg_ready(self) -> bool:
        try:
            self.query("select 1")
            return True
        except Exception:  # noqa: BLE001  (not accepting connections yet)
            return False

    def _start_redis(self) -> None:
        self._spawn("redis", [self.bins["redis"], "--port", str(self.redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"])

        def ready() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        self._wait(ready, 30, "Redis")

    def _wait_api(self, timeout_s: float) -> None:
        import urllib.request

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health", timeout=2):
                    return True
            except OSError:
                return False

        self._wait(ready, timeout_s, "the API server")

    def _wait(self, ok, timeout_s: float, what: str) -> None:
        t0 = time.monotonic()
        while not ok():
            for name, p in self.procs.items():
                if p.poll() is not None and name in ("postgres", "redis", "scheduler", "api-server", "dag-processor"):
                    raise RuntimeError(f"{name} exited ({p.returncode}); see {self.logs / (name + '.log')}")
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{what} did not come up within {timeout_s:.0f} s (logs: {self.logs})")
            time.sleep(0.3)

    # ------------------------------------------------------------------ using it
    def airflow(self, *args: str, timeout_s: float = 300) -> str:
        p = subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout_s, cwd=self.base)
        if p.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return p.stdout

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of a query on the metadata DB (task_instance, task_instance_history, dag_run ...)."""
        import psycopg2

        with psycopg2.connect(self.db_url, connect_timeout=3) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def wait_for_dag(self, dag_id: str, timeout_s: float = 240) -> None:
        """Until the dag-processor has serialized ``dag_id`` (a trigger before that fails)."""
        def parsed() -> bool:
            try:
                return bool(self.query("select 1 from serialized_dag where dag_id = %s", (dag_id,)))
            except Exception:  # noqa: BLE001
                return False

        self._wait(parsed, timeout_s, f"DAG {dag_id}")

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str) -> str:
        self.airflow("dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf))
        return run_id

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("select state from dag_run where dag_id = %s and run_id = %s", (dag_id, run_id))
        return rows[0][0] if rows else None

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float = 600, on_poll=None) -> str:
        """Until the run ends; ``on_poll()`` is called between polls (e.g. to kill a worker at the right time)."""
        t0 = time.monotonic()
        while True:
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"run {run_id} still {state} after {timeout_s:.0f} s (logs: {self.logs})")
            if on_poll is not None:
                on_poll()
            time.sleep(0.25)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every try of every task of a run (earlier tries from task_instance_history): task_id, map_index,
        try_number, state, hostname, queue, start_date, end_date."""
        cols = "task_id, map_index, try_number, state, hostname, queue, start_date, end_date"
        rows = self.query(f"select {cols} from task_instance where dag_id = %s and run_id = %s "
                          f"union all select {cols} from task_instance_history where dag_id = %s and run_id = %s",
                          (dag_id, run_id, dag_id, run_id))
        names = [c.strip() for c in cols.split(",")]
        return sorted((dict(zip(names, r)) for r in rows), key=lambda t: (t["task_id"], t["map_index"], t["try_number"]))


def arg_parser():
    """The command line of ``python -m curate.airflow.localcluster`` (``scripts/cluster.sh``)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m curate.airflow.localcluster",
                                 description="Start a local Airflow CeleryExecutor cluster for curate (Ctrl-C stops it).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start PostgreSQL, Redis, scheduler, dag-processor, API server and workers")
    up.add_argument("--dir", required=True, help="directory for AIRFLOW_HOME and logs (PostgreSQL's data too, "
                                                  "unless run as root)")
    up.add_argument("--dags", default=str(Path(__file__).resolve().parents[3] / "dags"), help="DAG folder")
    up.add_argument("--gpu-workers", type=int, default=2, help="Celery workers on the gpu queue (one per GPU)")
    up.add_argument("--cuda", action="store_true", help="gpu worker i sees only GPU i (CUDA_VISIBLE_DEVICES)")
    up.add_argument("--port", type=int, default=8080, help="API server / UI port")
    up.add_argument("--heartbeat-timeout", type=int, default=60,
                    help="seconds without heartbeats before a task of a dead worker is failed and retried")
    up.add_argument("--preload", nargs="?", const="1", default=None, metavar="MODULES",
                    help="gpu workers import these modules (comma-separated; none given: torch, torchvision, "
                         "open_clip) before forking their pool: slot tasks start with them imported")
    return ap


def _main(argv: list[str] | None = None) -> None:
    a = arg_parser().parse_args(argv)
    c = LocalCluster(a.dir, dags_folder=a.dags, gpu_workers=a.gpu_workers, cuda=a.cuda, api_port=a.port,
                     heartbeat_timeout_s=a.heartbeat_timeout, preload=a.preload)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    c.start(wait_for_dag=None)
    keys = [k for k in c.env if k.startswith("AIRFLOW") and "SECRET" not in k]
    env_file = Path(a.dir) / "cluster.env"
    env_file.write_text("".join(f"export {k}={json.dumps(c.env[k])}\n" for k in keys))
    print(f"cluster up: UI and API http://127.0.0.1:{c.api_port}/  workers: default, "
          + ", ".join(f"gpu{i}" for i in range(1, a.gpu_workers + 1))
          + (f" (preloading {a.preload if a.preload != '1' else 'torch, torchvision, open_clip'})" if a.preload else "")
          + f"\n  logs: {c.logs}\n  to use the airflow CLI against it: source {env_file}\n  Ctrl-C stops it", flush=True)
    try:
        while not stop["now"]:
            dead = [n for n, p in c.procs.items() if p.poll() is not None]
            if dead:
                print(f"exited: {', '.join(dead)} (see {c.logs}); stopping", file=sys.stderr)
                break
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()


if __name__ == "__main__":
    _main()
