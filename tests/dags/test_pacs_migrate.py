"""``pacs_plan`` and ``pacs_migrate`` through Airflow: ``dag.test()``, then a real scheduler running a
backfill over study dates (LocalExecutor on PostgreSQL, api-server, dag-processor, triggerer)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from pacsmig.ledger import Ledger
from pacsmig.plan.strategy import backfill_range
from tests.conftest import AIRFLOW_DB, PG_ADMIN, legacy_connection_json, target_connection_json

pytestmark = pytest.mark.dags
DAGS = Path(__file__).resolve().parents[2] / "dags"


def write_inventory(truth, path: Path) -> Path:  # noqa: ANN001
    """The inventory pacs_audit would write (from the ground truth: this test is about plan/migrate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{
        "study_instance_uid": s.study_instance_uid, "patient_id": s.patient_id,
        "issuer_of_patient_id": s.issuer_of_patient_id, "patient_name": s.patient_name,
        "patient_birth_date": s.patient_birth_date,
        "study_date": pd.Timestamp(s.study_date).date() if s.study_date else None,
        "accession_number": s.accession_number, "modalities": s.modalities, "n_series": s.n_series,
        "n_instances": s.n_instances} for s in truth.studies]).to_parquet(path)
    return path


@pytest.fixture
def airflow_conns(monkeypatch: pytest.MonkeyPatch, loaded_legacy, target_archive, storage_port: int,  # noqa: ANN001
                  ledger_dsn: str, tmp_path: Path) -> dict[str, str]:
    legacy, truth = loaded_legacy
    target_archive.reset()
    env = {"AIRFLOW_CONN_LEGACY_PACS": legacy_connection_json(legacy, storage_port),
           "AIRFLOW_CONN_TARGET_ARCHIVE": target_connection_json(target_archive),
           "AIRFLOW_CONN_MIGRATION_LEDGER": ledger_dsn,
           "PACSMIG_DATA_DIR": str(tmp_path / "data"),
           "PACSMIG_MPI_CROSSWALK": str(truth.crosswalk_path)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    write_inventory(truth, tmp_path / "data" / "audit" / "inventory.parquet")
    return env


def dag(dag_id: str):  # noqa: ANN201
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / f"{dag_id}.py"))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def mapped_labels(run_id: str) -> list[str]:
    """The rendered labels of the run's mapped ``migrate`` tasks (from the metadata DB)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return [ti.rendered_map_index for ti in session.query(TaskInstance).filter(
            TaskInstance.dag_id == "pacs_migrate", TaskInstance.run_id == run_id,
            TaskInstance.task_id == "migrate")]


def states(dsn: str) -> dict[str, str]:
    with Ledger(dsn) as ledger:
        return {r["study_instance_uid"]: r["state"] for r in ledger.query("SELECT * FROM studies")}


def test_plan_then_migrate_one_date_range_with_dag_test(airflow_db: str, airflow_conns: dict[str, str],
                                                       loaded_legacy, target_archive, tmp_path: Path) -> None:  # noqa: ANN001
    _, truth = loaded_legacy
    run = dag("pacs_plan").test(run_conf={"strategy": "big_bang"})
    assert run.state == "success"
    plan = json.loads((tmp_path / "data" / "plan" / "plan.json").read_text())
    assert plan["studies_queued"] == truth.n_studies
    assert plan["commands"][0].startswith("airflow backfill create --dag-id pacs_migrate")

    dated = sorted((s for s in truth.studies if s.study_date and s.mpi_patient_id), key=lambda s: s.study_date)
    first = dated[len(dated) // 2].study_date
    year = first[:4]
    in_range = {s.study_instance_uid for s in truth.studies if s.study_date and s.study_date[:4] == year}
    run = dag("pacs_migrate").test(run_conf={"date_from": f"{year}-01-01", "date_to": f"{year}-12-31"})
    assert run.state == "success"
    first_run_id = run.run_id
    st = states(airflow_conns["AIRFLOW_CONN_MIGRATION_LEDGER"])
    assert {u for u, s in st.items() if s in ("loaded", "held")} == in_range
    assert Counter(s for u, s in st.items() if u not in in_range) == Counter({"queued": truth.n_studies - len(in_range)})
    loaded = [s for s in truth.studies if st[s.study_instance_uid] == "loaded"]
    assert target_archive.count("instances") == sum(s.n_instances for s in loaded)

    # The same partition again: nothing to do, nothing duplicated.
    run = dag("pacs_migrate").test(run_conf={"date_from": f"{year}-01-01", "date_to": f"{year}-12-31"})
    assert run.state == "success"
    assert target_archive.count("instances") == sum(s.n_instances for s in loaded)
    labels = mapped_labels(first_run_id)
    assert len(labels) == len(in_range)                                      # one task per study ...
    accessions = {s.accession_number or s.study_instance_uid for s in truth.studies
                  if s.study_instance_uid in in_range}
    assert set(labels) == accessions                                          # ... labelled by accession

    # The rest in one packed run (a bulk backfill): fewer tasks than studies, every study migrated.
    run = dag("pacs_migrate").test(run_conf={"all_queued": True, "images_per_task": 150})
    assert run.state == "success"
    st = states(airflow_conns["AIRFLOW_CONN_MIGRATION_LEDGER"])
    assert Counter(st.values()) == Counter({"loaded": sum(1 for s in truth.studies if s.mpi_patient_id),
                                            "held": sum(1 for s in truth.studies if not s.mpi_patient_id)})
    rest = truth.n_studies - len(in_range)
    total_images = sum(s.n_instances for s in truth.studies if s.study_instance_uid not in in_range)
    assert 4 <= len(mapped_labels(run.run_id)) <= max(4, -(-total_images // 150)) < rest
    assert target_archive.count("instances") == sum(s.n_instances for s in truth.studies if s.mpi_patient_id)


def test_scheduler_runs_a_backfill_over_study_dates(airflow_db: str, airflow_conns: dict[str, str],
                                                    loaded_legacy, target_archive, tmp_path: Path) -> None:  # noqa: ANN001
    """The real scheduler path: `airflow backfill create` over three monthly partitions."""
    from pacsmig.ledger import create_database
    from testbed.airflow_stack import AirflowStack

    _, truth = loaded_legacy
    dsn = airflow_conns["AIRFLOW_CONN_MIGRATION_LEDGER"]
    # Three consecutive months holding studies (the generator spreads studies over 15 years).
    months = Counter(s.study_date[:6] for s in truth.studies if s.study_date and s.mpi_patient_id)
    start = date(int(max(months)[:4]), int(max(months)[4:]), 1)
    first_month = date(start.year - (1 if start.month <= 2 else 0), (start.month - 3) % 12 + 1, 1)
    window = {s.study_instance_uid for s in truth.studies
              if s.study_date and first_month <= date(int(s.study_date[:4]), int(s.study_date[4:6]), 1) <= start}
    assert window

    sched_db = create_database(PG_ADMIN, f"{AIRFLOW_DB}_sched", drop=True)
    stack = AirflowStack(tmp_path / "airflow", sched_db.replace("postgresql://", "postgresql+psycopg2://"),
                         extra_env=airflow_conns)
    with stack:
        stack.cli("pools", "set", "legacy_pacs", "2", "associations the legacy PACS tolerates")
        stack.wait_for_dag("pacs_plan")
        stack.cli("dags", "unpause", "pacs_plan")
        stack.cli("dags", "trigger", "pacs_plan", "--conf", json.dumps({"strategy": "prefetch"}))
        assert [r["state"] for r in stack.wait_for_runs("pacs_plan", 1, timeout=300)] == ["success"]
        stack.wait_for_dag("pacs_migrate")
        from_date, to_date = backfill_range(first_month, start)
        stack.cli("backfill", "create", "--dag-id", "pacs_migrate", "--from-date", from_date.isoformat(),
                  "--to-date", to_date.isoformat(), "--run-backwards")
        stack.cli("dags", "unpause", "pacs_migrate")
        backfill = stack.wait_for_runs("pacs_migrate", 3, timeout=600, prefix="backfill__")
    assert len(backfill) == 3 and {r["state"] for r in backfill} == {"success"}, backfill
    assert sorted(str(r["logical_date"])[:10] for r in backfill) == [
        date(first_month.year + (first_month.month + i - 1) // 12, (first_month.month + i - 1) % 12 + 1, 1
             ).isoformat() for i in range(3)]
    st = states(dsn)
    assert {u for u in window if st[u] in ("loaded", "held")} == window
    assert all(st[s.study_instance_uid] == "queued" for s in truth.studies if s.study_instance_uid not in window)
