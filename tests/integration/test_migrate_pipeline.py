"""Phase 3 end to end on real components: legacy Orthanc -> C-MOVE -> transform -> DICOMweb target.

No Airflow here: the same pipeline functions the DAG tasks call, against the testbed archive,
compared with the generator's ground truth.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import requests

from pacsmig.config import ConnectionSpec
from pacsmig.errors import LoadError
from pacsmig.ledger import Ledger
from pacsmig.migrate.pipeline import (
    MigrationContext,
    extract_study,
    load_study,
    migrate_study,
    transform_study,
)
from pacsmig.plan.inventory import load_inventory
from pacsmig.plan.strategy import apply_strategy
from pacsmig.transform.mpi import load_crosswalk_into_ledger
from testbed.orthanc import OrthancServer, free_port

pytestmark = pytest.mark.integration


def truth_inventory(truth) -> pd.DataFrame:  # noqa: ANN001
    return pd.DataFrame([{
        "study_instance_uid": s.study_instance_uid, "patient_id": s.patient_id,
        "issuer_of_patient_id": s.issuer_of_patient_id, "study_date": s.study_date,
        "accession_number": s.accession_number, "modalities": s.modalities, "n_series": s.n_series,
        "n_instances": s.n_instances} for s in truth.studies])


def target_conn(server: OrthancServer, port: int | None = None) -> ConnectionSpec:
    conn = server.dicomweb_connection()
    return dataclasses.replace(conn, port=port) if port else conn


@pytest.fixture
def planned(ledger_dsn: str, loaded_legacy, tmp_path: Path):  # noqa: ANN001, ANN201
    _, truth = loaded_legacy
    with Ledger(ledger_dsn) as ledger:
        load_inventory(ledger, truth_inventory(truth))
        load_crosswalk_into_ledger(ledger, truth.crosswalk_path)
        apply_strategy(ledger, "big_bang")
    return truth


def context(ledger_dsn: str, legacy_node, target: OrthancServer, data: Path,  # noqa: ANN001
            target_port: int | None = None) -> MigrationContext:
    return MigrationContext(ledger_dsn=ledger_dsn, source=legacy_node, targets=[target_conn(target, target_port)],
                            data_dir=data)


def test_every_instance_reaches_the_target_reconciled_and_reruns_change_nothing(
        ledger_dsn: str, legacy_node, target_archive: OrthancServer, planned, tmp_path: Path) -> None:  # noqa: ANN001
    truth = planned
    target_archive.reset()
    ctx = context(ledger_dsn, legacy_node, target_archive, tmp_path)
    for study in truth.studies:
        migrate_study(ctx, study.study_instance_uid)
    unmatched = set(truth.unmatched_patients)
    held = {s.study_instance_uid for s in truth.studies
            if (s.issuer_of_patient_id or "", s.patient_id) in {(i or "", p) for i, p in unmatched}}
    expected_instances = sum(s.n_instances for s in truth.studies if s.study_instance_uid not in held)
    with Ledger(ledger_dsn) as ledger:
        states = {r["study_instance_uid"]: (r["state"], r["reason"]) for r in ledger.query("SELECT * FROM studies")}
        custody_before = ledger.query("SELECT count(*) AS n FROM custody")[0]["n"]
    assert held, "the testbed has unmatched patients"
    assert {u for u, (st, _) in states.items() if st == "held"} == held
    assert all(states[u][1] == "no_mpi_match" for u in held)
    assert {st for u, (st, _) in states.items() if u not in held} == {"loaded"}
    assert target_archive.count("instances") == expected_instances
    assert target_archive.count("studies") == len(truth.studies) - len(held)

    # The target holds the MPI identity, the old one kept in OtherPatientIDsSequence.
    study = next(s for s in truth.studies if s.study_instance_uid not in held and s.mpi_patient_id)
    oid = requests.post(f"{target_archive.url}/tools/lookup", data=study.instances[0], timeout=10).json()[0]["ID"]
    ds = pydicom.dcmread(__import__("io").BytesIO(
        requests.get(f"{target_archive.url}/instances/{oid}/file", timeout=10).content))
    assert ds.PatientID == study.mpi_patient_id
    assert (ds.OtherPatientIDsSequence[0].PatientID, ds.OtherPatientIDsSequence[0].get("IssuerOfPatientID"))\
        == (study.patient_id, study.issuer_of_patient_id)
    assert "OriginalAttributesSequence" in ds

    for s in truth.studies:                                   # a re-run: everything is skipped
        migrate_study(ctx, s.study_instance_uid)
    with Ledger(ledger_dsn) as ledger:
        assert ledger.query("SELECT count(*) AS n FROM custody")[0]["n"] == custody_before
        # Held studies are extracted (staged, hashed) and wait for the MPI; nothing is lost.
        assert ledger.query("SELECT count(*) AS n FROM instances")[0]["n"] == truth.n_instances
        assert ledger.query("SELECT count(*) AS n FROM instances WHERE target_status = 'loaded'")[0]["n"] \
            == expected_instances
    assert target_archive.count("instances") == expected_instances


def test_worker_killed_mid_study_resumes_without_loss_or_duplicates(
        ledger_dsn: str, legacy_node, target_archive: OrthancServer, planned, tmp_path: Path) -> None:  # noqa: ANN001
    truth = planned
    target_archive.reset()
    study = max((s for s in truth.studies if s.mpi_patient_id), key=lambda s: s.n_instances)
    code = ("import sys, pickle; from pacsmig.migrate.pipeline import extract_study; "
            "ctx = pickle.loads(bytes.fromhex(sys.argv[1])); extract_study(ctx, sys.argv[2])")
    ctx = context(ledger_dsn, legacy_node, target_archive, tmp_path)
    import pickle

    proc = subprocess.Popen([sys.executable, "-c", code, pickle.dumps(ctx).hex(), study.study_instance_uid],
                            env=os.environ.copy())
    staged = tmp_path / "staging" / study.study_instance_uid
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(staged.glob("*.dcm"))) < 5:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(list(staged.glob("*.dcm")))
    assert 0 < partial < study.n_instances, "the kill should land mid-move"
    time.sleep(1)  # let the source notice the dead association before the next move
    migrate_study(ctx, study.study_instance_uid)
    with Ledger(ledger_dsn) as ledger:
        assert ledger.study(study.study_instance_uid)["state"] == "loaded"
        assert ledger.query("SELECT count(*) AS n FROM instances WHERE study_instance_uid = %s",
                            (study.study_instance_uid,))[0]["n"] == study.n_instances
    assert target_archive.count("instances") == study.n_instances


def test_target_down_keeps_the_study_transformed_then_a_retry_loads_it(
        ledger_dsn: str, legacy_node, target_archive: OrthancServer, planned, tmp_path: Path) -> None:  # noqa: ANN001
    truth = planned
    target_archive.reset()
    study = next(s for s in truth.studies if s.mpi_patient_id)
    down = context(ledger_dsn, legacy_node, target_archive, tmp_path, target_port=free_port())
    extract_study(down, study.study_instance_uid)
    transform_study(down, study.study_instance_uid)
    with pytest.raises(LoadError):
        load_study(down, study.study_instance_uid, final_attempt=False)
    with Ledger(ledger_dsn) as ledger:
        assert ledger.study(study.study_instance_uid)["state"] == "transformed"
    load_study(context(ledger_dsn, legacy_node, target_archive, tmp_path), study.study_instance_uid)
    assert target_archive.count("instances") == study.n_instances


def test_malformed_instance_is_quarantined_and_the_rest_of_the_study_migrates(
        ledger_dsn: str, synthetic_archive, tmp_path: Path, storage_port: int, legacy_node) -> None:  # noqa: ANN001
    truth = synthetic_archive
    study = next(s for s in truth.studies if s.mpi_patient_id and s.n_instances >= 3
                 and "CT" in s.modalities)
    files = [truth.root / f for f in study.files]
    bad = pydicom.dcmread(files[0])
    bad_uid = str(bad.SOPInstanceUID)
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 2]       # truncated pixel data
    bad_path = tmp_path / "bad.dcm"
    bad.save_as(bad_path, enforce_file_format=True)
    with OrthancServer(tmp_path / "src", aet="LEGACY2",
                       modalities={"pacsmig": ("PACSMIG", "127.0.0.1", storage_port)}) as src, \
            OrthancServer(tmp_path / "dst", aet="VNA2", dicomweb=True) as dst:
        assert src.upload_files([bad_path, *files[1:]]) == len(files)
        node = legacy_node.__class__(**{**legacy_node.__dict__, "port": src.dicom_port, "ae_title": "LEGACY2"})
        with Ledger(ledger_dsn) as ledger:
            inv = truth_inventory(truth)
            load_inventory(ledger, inv[inv.study_instance_uid == study.study_instance_uid])
            load_crosswalk_into_ledger(ledger, truth.crosswalk_path)
            apply_strategy(ledger, "big_bang")
        ctx = MigrationContext(ledger_dsn=ledger_dsn, source=node, targets=[target_conn(dst)],
                               data_dir=tmp_path / "data")
        migrate_study(ctx, study.study_instance_uid)
        with Ledger(ledger_dsn) as ledger:
            q = ledger.query("SELECT * FROM quarantine")
            st = ledger.study(study.study_instance_uid)
        assert [(r["sop_instance_uid"], r["reason"]) for r in q] == [(bad_uid, "malformed_instance")]
        assert Path(q[0]["path"]).exists()
        assert st["state"] == "loaded" and st["reason"] == "malformed_instance"
        assert dst.count("instances") == len(files) - 1
