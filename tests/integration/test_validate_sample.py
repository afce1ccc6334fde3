"""The radiologist's sample: seeded, stratified, enriched; recorded pending; auto-checks catch changes."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
import requests
from validate_arrange import (
    dataset_bytes,
    delete_instance,
    make_archive,
    read,
    record_migrated,
    replace_instance,
)

from pacsmig.config import ConnectionSpec
from pacsmig.ledger import Ledger
from pacsmig.verify.reconcile import Scope
from pacsmig.verify.sample import build_review_sample, clinical_checks, record_sample, select_sample
from testbed.orthanc import OrthancServer

pytestmark = pytest.mark.integration


def _fake_studies(dsn: str) -> dict[str, tuple[str, int]]:
    """40 verified studies without files: 24 CT (2022/2023), 12 MR 2023, 4 US 2024 (one tomo-like MG)."""
    plan = (
        [("CT", 2022)] * 12 + [("CT", 2023)] * 12 + [("MR", 2023)] * 12 + [("US", 2024)] * 3 + [("MG", 2024)]
    )
    out = {}
    with Ledger(dsn) as ledger, ledger.transaction() as cur:
        for i, (modality, year) in enumerate(plan):
            uid = f"1.2.3.{i}"
            cur.execute(
                "INSERT INTO studies (study_instance_uid, study_date, modalities, state) "
                "VALUES (%s, %s, %s, 'verified')",
                (uid, date(year, 3, 1 + i % 27), f"{modality}\\SR"),
            )
            out[uid] = (modality, year)
        cur.execute(
            "INSERT INTO instances (study_instance_uid, sop_instance_uid, series_instance_uid, "
            "sop_class_uid, number_of_frames) VALUES ('1.2.3.39', '9.9', '8.8', %s, 3)",
            ("1.2.840.10008.5.1.4.1.1.13.1.3",),
        )
        cur.executemany(
            "INSERT INTO instances (study_instance_uid, sop_instance_uid, series_instance_uid) "
            "VALUES ('1.2.3.5', %s, '7.7')",
            [(f"7.7.{k}",) for k in range(5)],
        )
    return out


def test_sample_is_seeded_stratified_and_enriched(ledger_dsn: str) -> None:
    studies = _fake_studies(ledger_dsn)
    with Ledger(ledger_dsn) as ledger:
        first = select_sample(ledger, Scope(), fraction=0.10, seed=7, large_series=5)
        again = select_sample(ledger, Scope(), fraction=0.10, seed=7, large_series=5)
        other = [select_sample(ledger, Scope(), fraction=0.10, seed=s, large_series=5) for s in range(8, 14)]
    assert [e.study_instance_uid for e in first] == [e.study_instance_uid for e in again]
    assert any([e.study_instance_uid for e in o] != [e.study_instance_uid for e in first] for o in other)
    assert len(first) == 4  # 10 % of 40
    reasons = {e.study_instance_uid: e.reason for e in first}
    # Complex cases first: the tomosynthesis study and the large-series study are both in.
    assert reasons.get("1.2.3.39") == "tomosynthesis" and reasons.get("1.2.3.5") == "large_series"
    strata = Counter(e.stratum for e in first if e.reason == "stratified")
    assert sum(strata.values()) == 2 and all(s.split("/")[0] in ("CT", "MR") for s in strata)
    assert all(e.modality != "SR" for e in first)
    assert all(studies[e.study_instance_uid][0] == e.modality for e in first)
    with Ledger(ledger_dsn) as ledger:
        assert record_sample(ledger, first) == 4
        assert record_sample(ledger, first) == 0
        rows = ledger.query("SELECT signoff_state, count(*) AS n FROM review_sample GROUP BY 1")
    assert rows == [{"signoff_state": "pending", "n": 4}]


def test_fraction_is_configurable(ledger_dsn: str) -> None:
    _fake_studies(ledger_dsn)
    with Ledger(ledger_dsn) as ledger:
        assert len(select_sample(ledger, Scope(), fraction=0.25, seed=1)) == 10
        assert len(select_sample(ledger, Scope(date_from=date(2024, 1, 1)), fraction=0.10)) == 1
        with pytest.raises(ValueError):
            select_sample(ledger, Scope(), fraction=0)


@pytest.fixture
def target(tmp_path: Path):  # noqa: ANN201
    with OrthancServer(tmp_path / "t", name="STGT", aet="STGT", dicomweb=True) as server:
        yield server


def test_auto_checks_compare_source_and_target(
    target: OrthancServer, ledger_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACSMIG_DATA_DIR", str(tmp_path / "data"))
    archive = make_archive(tmp_path / "archive")
    assert target.upload_files(archive.files) == len(archive.files)
    record_migrated(ledger_dsn, archive)
    conn = ConnectionSpec(
        "target_archive",
        "http",
        "127.0.0.1",
        target.http_port,
        schema="http",
        extra={
            "dicomweb_path": "/dicom-web",
            "viewer_url": "http://viewer.example/?StudyInstanceUIDs={study_instance_uid}",
        },
    )
    with Ledger(ledger_dsn) as ledger:
        clean = {uid: clinical_checks(ledger, conn, s["uid"]) for uid, s in archive.studies.items()}
    assert all(c["ok"] for checks in clean.values() for c in checks), clean
    # Now the target shows the cine at another speed, a CT image with another window and position
    # in the series, and it lost the KO.
    cine = read(archive.instances["us"][0].path)
    cine.FrameTime = 66.6
    replace_instance(target.url, cine.SOPInstanceUID, dataset_bytes(cine))
    ct = read(archive.instances["ct"][1].path)
    ct.WindowCenter, ct.InstanceNumber = 400, 7  # and it now sorts last in its series
    replace_instance(target.url, ct.SOPInstanceUID, dataset_bytes(ct))
    delete_instance(target.url, archive.instances["mr"][-1].sop)
    with Ledger(ledger_dsn) as ledger:
        checks = {
            k: {c["check"]: c for c in clinical_checks(ledger, conn, s["uid"])}
            for k, s in archive.studies.items()
        }
        summary = build_review_sample(ledger, Scope(), conn, fraction=1.0, seed=3)
    assert (
        not checks["us"]["display_attributes"]["ok"]
        and "FrameTime" in checks["us"]["display_attributes"]["detail"]
    )
    assert (
        not checks["ct"]["display_attributes"]["ok"]
        and "WindowCenter" in checks["ct"]["display_attributes"]["detail"]
    )
    assert not checks["ct"]["series_order"]["ok"]
    assert not checks["mr"]["presentation_states_and_key_objects"]["ok"]
    assert all(c["ok"] for c in checks["tomo"].values())
    assert summary["studies"] == 4 and summary["checks_failed"] == 4
    with open(summary["worklist_csv"], newline="") as fh:
        rows = {r["study_instance_uid"]: r for r in csv.DictReader(fh)}
    us_uid = archive.studies["us"]["uid"]
    assert rows[us_uid]["auto_checks"].startswith("FAILED") and rows[us_uid]["features"] == "cine"
    assert rows[us_uid]["wado_url"] == f"http://127.0.0.1:{target.http_port}/dicom-web/studies/{us_uid}"
    assert rows[us_uid]["viewer_url"].endswith(us_uid)
    assert requests.get(rows[us_uid]["wado_url"] + "/metadata", timeout=10).ok
    assert us_uid in Path(summary["worklist_html"]).read_text()
