"""Unit tests of the MPI crosswalk (issuer-qualified) and reconciliation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from transform_testkit import make_dataset

from pacsmig.errors import TransformError
from pacsmig.transform.mpi import Crosswalk, reconcile


def write_csv(path: Path, rows: list[tuple[str, str, str]],
              header: str = "issuer_of_patient_id,patient_id,mpi_patient_id") -> Path:
    path.write_text(header + "\n" + "".join(f"{i},{p},{m}\n" for i, p, m in rows), encoding="utf-8")
    return path


def test_lookup_is_issuer_qualified(tmp_path: Path) -> None:
    cw = Crosswalk.from_csv(write_csv(tmp_path / "cw.csv", [
        ("HOSP_A", "12345", "MPI-1"), ("CLINIC_B", "12345", "MPI-2"), ("", "777", "MPI-3")]))
    assert cw.lookup("HOSP_A", "12345") == "MPI-1"
    assert cw.lookup("CLINIC_B", "12345") == "MPI-2"
    # no fallback across issuers, and "no issuer" is its own issuer
    assert cw.lookup(None, "12345") is None
    assert cw.lookup("OTHER", "12345") is None
    assert cw.lookup(None, "777") == cw.lookup("", "777") == "MPI-3"
    assert cw.lookup("HOSP_A", "777") is None
    assert len(cw) == 3


def test_local_ids_reverse(tmp_path: Path) -> None:
    cw = Crosswalk.from_csv(write_csv(tmp_path / "cw.csv", [
        ("HOSP_A", "1", "MPI-9"), ("CLINIC_B", "C-1", "MPI-9"), ("HOSP_A", "2", "MPI-8")]))
    assert sorted(cw.local_ids("MPI-9")) == [("CLINIC_B", "C-1"), ("HOSP_A", "1")]
    assert cw.local_ids("MPI-404") == []


def test_conflicting_rows_are_an_error_not_a_choice(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "cw.csv", [("HOSP_A", "1", "MPI-1"), ("HOSP_A", "1", "MPI-2")])
    with pytest.raises(TransformError, match="line 3.*two MPI IDs"):
        Crosswalk.from_csv(path)
    # an exact duplicate is harmless
    assert len(Crosswalk.from_csv(write_csv(tmp_path / "dup.csv", [("A", "1", "M")] * 2))) == 1


def test_bad_header_and_empty_values(tmp_path: Path) -> None:
    with pytest.raises(TransformError, match="header"):
        Crosswalk.from_csv(write_csv(tmp_path / "h.csv", [("a", "b", "c")], header="issuer,pid,mpi"))
    with pytest.raises(TransformError, match="must not be empty"):
        Crosswalk.from_csv(write_csv(tmp_path / "e.csv", [("A", "1", "")]))


def test_reconcile_sets_mpi_identity_and_keeps_old_ids() -> None:
    ds = make_dataset(PatientID="12345", IssuerOfPatientID="CLINIC_B")
    changes = reconcile(ds, "MPI-2", "HOSPITAL_MPI")
    assert ds.PatientID == "MPI-2" and ds.IssuerOfPatientID == "HOSPITAL_MPI"
    (item,) = ds.OtherPatientIDsSequence
    assert (item.PatientID, item.IssuerOfPatientID, item.TypeOfPatientID) == ("12345", "CLINIC_B", "TEXT")
    assert {c.keyword: (c.old, c.new) for c in changes if c.keyword != "OtherPatientIDsSequence"} == {
        "PatientID": ("12345", "MPI-2"), "IssuerOfPatientID": ("CLINIC_B", "HOSPITAL_MPI")}
    assert all(c.reason == "COERCE" and c.rule_id == "mpi" for c in changes)
    # a second run changes nothing (idempotent)
    assert reconcile(ds, "MPI-2", "HOSPITAL_MPI") == []
    assert len(ds.OtherPatientIDsSequence) == 1


def test_reconcile_preserves_existing_other_ids_and_moves_qualifiers() -> None:
    ds = make_dataset(PatientID="A1")
    other = Dataset()
    other.PatientID = "OLD-7"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    qual = Dataset()
    qual.UniversalEntityID = "1.2.3.4"
    ds.IssuerOfPatientIDQualifiersSequence = [qual]
    changes = reconcile(ds, "MPI-1", "HOSPITAL_MPI")
    ids = [(i.PatientID, str(i.get("IssuerOfPatientID", ""))) for i in ds.OtherPatientIDsSequence]
    assert ids == [("OLD-7", ""), ("A1", "")]
    assert ds.OtherPatientIDsSequence[1].IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.3.4"
    assert "IssuerOfPatientIDQualifiersSequence" not in ds
    seq_change = next(c for c in changes if c.keyword == "OtherPatientIDsSequence")
    assert len(seq_change.old) == 1 and len(seq_change.new) == 2
    assert seq_change.original is not None  # the prior sequence is what Modified Attributes keeps


def test_reconcile_only_issuer_differs() -> None:
    ds = make_dataset(PatientID="MPI-5")
    changes = reconcile(ds, "MPI-5", "HOSPITAL_MPI")
    assert [c.keyword for c in changes] == ["OtherPatientIDsSequence", "IssuerOfPatientID"]
    assert ds.PatientID == "MPI-5"


def test_reconcile_refuses_empty_mpi_id() -> None:
    with pytest.raises(TransformError):
        reconcile(make_dataset(), " ", "HOSPITAL_MPI")
