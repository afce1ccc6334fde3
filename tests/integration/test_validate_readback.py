"""Phase 4 end to end on real Orthanc + PostgreSQL: a tampered target is caught exactly, nothing else.

The migrated state is arranged without the pipeline (validate_arrange): source files in a source
Orthanc, their (possibly transcoded / transformed) copies in a DICOMweb target, ledger rows with
the source hashes. Then the target is tampered with and ``run_validation`` must find exactly that.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, RLELossless
from validate_arrange import (
    Archive,
    dataset_bytes,
    delete_instance,
    make_archive,
    orthanc_id,
    read,
    record_migrated,
    replace_instance,
)

from pacsmig.config import ConnectionSpec, DicomNode
from pacsmig.ledger import Ledger
from pacsmig.verify.reconcile import Scope
from pacsmig.verify.validate import run_validation
from testbed.orthanc import OrthancServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    source = OrthancServer(
        tmp_path_factory.mktemp("vsrc"),
        name="VSRC",
        aet="VSRC",
        modalities={"pacsmig": ("PACSMIG", "127.0.0.1", free_port())},
    )
    target = OrthancServer(tmp_path_factory.mktemp("vtgt"), name="VTGT", aet="VTGT", dicomweb=True)
    with source, target:
        yield source, target


def _node(source: OrthancServer) -> DicomNode:
    return DicomNode(
        host="127.0.0.1", port=source.dicom_port, ae_title=source.aet, calling_ae_title="PACSMIG", timeout=20
    )


def _conn(target: OrthancServer) -> ConnectionSpec:
    return ConnectionSpec(
        "target_archive",
        "http",
        "127.0.0.1",
        target.http_port,
        schema="http",
        extra={"dicomweb_path": "/dicom-web"},
    )


def _transformed(path: Path, new_patient_id: str) -> tuple[bytes, list[dict]]:
    """What the transform does to one file: PatientID coerced, old value in OriginalAttributesSequence."""
    ds = read(path)
    old = Dataset()
    old.PatientID = ds.PatientID
    item = Dataset()
    item.ModifiedAttributesSequence = Sequence([old])
    item.AttributeModificationDateTime, item.ModifyingSystem = "20250101120000", "PACSMIG"
    item.ReasonForTheAttributeModification = "COERCE"
    ds.OriginalAttributesSequence = Sequence([item])
    change = {
        "tag": "(0010,0020)",
        "keyword": "PatientID",
        "action": "replace",
        "old": ds.PatientID,
        "new": new_patient_id,
        "rule_id": "mpi",
        "reason": "MPI crosswalk",
    }
    ds.PatientID = new_patient_id
    return dataset_bytes(ds), [change]


@pytest.fixture
def arranged(servers, tmp_path: Path, ledger_dsn: str, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Source holds everything; target holds lossless transcodes / transformed copies; ledger loaded."""
    source, target = servers
    source.reset()
    target.reset()
    monkeypatch.setenv("PACSMIG_DATA_DIR", str(tmp_path / "data"))
    archive = make_archive(tmp_path / "archive")
    assert source.upload_files(archive.files) == len(archive.files)
    ct, mr, us = archive.instances["ct"], archive.instances["mr"], archive.instances["us"]
    mr_bytes, mr_changes = _transformed(mr[1].path, "MPI-0002")
    rle = read(ct[0].path)
    rle.compress(RLELossless, generate_instance_uid=False)
    j2k = read(us[0].path)
    j2k.compress(JPEG2000Lossless, generate_instance_uid=False)
    special = {ct[0].sop: dataset_bytes(rle), us[0].sop: dataset_bytes(j2k), mr[1].sop: mr_bytes}
    for inst in archive.all():
        data = special.get(inst.sop, inst.path.read_bytes())
        requests.post(f"{target.url}/instances", data=data, timeout=30).raise_for_status()
    record_migrated(ledger_dsn, archive, changes={mr[1].sop: mr_changes})
    return source, target, archive


def _statuses(out: Path) -> dict[str, str]:
    df = pd.read_parquet(out / "hash_report.parquet")
    return dict(zip(df.sop_instance_uid, df.status, strict=True))


