"""The four benchmarked paths, each moving the same archive into a fresh target of its own.

(a) dcmtk storescu -> storescp (the practical limit here), (b) Orthanc -> Orthanc native C-STORE
(what a user would pick instead), (c) the engine end to end through a real Airflow scheduler, and
(d) the engine's data path alone (the same pipeline functions, no Airflow).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import requests

from bench.archive import BenchArchive
from bench.procstats import ProcessSampler, default_classifier
from testbed.orthanc import OrthancServer, free_port, wait_port

log = logging.getLogger(__name__)

PG_ADMIN = os.environ.get("PACSMIG_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
#: Concurrent associations / task slots on every path (the DESIGN's measurements used 4).
PARALLEL = 4
#: Orthanc slows past ~20 studies per /modalities/x/store request.
ORTHANC_STUDIES_PER_REQUEST = 20


def _result(
    name: str, archive: BenchArchive, stats: dict[str, Any], received: int, **extra: Any
) -> dict[str, Any]:
    """One path's figures: rates from the wall time, CPU per image per process group."""
    wall = float(extra.pop("wall_s", stats["wall_s"]))
    images, mb = archive.n_instances, archive.total_bytes / 1e6
    return {
        "path": name,
        "images": images,
        "received": received,
        "lost": images - received,
        "megabytes": round(mb, 2),
        "wall_s": round(wall, 3),
        "images_per_s": round(images / wall, 2) if wall else None,
        "mb_per_s": round(mb / wall, 2) if wall else None,
        "cpu_ms_per_image": {g: round(1000 * v / images, 3) for g, v in stats["cpu_s"].items()},
        "cpu_ms_per_image_total": round(1000 * stats["cpu_s_total"] / images, 3),
        **{k: v for k, v in stats.items() if k != "wall_s"},
        "sampled_wall_s": stats["wall_s"],
        **extra,
    }


def _fresh_target(work: Path, name: str) -> OrthancServer:
    shutil.rmtree(work / name, ignore_errors=True)
    return OrthancServer(work / name, name=name.upper(), aet=name.upper()[:16], dicomweb=True).start()


