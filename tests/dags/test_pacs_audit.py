"""pacs_audit end to end through Airflow: DagBag integrity, then dag.test() against the testbed PACS."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import legacy_connection_json

pytestmark = pytest.mark.dags

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():  # noqa: ANN201 - DagBag
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags" / "pacs_audit.py"))


def test_dag_parses_with_conventions(airflow_db, dagbag) -> None:  # noqa: ANN001
    assert not dagbag.import_errors, dagbag.import_errors
    dag = dagbag.get_dag("pacs_audit")
    assert dag is not None
    assert dag.schedule is None if hasattr(dag, "schedule") else True
    assert dag.tags and not dag.catchup
    assert dag.start_date.tzinfo is not None
    assert dag.doc_md and "Phase 1" in dag.doc_md
    for t in dag.tasks:
        assert t.retries >= 2, t.task_id
    for name in (
        "date_from",
        "date_to",
        "window",
        "samples_per_group",
        "throughput_images_per_s",
        "link_mbit_s",
        "find_cap",
    ):
        assert name in dag.params, name
        assert dag.params.get_param(name).description, name
    assert dag.get_task("inventory_window").map_index_template


def test_dag_test_writes_the_audit(
    dagbag,
    airflow_db,
    loaded_legacy,
    storage_port,
    tmp_path,  # noqa: ANN001
    monkeypatch,
) -> None:
    server, truth = loaded_legacy
    monkeypatch.setenv("AIRFLOW_CONN_LEGACY_PACS", legacy_connection_json(server, storage_port))
    monkeypatch.setenv("PACSMIG_DATA_DIR", str(tmp_path))
    dag = dagbag.get_dag("pacs_audit")
    run = dag.test(
        run_conf={
            "date_from": "2004-01-01",
            "date_to": "2024-12-31",
            "window": "year",
            "samples_per_group": 2,
            "throughput_images_per_s": 100.0,
            "link_mbit_s": 100.0,
        }
    )
    assert str(run.state) in ("success", "DagRunState.SUCCESS"), run.state

    out = tmp_path / "audit"
    inventory = pd.read_parquet(out / "inventory.parquet")
    assert len(inventory) == truth.n_studies
    assert set(inventory["study_instance_uid"]) == {s.study_instance_uid for s in truth.studies}
    assessment = json.loads((out / "assessment.json").read_text())
    assert (assessment["studies"], assessment["series"], assessment["instances"]) == (
        truth.n_studies,
        truth.n_series,
        truth.n_instances,
    )
    assert assessment["bytes"] > 0 and assessment["bytes_method"]
    for modality, counts in truth.by_modality().items():
        assert assessment["by_modality"][modality]["studies"] == counts["studies"], modality
    issues = pd.read_csv(out / "patient_id_issues.csv")
    assert {"same_id_different_demographics", "same_demographics_different_ids"} <= set(issues["kind"])
    tags = pd.read_csv(out / "private_tags.csv", keep_default_na=False)
    creators = set(tags["private_creator"])
    assert {"SIEMENS CT VA0  GEN", "Philips Imaging DD 001", "HOLOGIC, Inc."} <= creators
    assert (out / "assessment.html").read_text().count("data:image/png;base64,") >= 2
    assert (out / "data_docs" / "index.html").exists()

    # the mapped windows are named by their date range in the metadata DB
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        names = {
            ti.rendered_map_index
            for ti in session.query(TaskInstance).filter(
                TaskInstance.dag_id == "pacs_audit",
                TaskInstance.run_id == run.run_id,
                TaskInstance.task_id == "inventory_window",
            )
        }
    assert {"2015-01-01..2015-12-31", "undated"} <= names
    assert os.environ["PACSMIG_DATA_DIR"] == str(tmp_path)
