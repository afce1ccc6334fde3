"""The MPI crosswalk in the real PostgreSQL ledger: idempotent upsert, custody entry, read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsmig.ledger import Ledger
from pacsmig.ledger.cli import main as ledger_cli
from pacsmig.transform.mpi import Crosswalk, load_crosswalk_into_ledger

pytestmark = pytest.mark.integration

HEADER = "issuer_of_patient_id,patient_id,mpi_patient_id\n"


def test_load_is_idempotent_and_updates(ledger_dsn: str, tmp_path: Path) -> None:
    csv_path = tmp_path / "cw.csv"
    csv_path.write_text(HEADER + "HOSP_A,12345,MPI-1\nCLINIC_B,12345,MPI-2\n,777,MPI-3\n")
    with Ledger(ledger_dsn) as ledger:
        assert load_crosswalk_into_ledger(ledger, csv_path) == 3
        assert load_crosswalk_into_ledger(ledger, csv_path) == 3
        rows = ledger.query("SELECT * FROM mpi_crosswalk ORDER BY issuer_of_patient_id, patient_id")
        assert [(r["issuer_of_patient_id"], r["patient_id"], r["mpi_patient_id"]) for r in rows] == [
            ("", "777", "MPI-3"), ("CLINIC_B", "12345", "MPI-2"), ("HOSP_A", "12345", "MPI-1")]
        csv_path.write_text(HEADER + "HOSP_A,12345,MPI-1B\n")
        assert load_crosswalk_into_ledger(ledger, csv_path) == 1
        cw = Crosswalk.from_ledger(ledger)
        custody = ledger.query("SELECT details FROM custody WHERE event = 'mpi_crosswalk_loaded' "
                               "ORDER BY seq")
    assert cw.lookup("HOSP_A", "12345") == "MPI-1B"
    assert cw.lookup("CLINIC_B", "12345") == "MPI-2"
    assert cw.lookup(None, "777") == "MPI-3"
    assert [(d["details"]["inserted"], d["details"]["updated"]) for d in custody] == [(3, 0), (0, 0), (0, 1)]
    assert all(len(d["details"]["sha256"]) == 64 for d in custody)


def test_generator_crosswalk_via_cli(ledger_dsn: str, synthetic_archive) -> None:  # noqa: ANN001
    assert ledger_cli(["--dsn", ledger_dsn, "load-crosswalk", str(synthetic_archive.crosswalk_path)]) == 0
    from_csv = Crosswalk.from_csv(synthetic_archive.crosswalk_path)
    with Ledger(ledger_dsn) as ledger:
        from_db = Crosswalk.from_ledger(ledger)
    assert from_db.items() == from_csv.items() and len(from_db) > 0
    for issuer, patient_id in synthetic_archive.unmatched_patients:
        assert from_db.lookup(issuer, patient_id) is None
