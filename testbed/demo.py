"""``make demo``: the whole migration on embedded defaults, end to end on real components.

Starts a legacy PACS and a target archive (real Orthanc), fills the legacy one with a synthetic
hospital archive, creates the ledger and Airflow databases on the local PostgreSQL, starts the ADT
listener, then runs the four phases as Airflow DAG runs (``airflow dags test``): audit -> plan
(prefetch) -> an admission (HL7 ADT A01) and ``pacs_prefetch`` -> ``pacs_migrate`` for the rest ->
``pacs_validate``, and finally ``pacsmig custody verify``. ``--serve`` leaves the Airflow UI and
both Orthancs running afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from testbed.orthanc import OrthancServer, free_port, wait_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG = os.environ.get("PACSMIG_DEMO_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.monotonic()


def run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    """Run a command, its output into ``log``; on failure show the tail and stop the demo."""
    with open(log, "ab") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-60:]
        print("\n".join(tail))
        raise SystemExit(f"demo step failed: {' '.join(cmd[:4])} (full log: {log})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--studies", type=int, default=int(os.environ.get("PACSMIG_DEMO_STUDIES", "100")))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PACSMIG_DATA_DIR", REPO / "data")))
    parser.add_argument("--serve", action="store_true", help="keep Airflow UI + Orthancs running at the end")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr] - progress shows as it happens

    from pacsmig.ledger import create_database
    from testbed.generator import generate

    data = args.data_dir.resolve()
    for sub in ("testbed", "audit", "plan", "staging", "transformed", "quarantine", "validation", "airflow"):
        shutil.rmtree(data / sub, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    logs = data / "demo-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    t0 = time.monotonic()

    step("testbed: legacy PACS and target archive (Orthanc)")
    storage_port, adt_port = free_port(), free_port()
    legacy = OrthancServer(data / "testbed/legacy", name="LEGACY", aet="LEGACY",
                           modalities={"pacsmig": ("PACSMIG", "127.0.0.1", storage_port)}).start()
    target = OrthancServer(data / "testbed/target", name="VNA", aet="VNA", dicomweb=True).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print(f"legacy PACS  AE LEGACY  dicom 127.0.0.1:{legacy.dicom_port}  {legacy.url}")
        print(f"target VNA   AE VNA     dicomweb {target.dicomweb_url}")

        step(f"synthetic hospital archive: {args.studies} studies (seed {args.seed})")
        truth = generate(data / "testbed/archive", studies=args.studies, seed=args.seed, workers=2)
        loaded = legacy.upload_files(truth.files)
        print(f"{truth.n_studies} studies, {truth.n_instances} instances, "
              f"{truth.total_bytes / 1e6:.1f} MB stored in the legacy PACS ({loaded} files)")

        step("ledger and Airflow metadata databases (PostgreSQL)")
        ledger_dsn = create_database(PG, "pacsmig_demo", drop=True)
        airflow_dsn = create_database(PG, "pacsmig_demo_airflow", drop=True)
        env = dict(os.environ)
        env.update({
            "AIRFLOW_HOME": str(data / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_dsn.replace("postgresql://", "postgresql+psycopg2://"),
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "PACSMIG_DATA_DIR": str(data),
            "PACSMIG_MPI_CROSSWALK": str(truth.crosswalk_path),
            "AIRFLOW_CONN_LEGACY_PACS": legacy.dicom_connection(storage_port).to_json(),
            "AIRFLOW_CONN_TARGET_ARCHIVE": target.dicomweb_connection().to_json(),
            "AIRFLOW_CONN_MIGRATION_LEDGER": ledger_dsn,
        })
        airflow = str(BIN / "airflow")
        run([airflow, "db", "migrate"], env, logs / "airflow-db.log")
        run([airflow, "pools", "set", "legacy_pacs", "4", "associations the legacy PACS tolerates"], env,
            logs / "airflow-db.log")
        run([str(BIN / "pacsmig"), "ledger", "migrate"], env, logs / "ledger.log")

        step(f"ADT listener (HL7 v2 MLLP) on 127.0.0.1:{adt_port}")
        adt_log = open(logs / "adt-listener.log", "ab")  # noqa: SIM115 - child's lifetime
        procs.append(subprocess.Popen([str(BIN / "pacsmig"), "adt-listener", "--host", "127.0.0.1",
                                       "--port", str(adt_port)], env=env, stdout=adt_log,
                                      stderr=subprocess.STDOUT))
        try:
            wait_port(adt_port, interval=0.2)
        except RuntimeError:
            raise SystemExit(f"ADT listener did not open port {adt_port}") from None

        t = step("Phase 1: pacs_audit (C-FIND inventory, ID health, private tags, assessment)")
        run([airflow, "dags", "test", "pacs_audit"], env, logs / "pacs_audit.log")
        assessment = json.loads((data / "audit/assessment.json").read_text())
        print(f"inventory: {assessment['studies']} studies, {assessment['instances']} instances "
              f"({time.monotonic() - t:.0f}s) -> {data / 'audit/assessment.html'}")

        t = step("Phase 2: pacs_plan (strategy prefetch)")
        run([airflow, "dags", "test", "pacs_plan", "-c", json.dumps({"strategy": "prefetch"})], env,
            logs / "pacs_plan.log")
        plan = json.loads((data / "plan/plan.json").read_text())
        print(f"{plan['studies_queued']} studies queued, ETA {plan['eta_hours']} h; next: {plan['commands'][0]}")

        step("an admission: HL7 ADT^A01 for a patient with priors, then pacs_prefetch")
        from pacsmig.adt.send import build_adt, send_adt

        admitted = next(s for s in truth.studies if s.mpi_patient_id)
        ack = send_adt("127.0.0.1", adt_port, build_adt("A01", admitted.mpi_patient_id, "DEMO0001"))
        print("ADT A01 acknowledged:", ack.split("\r")[1] if "\r" in ack else ack)
        run([airflow, "dags", "test", "pacs_prefetch"], env, logs / "pacs_prefetch.log")

        t = step("Phase 3: pacs_migrate (everything still queued, then the undated studies)")
        run([airflow, "dags", "test", "pacs_migrate", "-c", json.dumps({"all_queued": True})], env,
            logs / "pacs_migrate.log")
        print(f"migration run finished in {time.monotonic() - t:.0f}s")

        t = step("Phase 4: pacs_validate (read back from the target, pixel hashes, custody)")
        run([airflow, "dags", "test", "pacs_validate"], env, logs / "pacs_validate.log")
        summary = json.loads((data / "validation/summary.json").read_text())
        print(json.dumps(summary, indent=2))

        step("pacsmig custody verify")
        run([str(BIN / "pacsmig"), "custody", "verify"], env, logs / "custody.log")
        print((logs / "custody.log").read_text().strip().splitlines()[-1])

        _print_ledger(ledger_dsn, truth, target)
        print(f"\nreports: {data / 'audit/assessment.html'}\n         {data / 'validation'}")
        print(f"demo finished in {time.monotonic() - t0:.0f}s; logs in {logs}")
        if args.serve:
            _serve(data, airflow_dsn, env)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        legacy.stop()
        target.stop()
    return 0


def _print_ledger(dsn: str, truth: object, target: OrthancServer) -> None:
    from pacsmig.ledger import Ledger

    with Ledger(dsn) as ledger:
        rows = ledger.query("SELECT state, reason, count(*) AS n, sum(expected_instances) AS inst "
                            "FROM studies GROUP BY 1, 2 ORDER BY 1, 2")
    print("\nledger:")
    for r in rows:
        print(f"  {r['state']:<12} {r['reason'] or '':<22} {r['n']:>5} studies {r['inst'] or 0:>7} instances")
    print(f"target archive holds {target.count('instances')} instances "
          f"(legacy: {getattr(truth, 'n_instances', '?')})")


def _serve(data: Path, airflow_dsn: str, env: dict[str, str]) -> None:
    from testbed.airflow_stack import AirflowStack

    stack = AirflowStack(data / "airflow", airflow_dsn.replace("postgresql://", "postgresql+psycopg2://"),
                         extra_env={k: v for k, v in env.items() if k.startswith(("AIRFLOW_CONN_", "PACSMIG_"))},
                         api_port=8080)
    with stack:
        print(f"\nAirflow UI: http://127.0.0.1:{stack.api_port}  (Ctrl-C to stop everything)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    sys.exit(main())