def test_tampered_target_is_found_exactly(arranged, ledger_dsn: str, tmp_path: Path) -> None:
    source, target, archive = arranged
    ct, mr = archive.instances["ct"], archive.instances["mr"]
    # Tamper: one pixel of CT 2 changed by +1, CT 3 deleted, MR 1 header altered beyond the
    # recorded coercions.
    bad = read(ct[1].path)
    arr = bad.pixel_array.copy()
    arr[3, 3] += 1
    bad.PixelData = arr.tobytes()
    replace_instance(target.url, ct[1].sop, dataset_bytes(bad))
    delete_instance(target.url, ct[2].sop)
    altered = read(mr[0].path)
    altered.StudyDescription = "CHANGED AT TARGET"
    replace_instance(target.url, mr[0].sop, dataset_bytes(altered))

    summary = run_validation(
        ledger_dsn, _conn(target), _node(source), Scope(), workers=2, sample_fraction=0.5
    )

    out = tmp_path / "data" / "validation"
    statuses = _statuses(out)
    expected = {i.sop: "verified" for i in archive.all()}
    expected.update(
        {ct[1].sop: "pixel_mismatch", ct[2].sop: "missing_at_target", mr[0].sop: "header_mismatch"}
    )
    assert statuses == expected
    df = pd.read_parquet(out / "hash_report.parquet")
    assert df.set_index("sop_instance_uid").loc[mr[0].sop, "detail"] == "StudyDescription differs"
    assert bool(df.match.sum() == len(expected) - 3)
    assert summary["instances_source"] == len(expected)
    assert summary["instances_verified"] == len(expected) - 3
    assert summary["instances_mismatched"] == 2 and summary["instances_missing"] == 1
    assert summary["expectations"]["success"] is False
    assert (out / "data_docs" / "index.html").exists()
    assert json.loads((out / "summary.json").read_text())["instances_missing"] == 1
    assert (out / "studies.csv").exists() and (out / "studies.html").exists()

    with Ledger(ledger_dsn) as ledger:
        states = {
            r["study_instance_uid"]: (r["state"], r["reason"]) for r in ledger.query("SELECT * FROM studies")
        }
        verified_events = ledger.query("SELECT study_instance_uid FROM custody WHERE event = 'verified'")
    uid = {k: v["uid"] for k, v in archive.studies.items()}
    assert states[uid["ct"]] == ("review", "pixel_mismatch")
    assert states[uid["mr"]] == ("review", "header_mismatch")
    assert states[uid["us"]] == ("verified", None) and states[uid["tomo"]] == ("verified", None)
    assert sorted(r["study_instance_uid"] for r in verified_events) == sorted([uid["us"], uid["tomo"]])
    assert sorted(summary["studies_review_list"]) == sorted([uid["ct"], uid["mr"]])


def test_rerun_resumes_and_never_duplicates(arranged, ledger_dsn: str, tmp_path: Path) -> None:
    source, target, archive = arranged
    run_validation(ledger_dsn, _conn(target), _node(source), Scope(), workers=0, sample_fraction=None)
    with Ledger(ledger_dsn) as ledger:
        before = ledger.query("SELECT sop_instance_uid, checked_at FROM verification ORDER BY 1")
        events = ledger.query(
            "SELECT count(*) AS n FROM custody WHERE event LIKE 'state:%%' OR event = 'verified'"
        )
    second = run_validation(
        ledger_dsn, _conn(target), _node(source), Scope(), workers=0, sample_fraction=None
    )
    with Ledger(ledger_dsn) as ledger:
        after = ledger.query("SELECT sop_instance_uid, checked_at FROM verification ORDER BY 1")
        events_after = ledger.query(
            "SELECT count(*) AS n FROM custody WHERE event LIKE 'state:%%' OR event = 'verified'"
        )
    assert before == after  # nothing re-read: all verified
    assert events == events_after
    assert second["instances_verified"] == second["instances_source"] == len(archive.all())
    # --recheck reads everything again; after a tamper the study goes to review.
    delete_instance(target.url, archive.instances["tomo"][0].sop)
    third = run_validation(
        ledger_dsn, _conn(target), _node(source), Scope(), recheck=True, workers=0, sample_fraction=None
    )
    assert third["instances_missing"] == 1
    with Ledger(ledger_dsn) as ledger:
        state = ledger.study(archive.studies["tomo"]["uid"])
    assert (state["state"], state["reason"]) == ("review", "missing_at_target")


