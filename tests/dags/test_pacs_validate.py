"""``pacs_validate`` through Airflow: ``dag.test()`` on an arranged migrated state with a tampered target."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from validate_arrange import delete_instance, make_archive, record_migrated

from pacsmig.config import ConnectionSpec
from pacsmig.ledger import Ledger
from testbed.orthanc import OrthancServer, free_port

pytestmark = pytest.mark.dags
DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture
def arranged(tmp_path: Path, ledger_dsn: str, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    source = OrthancServer(
        tmp_path / "src",
        name="DSRC",
        aet="DSRC",
        modalities={"pacsmig": ("PACSMIG", "127.0.0.1", free_port())},
    )
    target = OrthancServer(tmp_path / "tgt", name="DTGT", aet="DTGT", dicomweb=True)
    with source, target:
        archive = make_archive(tmp_path / "archive")
        assert source.upload_files(archive.files) == len(archive.files)
        assert target.upload_files(archive.files) == len(archive.files)
        record_migrated(ledger_dsn, archive)
        env = {
            "AIRFLOW_CONN_LEGACY_PACS": ConnectionSpec(
                "legacy_pacs",
                "dicom",
                "127.0.0.1",
                source.dicom_port,
                extra={"ae_title": source.aet, "calling_ae_title": "PACSMIG", "timeout": 20},
            ).to_json(),
            "AIRFLOW_CONN_TARGET_ARCHIVE": ConnectionSpec(
                "target_archive",
                "http",
                "127.0.0.1",
                target.http_port,
                schema="http",
                extra={"dicomweb_path": "/dicom-web"},
            ).to_json(),
            "AIRFLOW_CONN_MIGRATION_LEDGER": ledger_dsn,
            "PACSMIG_DATA_DIR": str(tmp_path / "data"),
            "PACSMIG_VERIFY_WORKERS": "2",
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        yield source, target, archive


def _dag():  # noqa: ANN202
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "pacs_validate.py"))
    assert bag.import_errors == {}
    return bag.dags["pacs_validate"]


def test_dag_shape() -> None:
    dag = _dag()
    assert set(dag.params.keys()) == {"date_from", "date_to", "patient_id", "sample_fraction", "recheck"}
    assert all(dag.params.get_param(k).description for k in dag.params.keys())
    assert dag.task_dict["verify_chunk"].map_index_template
    assert all(t.retries >= 2 for t in dag.tasks)


def test_dag_test_validates_and_flags_the_tampered_study(
    airflow_db: str, arranged, ledger_dsn: str, tmp_path: Path
) -> None:
    source, target, archive = arranged
    lost = archive.instances["ct"][0]
    delete_instance(target.url, lost.sop)
    run = _dag().test(run_conf={"date_from": "2020-01-01", "date_to": "2025-12-31", "sample_fraction": 0.5})
    assert run.state == "success"
    out = tmp_path / "data" / "validation"
    summary = json.loads((out / "summary.json").read_text())
    n = len(archive.all())
    assert (
        summary["instances_source"],
        summary["instances_verified"],
        summary["instances_missing"],
        summary["instances_mismatched"],
    ) == (n, n - 1, 1, 0)
    df = pd.read_parquet(out / "hash_report.parquet")
    assert list(df.columns[:5]) == [
        "study_instance_uid",
        "sop_instance_uid",
        "source_pixel_hash",
        "target_pixel_hash",
        "match",
    ]
    assert df.loc[~df.match, "sop_instance_uid"].tolist() == [lost.sop]
    with Ledger(ledger_dsn) as ledger:
        states = {r["study_instance_uid"]: r["state"] for r in ledger.query("SELECT * FROM studies")}
        sample = ledger.query("SELECT * FROM review_sample")
        actors = {r["actor"] for r in ledger.query("SELECT actor FROM custody WHERE event = 'verified'")}
    assert states[archive.studies["ct"]["uid"]] == "review"
    assert sorted(s for u, s in states.items() if u != archive.studies["ct"]["uid"]) == ["verified"] * 3
    assert len(sample) == 2 and {r["signoff_state"] for r in sample} == {"pending"}
    assert all(a.startswith("airflow:pacs_validate.reconcile_and_report") for a in actors)
    assert len(list((out / "audit").glob("*.xml"))) == 2 * len(archive.studies)
    assert (out / "custody_anchors.jsonl").exists() and (out / "review_worklist.html").exists()
