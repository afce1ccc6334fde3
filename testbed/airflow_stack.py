"""Run a real Airflow 3 stack (api-server, scheduler, dag-processor, triggerer) as child processes.

Used by the scheduler-path tests, the benchmark and ``make demo --serve``. LocalExecutor on the
real PostgreSQL; every process shares one environment (one JWT secret, so workers can talk to the
execution API), listens on loopback, and is stopped at exit.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from testbed.orthanc import free_port

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
REPO = Path(__file__).resolve().parents[1]


def airflow_env(home: Path, sql_alchemy_conn: str, *, api_port: int = 8080, dags_folder: Path | None = None,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every Airflow process of one stack shares."""
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder or REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "8"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        # DAG files are parsed once at start; re-parsing every few seconds costs a core here.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "300",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "300",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET") or secrets.token_hex(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    })
    env.update(extra or {})
    return env


def _json_rows(out: str) -> list[dict[str, object]]:
    """The JSON array an ``airflow ... -o json`` command printed (warnings may precede it)."""
    for line in reversed(out.splitlines()):
        if line.startswith("["):
            try:
                return list(json.loads(line))
            except json.JSONDecodeError:
                return []
    return []


@dataclass
class AirflowStack:
    """A running Airflow: ``start()`` migrates the DB and starts the components; ``stop()`` ends them."""

    home: Path
    sql_alchemy_conn: str
    dags_folder: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    components: tuple[str, ...] = ("api-server", "scheduler", "dag-processor", "triggerer")
    api_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run one ``airflow`` CLI command in this stack's environment."""
        proc = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self, timeout: float = 120) -> AirflowStack:
        self.home.mkdir(parents=True, exist_ok=True)
        self.api_port = self.api_port or free_port()
        self.env = airflow_env(self.home, self.sql_alchemy_conn, api_port=self.api_port,
                               dags_folder=self.dags_folder, extra=self.extra_env)
        self.cli("db", "migrate")
        for name in self.components:
            args = [name] + (["--port", str(self.api_port), "--host", "127.0.0.1"] if name == "api-server" else [])
            log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            self.processes[name] = subprocess.Popen([AIRFLOW, *args], env=self.env, stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if requests.get(f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Airflow api-server did not answer within {timeout}s (logs in {self.home})")

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}; see {self.home / (name + '.log')}")

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Until the dag-processor has serialised ``dag_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if any(d.get("dag_id") == dag_id for d in _json_rows(self.cli("dags", "list", "-o", "json",
                                                                          check=False).stdout)):
                return
            time.sleep(2)
        raise TimeoutError(f"DAG {dag_id} not parsed within {timeout}s")

    def dag_runs(self, dag_id: str) -> list[dict[str, object]]:
        return _json_rows(self.cli("dags", "list-runs", dag_id, "-o", "json", check=False).stdout)

    def wait_for_runs(self, dag_id: str, count: int, timeout: float = 600, prefix: str = ""
                      ) -> list[dict[str, object]]:
        """Until ``count`` runs of ``dag_id`` (run ids starting with ``prefix``) are finished; returns them."""
        deadline = time.monotonic() + timeout
        runs: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            self._check_alive()
            runs = [r for r in self.dag_runs(dag_id) if str(r.get("run_id", "")).startswith(prefix)]
            done = [r for r in runs if r.get("state") in ("success", "failed")]
            if len(done) >= count:
                return runs
            time.sleep(2)
        raise TimeoutError(f"{dag_id}: runs not finished within {timeout}s: {runs}")

    def stop(self) -> None:
        import signal

        for proc in self.processes.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.processes.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