# --- (a) dcmtk ---------------------------------------------------------------------------------
def run_dcmtk(archive: BenchArchive, work: Path, legacy: OrthancServer) -> dict[str, Any]:
    """storescu x PARALLEL -> storescp --fork, TCP_NODELAY=1 (dcmtk reads it from the environment)."""
    out = work / "dcmtk_received"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    env = dict(os.environ, TCP_NODELAY="1")
    scp = subprocess.Popen(
        ["storescp", "--fork", "+xa", "-pm", "-aet", "DCMTKSCP", "-od", str(out), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(port)
        jobs = _storescu_jobs(archive.files, port)
        sampler = ProcessSampler(default_classifier({legacy.process.pid: "orthanc_source"})).start()
        with ThreadPoolExecutor(PARALLEL) as pool:
            outcomes = list(pool.map(_run_storescu, jobs, [env] * len(jobs)))
        deadline = time.monotonic() + 30
        while _count_files(out) < archive.n_instances and time.monotonic() < deadline:
            time.sleep(0.05)  # storescp's forked children may still be writing the last file
        stats = sampler.stop()
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    failed = [err for rc, err in outcomes if rc != 0]
    received = _count_files(out)
    shutil.rmtree(out, ignore_errors=True)
    return _result(
        "a_dcmtk",
        archive,
        stats,
        received,
        associations=len(jobs),
        parallel=PARALLEL,
        storescu_errors=failed[:5],
    )


#: storescu proposes one compressed syntax per run (plus the uncompressed ones): one flag per group.
_STORESCU_TS_FLAG = {
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
}


def _storescu_jobs(files: list[Path], port: int) -> list[list[str]]:
    """storescu command lines: files grouped by transfer syntax, each group over PARALLEL associations."""
    import pydicom

    groups: dict[str, list[Path]] = {}
    for path in files:
        ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(_STORESCU_TS_FLAG.get(ts, "-x="), []).append(path)
    jobs = []
    for flag, paths in sorted(groups.items()):
        for i in range(PARALLEL):
            chunk = paths[i::PARALLEL]
            if chunk:
                jobs.append(
                    [
                        "storescu",
                        "-R",
                        flag,
                        "-aet",
                        "BENCHSCU",
                        "-aec",
                        "DCMTKSCP",
                        "127.0.0.1",
                        str(port),
                        *map(str, chunk),
                    ]
                )
    return jobs


def _run_storescu(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc.returncode, proc.stderr.decode(errors="replace").strip()[-300:]


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


# --- (b) Orthanc native --------------------------------------------------------------------------
def run_orthanc_native(archive: BenchArchive, work: Path, legacy: OrthancServer) -> dict[str, Any]:
    """``POST /modalities/{id}/store``, ~20 studies per request, PARALLEL requests at once."""
    target = _fresh_target(work, "target_b")
    try:
        modality = f"bench_{uuid.uuid4().hex[:6]}"
        legacy.add_modality(modality, target.aet, "127.0.0.1", target.dicom_port)
        studies = requests.get(f"{legacy.url}/studies", timeout=30).json()
        batches = [
            studies[i : i + ORTHANC_STUDIES_PER_REQUEST]
            for i in range(0, len(studies), ORTHANC_STUDIES_PER_REQUEST)
        ]
        session = requests.Session()

        def store(batch: list[str]) -> dict[str, Any]:
            resp = session.post(
                f"{legacy.url}/modalities/{modality}/store",
                json={"Resources": batch, "Synchronous": True},
                timeout=3600,
            )
            resp.raise_for_status()
            return resp.json()

        sampler = ProcessSampler(
            default_classifier({legacy.process.pid: "orthanc_source", target.process.pid: "orthanc_target"})
        ).start()
        with ThreadPoolExecutor(PARALLEL) as pool:
            answers = list(pool.map(store, batches))
        stats = sampler.stop()
        received = target.count()
        requests.delete(f"{legacy.url}/modalities/{modality}", timeout=10)
    finally:
        target.stop()
        shutil.rmtree(work / "target_b", ignore_errors=True)
    return _result(
        "b_orthanc_native",
        archive,
        stats,
        received,
        requests=len(batches),
        studies_per_request=ORTHANC_STUDIES_PER_REQUEST,
        failed_instances=sum(int(a.get("FailedInstancesCount", 0) or 0) for a in answers),
    )


# --- shared by (c) and (d) -----------------------------------------------------------------------
def _engine_setup(
    archive: BenchArchive, work: Path, legacy: OrthancServer, name: str
) -> tuple[OrthancServer, str, Path, dict[str, str]]:
    """A fresh target, ledger database and data folder; the environment the engine reads."""
    from pacsmig.ledger import Ledger, create_database

    target = _fresh_target(work, f"target_{name}")
    dsn = create_database(PG_ADMIN, f"pacsmig_bench_{name}", drop=True)
    # Schema first: unpausing pacs_migrate schedules its latest interval, which reads the ledger.
    with Ledger(dsn) as ledger:
        ledger.migrate()
    data = work / f"data_{name}"
    shutil.rmtree(data, ignore_errors=True)
    (data / "audit").mkdir(parents=True)
    shutil.copy(archive.inventory_path, data / "audit" / "inventory.parquet")
    storage_port = legacy.modalities["pacsmig"][2]
    env = {
        "AIRFLOW_CONN_LEGACY_PACS": legacy.dicom_connection(storage_port, timeout=60).to_json(),
        "AIRFLOW_CONN_TARGET_ARCHIVE": target.dicomweb_connection().to_json(),
        "AIRFLOW_CONN_MIGRATION_LEDGER": dsn,
        "PACSMIG_DATA_DIR": str(data),
        "PACSMIG_MPI_CROSSWALK": str(archive.crosswalk_path),
    }
    return target, dsn, data, env


def _drop_database(dsn: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    conn.close()


def ledger_outcome(dsn: str) -> dict[str, Any]:
    """What the ledger says happened: states, quarantine reasons, re-pulls and instances never received."""
    from pacsmig.ledger import Ledger

    with Ledger(dsn) as ledger:
        states = {
            r["state"]: int(r["n"])
            for r in ledger.query("SELECT state, count(*) AS n FROM studies GROUP BY state ORDER BY state")
        }
        quarantine = {
            r["reason"]: int(r["n"])
            for r in ledger.query(
                "SELECT reason, count(*) AS n FROM quarantine GROUP BY reason ORDER BY reason"
            )
        }
        moves = ledger.query(
            "SELECT count(*) FILTER (WHERE (details->>'attempts')::int > 1) AS repulled, "
            "coalesce(sum((details->>'attempts')::int), 0) AS requests, "
            "coalesce(sum((details->>'missing')::int), 0) AS missing, "
            "coalesce(sum((details->>'received')::int), 0) AS received "
            "FROM custody WHERE details ? 'attempts' AND details ? 'received'"
        )[0]
        verified = (
            ledger.query("SELECT count(*) AS n FROM instances WHERE verify_status = 'verified'")
            if _has_column(ledger, "instances", "verify_status")
            else None
        )
    return {
        "states": states,
        "quarantine": quarantine,
        "extract": {k: int(v) for k, v in moves.items()},
        "instances_verified": int(verified[0]["n"]) if verified else None,
    }


def _has_column(ledger: Any, table: str, column: str) -> bool:
    return bool(
        ledger.query(
            "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
            (table, column),
        )
    )


# --- (d) the engine's data path alone ------------------------------------------------------------
_STAGES: dict[str, float] = {}


def _timed(name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _STAGES[name] = _STAGES.get(name, 0.0) + time.perf_counter() - t0

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def _instrument() -> None:
    """Worker initializer: time the pipeline's steps around the engine's own functions."""
    from pacsmig.dicom import retrieve as retrieve_mod
    from pacsmig.load.dicomweb import DicomWebDestination
    from pacsmig.migrate import pipeline

    logging.basicConfig(level=logging.WARNING)
    retrieve_mod.list_study_instances = _timed("find", retrieve_mod.list_study_instances)
    retrieve_mod.retrieve = _timed("move", retrieve_mod.retrieve)
    pipeline._hash_many = _timed("hash", pipeline._hash_many)
    DicomWebDestination._put = _timed("stow", DicomWebDestination._put)
    DicomWebDestination._list = _timed("confirm", DicomWebDestination._list)


def _migrate_one(ctx: Any, study_instance_uid: str) -> dict[str, Any]:
    """extract -> transform -> load for one study, as the DAG's tasks do (one retry, resuming)."""
    from pacsmig.migrate.pipeline import extract_study, load_study, transform_study

    _STAGES.clear()
    error, tries = None, 0
    for attempt in range(2):
        tries = attempt + 1
        try:
            for name, step in (
                ("extract", extract_study),
                ("transform", transform_study),
                ("load", load_study),
            ):
                t0 = time.perf_counter()
                step(ctx, study_instance_uid)
                _STAGES[name] = _STAGES.get(name, 0.0) + time.perf_counter() - t0
            error = None
            break
        except Exception as exc:  # noqa: BLE001 - reported per study; the ledger holds the reason
            error = f"{type(exc).__name__}: {exc}"[:300]
    return {"study_instance_uid": study_instance_uid, "tries": tries, "error": error, "stages": dict(_STAGES)}


def run_engine_direct(archive: BenchArchive, work: Path, legacy: OrthancServer) -> dict[str, Any]:
    """The DAGs' functions called directly: plan, migrate_study steps in PARALLEL processes, validation."""
    from pacsmig.config import ConnectionSpec, DicomNode
    from pacsmig.ledger import Ledger
    from pacsmig.migrate.pipeline import MigrationContext, select_studies
    from pacsmig.transform.rules import default_rules_path

    target, dsn, data, env = _engine_setup(archive, work, legacy, "d")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        source = DicomNode.from_connection(
            ConnectionSpec.from_json("legacy_pacs", env["AIRFLOW_CONN_LEGACY_PACS"])
        )
        conn = ConnectionSpec.from_json("target_archive", env["AIRFLOW_CONN_TARGET_ARCHIVE"])
        ctx = MigrationContext(
            ledger_dsn=dsn,
            source=source,
            targets=[conn],
            rules_path=default_rules_path(),
            data_dir=data,
            hash_workers=int(os.environ.get("PACSMIG_HASH_WORKERS", "1")),
        )
        # Spawned (not forked) and warmed up before the clock starts: Airflow's workers are also
        # long-lived processes, and this path is about the data path's own cost.
        pool = ProcessPoolExecutor(
            PARALLEL, mp_context=multiprocessing.get_context("spawn"), initializer=_instrument
        )
        list(pool.map(_warm, range(PARALLEL)))
        sampler = ProcessSampler(
            default_classifier({legacy.process.pid: "orthanc_source", target.process.pid: "orthanc_target"})
        ).start()
        phases: dict[str, float] = {}
        t0 = time.perf_counter()
        _plan_direct(dsn, archive)
        phases["plan"] = time.perf_counter() - t0
        with Ledger(dsn) as ledger:
            studies = [s["study_instance_uid"] for s in select_studies(ledger, all_queued=True)]
        t1 = time.perf_counter()
        with pool:
            done = list(pool.map(_migrate_one, [ctx] * len(studies), studies))
        phases["migrate"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        validation = _validate_direct(dsn, conn, source, phases)
        phases["validate"] = time.perf_counter() - t2
        stats = sampler.stop()
        wall = time.perf_counter() - t0
        received = target.count()
        outcome = ledger_outcome(dsn)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        target.stop()
    stages: dict[str, float] = {}
    for d in done:
        for k, v in d["stages"].items():
            stages[k] = stages.get(k, 0.0) + v
    result = _result(
        "d_engine_direct",
        archive,
        stats,
        received,
        wall_s=wall,
        phases_s={k: round(v, 3) for k, v in phases.items()},
        stage_seconds_summed_over_workers={k: round(v, 3) for k, v in sorted(stages.items())},
        studies=len(studies),
        study_errors=[d for d in done if d["error"]][:10],
        study_retries=sum(d["tries"] > 1 for d in done),
        validation=validation,
        ledger=outcome,
    )
    _cleanup(work, "d", dsn)
    return result


def _warm(_: int) -> int:
    import pacsmig.migrate.pipeline  # noqa: F401
    import pacsmig.transform.engine  # noqa: F401
    import pacsmig.verify.hashing  # noqa: F401

    return os.getpid()


def _plan_direct(dsn: str, archive: BenchArchive) -> None:
    """What pacs_plan's tasks do (big_bang)."""
    from pacsmig import config
    from pacsmig.ledger import Ledger
    from pacsmig.plan.inventory import load_inventory
    from pacsmig.plan.strategy import apply_strategy, build_plan, write_plan
    from pacsmig.transform.mpi import load_crosswalk_into_ledger

    with Ledger(dsn) as ledger:
        ledger.migrate()
        load_crosswalk_into_ledger(ledger, archive.crosswalk_path)
        load_inventory(ledger, config.sub_dir("audit") / "inventory.parquet")
        apply_strategy(ledger, "big_bang", today=date.today())
        write_plan(build_plan(ledger, "big_bang"), config.sub_dir("plan"))


def _validate_direct(dsn: str, conn: Any, source: Any, phases: dict[str, float]) -> dict[str, Any]:
    """What pacs_validate's tasks do: chunks, read back + hash, reconcile with the source, sample, audit."""
    from pacsmig import config
    from pacsmig.custody.export import export_studies
    from pacsmig.ledger import Ledger
    from pacsmig.verify.reconcile import Scope
    from pacsmig.verify.sample import build_review_sample
    from pacsmig.verify.validate import SUMMARY_KEYS, finalize, plan_chunks, verify_studies

    scope = Scope()
    with Ledger(dsn) as ledger:
        t = time.perf_counter()
        for chunk in plan_chunks(ledger, scope):
            verify_studies(ledger, conn, chunk["studies"])
        phases["validate_readback_verify"] = time.perf_counter() - t
        t = time.perf_counter()
        summary = finalize(ledger, scope, source, target_name=conn.conn_id)
        phases["validate_reconcile"] = time.perf_counter() - t
        t = time.perf_counter()
        build_review_sample(ledger, scope, conn, fraction=0.10)
        export_studies(ledger, scope.study_uids(ledger), config.sub_dir("validation", "audit"), source, conn)
        phases["validate_sample_and_audit"] = time.perf_counter() - t
    return {k: summary.get(k) for k in SUMMARY_KEYS}


def _cleanup(work: Path, name: str, dsn: str) -> None:
    if os.environ.get("PACSMIG_BENCH_KEEP"):
        return
    for sub in (f"data_{name}", f"target_{name}"):
        shutil.rmtree(work / sub, ignore_errors=True)
    _drop_database(dsn)


# --- (c) the engine through Airflow ---------------------------------------------------------------
def _airflow_rows(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    import psycopg2
    import psycopg2.extras

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            return [dict(r) for r in cur.fetchall()]
    finally:
        conn.close()


def _wait_run(db: str, dag_id: str, run_id: str, stack: Any, timeout: float) -> dict[str, Any]:
    """Until the run ends, polling the metadata DB (each ``airflow`` CLI call costs seconds of CPU)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack._check_alive()
        rows = _airflow_rows(
            db,
            "SELECT state, queued_at, start_date, end_date FROM dag_run WHERE dag_id = %s AND run_id = %s",
            (dag_id, run_id),
        )
        if rows and rows[0]["state"] in ("success", "failed"):
            return rows[0]
        time.sleep(0.25)
    raise TimeoutError(f"{dag_id} run {run_id} did not finish within {timeout}s (logs in {stack.home})")


def _wait_parsed(db: str, dag_ids: list[str], stack: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack._check_alive()
        rows = _airflow_rows(db, "SELECT dag_id FROM serialized_dag WHERE dag_id = ANY(%s)", (dag_ids,))
        if {r["dag_id"] for r in rows} >= set(dag_ids):
            return
        time.sleep(0.5)
    raise TimeoutError(f"DAGs {dag_ids} not parsed within {timeout}s")


def _wait_idle(db: str, timeout: float = 120) -> None:
    """Until no DAG run is queued or running (unpausing pacs_migrate may schedule its latest interval)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _airflow_rows(db, "SELECT 1 FROM dag_run WHERE state IN ('queued', 'running')"):
            return
        time.sleep(0.5)


def _task_stats(db: str, run_ids: list[str]) -> dict[str, Any]:
    """Per task: count, summed run time and the mean wait between queued and started (scheduling latency)."""
    rows = _airflow_rows(
        db,
        """
        SELECT task_id, count(*) AS n, sum(extract(epoch FROM end_date - start_date)) AS run_s,
               avg(extract(epoch FROM start_date - queued_dttm)) AS queued_wait_s,
               sum(CASE WHEN state <> 'success' THEN 1 ELSE 0 END) AS not_success,
               sum(try_number - 1) AS retries
        FROM task_instance WHERE run_id = ANY(%s) GROUP BY task_id ORDER BY task_id""",
        (run_ids,),
    )
    return {
        r["task_id"]: {
            "n": int(r["n"]),
            "run_s": round(float(r["run_s"] or 0), 3),
            "mean_queued_wait_s": round(float(r["queued_wait_s"] or 0), 3),
            "not_success": int(r["not_success"] or 0),
            "retries": int(r["retries"] or 0),
        }
        for r in rows
    }


#: pacs_migrate's packing in path (c), the setting the README recommends for bulk backfills.
BULK_IMAGES_PER_TASK = 2000


def run_engine_airflow(archive: BenchArchive, work: Path, legacy: OrthancServer, *,
                       images_per_task: int = BULK_IMAGES_PER_TASK, heartbeat_s: int = 5,
                       name: str = "c_engine_airflow") -> dict[str, Any]:
    """pacs_plan -> pacs_migrate (all_queued) -> pacs_validate, on a real scheduler (LocalExecutor).

    ``images_per_task``: pacs_migrate's Param (0 = one task per study, the DAG's default).
    ``heartbeat_s``: ``[workers] min_heartbeat_interval``. Airflow's default, 5 s, suits long packed
    tasks (each running task's supervisor heartbeats the api-server that often: CPU taken from the
    engine on a small machine); 1 s halves the start-up latency that one-task-per-study pays."""
    from pacsmig.ledger import create_database
    from testbed.airflow_stack import AirflowStack

    letter = name[0]
    target, dsn, data, env = _engine_setup(archive, work, legacy, letter)
    db = create_database(PG_ADMIN, "pacsmig_bench_airflow", drop=True)
    env.update(
        {
            "AIRFLOW__CORE__PARALLELISM": str(PARALLEL),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "64",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
            "PACSMIG_SOURCE_POOL": "legacy_pacs",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(heartbeat_s),
        }
    )
    home = work / f"airflow_{letter}"
    shutil.rmtree(home, ignore_errors=True)
    stack = AirflowStack(home, db.replace("postgresql://", "postgresql+psycopg2://"), extra_env=env)
    dags = ["pacs_plan", "pacs_migrate", "pacs_validate"]
    t_stack = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    try:
        with stack:
            stack.cli("pools", "set", "legacy_pacs", str(PARALLEL), "associations the legacy PACS tolerates")
            _wait_parsed(db, dags, stack)
            for dag_id in dags:
                stack.cli("dags", "unpause", dag_id)
            _wait_idle(db)
            startup_s = time.perf_counter() - t_stack
            sampler = ProcessSampler(
                default_classifier(
                    {legacy.process.pid: "orthanc_source", target.process.pid: "orthanc_target"}
                )
            ).start()
            t0 = time.perf_counter()
            for dag_id, conf in (
                ("pacs_plan", {"strategy": "big_bang"}),
                ("pacs_migrate", {"all_queued": True, "images_per_task": images_per_task}),
                ("pacs_validate", {}),
            ):
                run_id = f"bench__{dag_id}__{uuid.uuid4().hex[:6]}"
                stack.cli("dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf))
                runs[dag_id] = {"run_id": run_id, **_wait_run(db, dag_id, run_id, stack, timeout=3600)}
            outer_wall = time.perf_counter() - t0
            stats = sampler.stop()
            tasks = _task_stats(db, [r["run_id"] for r in runs.values()])
    finally:
        target_count = target.count() if target.process else 0
        target.stop()
    # Orchestrated wall time: from each run's creation (queued_at) to its end, summed; the gaps between
    # runs are this harness starting `airflow dags trigger` (seconds of CLI start-up), not the engine.
    wall = sum((r["end_date"] - r["queued_at"]).total_seconds() for r in runs.values())
    run_summary = {
        d: {
            "state": r["state"],
            "queued_to_end_s": round((r["end_date"] - r["queued_at"]).total_seconds(), 3),
            "start_to_end_s": round((r["end_date"] - r["start_date"]).total_seconds(), 3),
        }
        for d, r in runs.items()
    }
    outcome = ledger_outcome(dsn)
    result = _result(
        name,
        archive,
        stats,
        target_count,
        wall_s=wall,
        wall_s_including_trigger_cli=round(outer_wall, 3),
        stack_startup_s=round(startup_s, 3),
        runs=run_summary,
        tasks=tasks,
        ledger=outcome,
        parallelism=PARALLEL,
        images_per_task=images_per_task,
        min_heartbeat_interval_s=heartbeat_s,
    )
    _cleanup(work, letter, dsn)
    if not os.environ.get("PACSMIG_BENCH_KEEP"):
        shutil.rmtree(home, ignore_errors=True)
        _drop_database(db)
    return result


def run_engine_airflow_per_study(archive: BenchArchive, work: Path, legacy: OrthancServer) -> dict[str, Any]:
    """Path (c) with pacs_migrate's default: one task per study."""
    return run_engine_airflow(archive, work, legacy, images_per_task=0, heartbeat_s=1,
                              name="e_engine_airflow_per_study")