def test_instance_lost_before_the_ledger_is_found_by_requery(
    servers, tmp_path: Path, ledger_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = servers
    source.reset()
    target.reset()
    monkeypatch.setenv("PACSMIG_DATA_DIR", str(tmp_path / "data"))
    archive: Archive = make_archive(tmp_path / "archive", seed=9)
    lost = archive.instances["ct"][1]
    assert source.upload_files(archive.files) == len(archive.files)
    assert target.upload_files([p for p in archive.files if p != lost.path]) == len(archive.files) - 1
    # The pipeline never saw `lost` (no instances row) and one study is held for MPI.
    record_migrated(ledger_dsn, archive, skip={lost.sop})
    with Ledger(ledger_dsn) as ledger:
        from pacsmig.ledger import Reason, StudyState

        ledger.set_state(archive.studies["tomo"]["uid"], StudyState.HELD, reason=Reason.NO_MPI_MATCH)
    summary = run_validation(
        ledger_dsn, _conn(target), _node(source), Scope(date_from=None), workers=0, sample_fraction=None
    )
    statuses = _statuses(tmp_path / "data" / "validation")
    assert statuses[lost.sop] == "missing_at_target"
    assert statuses[archive.instances["tomo"][0].sop] == "held"
    assert summary["instances_missing"] == 1 and summary["instances_held"] == 1
    df = pd.read_parquet(tmp_path / "data" / "validation" / "hash_report.parquet").set_index(
        "sop_instance_uid"
    )
    assert "not in the ledger" in df.loc[lost.sop, "detail"]
    with Ledger(ledger_dsn) as ledger:
        assert ledger.study(archive.studies["ct"]["uid"])["reason"] == "missing_at_target"
        assert ledger.study(archive.studies["tomo"]["uid"])["state"] == "held"


def test_date_range_limits_the_scope(arranged, ledger_dsn: str, tmp_path: Path) -> None:
    source, target, archive = arranged
    summary = run_validation(
        ledger_dsn,
        _conn(target),
        _node(source),
        Scope.parse("2024-01-01", "2024-12-31"),
        workers=0,
        sample_fraction=None,
    )
    expected = len(archive.instances["ct"]) + len(archive.instances["us"])
    assert summary["instances_source"] == expected == summary["instances_verified"]
    assert summary["range"]["date_from"] == "2024-01-01"
    with Ledger(ledger_dsn) as ledger:
        assert ledger.study(archive.studies["mr"]["uid"])["state"] == "loaded"


def test_lossless_and_transformed_copies_verify(arranged, ledger_dsn: str, tmp_path: Path) -> None:
    source, target, archive = arranged
    summary = run_validation(
        ledger_dsn, _conn(target), _node(source), Scope(), workers=0, sample_fraction=None
    )
    assert summary["instances_verified"] == summary["instances_source"] == len(archive.all())
    assert summary["expectations"]["success"] is True, summary["expectations"]
    df = pd.read_parquet(tmp_path / "data" / "validation" / "hash_report.parquet").set_index(
        "sop_instance_uid"
    )
    ct0 = archive.instances["ct"][0].sop
    assert df.loc[ct0, "target_transfer_syntax"] == str(RLELossless)
    assert df.loc[ct0, "source_raw_hash"] != df.loc[ct0, "target_raw_hash"]
    assert df.loc[ct0, "source_pixel_hash"] == df.loc[ct0, "target_pixel_hash"]
    # How each match was established is in the report: the transcoded copies were decoded, the
    # byte-identical ones matched on identical pixel bytes and decode inputs.
    assert df.loc[ct0, "method"] == "decoded" == df.loc[archive.instances["us"][0].sop, "method"]
    untouched = [i.sop for i in archive.all() if i.sop not in (ct0, archive.instances["us"][0].sop)
                 and df.loc[i.sop, "source_raw_hash"] != "no-pixel-data"]
    assert untouched and set(df.loc[untouched, "method"]) == {"raw_identical"}
    assert (
        pydicom.uid.UID(df.loc[archive.instances["us"][0].sop, "target_transfer_syntax"]) == JPEG2000Lossless
    )


def test_lossy_transcode_by_the_target_is_flagged(arranged, ledger_dsn: str, tmp_path: Path) -> None:
    """Orthanc re-encodes the 8-bit cine as JPEG baseline (lossy): pixels no longer match."""
    source, target, archive = arranged
    cine = archive.instances["us"][0]
    replace_instance(target.url, cine.sop, cine.path.read_bytes())  # Orthanc alone cannot decode J2K
    oid = orthanc_id(target.url, cine.sop)
    resp = requests.post(
        f"{target.url}/instances/{oid}/modify",
        timeout=30,
        json={"Transcode": "1.2.840.10008.1.2.4.50", "Force": True},
    )
    resp.raise_for_status()
    lossy = pydicom.dcmread(BytesIO(resp.content))
    assert lossy.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    # Orthanc gives the modified copy new UIDs: put the original ones back (header only).
    lossy.SOPInstanceUID = lossy.file_meta.MediaStorageSOPInstanceUID = cine.sop
    lossy.SeriesInstanceUID, lossy.StudyInstanceUID = cine.series, cine.study
    replace_instance(target.url, cine.sop, dataset_bytes(lossy))
    summary = run_validation(
        ledger_dsn, _conn(target), _node(source), Scope(), workers=0, sample_fraction=None
    )
    statuses = _statuses(tmp_path / "data" / "validation")
    assert statuses[cine.sop] == "pixel_mismatch"
    assert [s for s in statuses.values() if s != "verified"] == ["pixel_mismatch"]
    assert summary["instances_mismatched"] == 1


def test_cli_validate(arranged, ledger_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    from pacsmig.cli import main

    source, target, archive = arranged
    monkeypatch.setenv("AIRFLOW_CONN_TARGET_ARCHIVE", _conn(target).to_json())
    node = ConnectionSpec("legacy_pacs", "dicom", "127.0.0.1", source.dicom_port,
                          extra={"ae_title": source.aet, "calling_ae_title": "PACSMIG"})
    monkeypatch.setenv("AIRFLOW_CONN_LEGACY_PACS", node.to_json())
    assert main(["validate", "--dsn", ledger_dsn, "--workers", "0", "--sample-fraction", "0.25"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["instances_verified"] == len(archive.all())
    summary = json.loads((tmp_path / "data" / "validation" / "summary.json").read_text())
    assert summary["instances_verified"] == len(archive.all()) and summary["review_sample"]["studies"] == 1
    delete_instance(target.url, archive.instances["ct"][0].sop)
    rerun = ["validate", "--dsn", ledger_dsn, "--workers", "0", "--recheck", "--sample-fraction", "0"]
    assert main(rerun) == 1
    assert main(["custody", "--dsn", ledger_dsn, "verify"]) == 0
