"""ADT storage, the admission queue, patient resolution and prefetch priority on the real ledger."""

import pytest

from pacsmig.adt.messages import AdtError, parse_adt
from pacsmig.adt.send import build_adt
from pacsmig.adt.store import (
    PRIORITISED_EVENT,
    handle_admissions,
    mark_processed,
    patient_studies,
    pending_admissions,
    prioritise,
    store_event,
)
from pacsmig.ledger import GENESIS_HASH, Ledger, StudyState, custody_entry_hash

pytestmark = pytest.mark.integration
MPI = "HOSPITAL_MPI"


def _store(ledger: Ledger, event: str, mpi: str, cid: str, **kw: str) -> int:
    return store_event(ledger, parse_adt(build_adt(event, mpi, cid, issuer=MPI, **kw), issuer=MPI)).id


def _studies(ledger: Ledger, rows: list[tuple]) -> None:
    with ledger.transaction() as cur:
        for uid, pid, issuer, mpi, date, state in rows:
            cur.execute("INSERT INTO studies (study_instance_uid, patient_id, issuer_of_patient_id, "
                        "mpi_patient_id, study_date, state) VALUES (%s, %s, %s, %s, %s, %s)",
                        (uid, pid, issuer, mpi, date, state))


def test_store_is_idempotent_and_refuses_a_reused_control_id(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        first = store_event(ledger, parse_adt(build_adt("A01", "M1", "C1", issuer=MPI), issuer=MPI))
        again = store_event(ledger, parse_adt(build_adt("A01", "M1", "C1", issuer=MPI), issuer=MPI))
        assert (first.duplicate, again.duplicate, again.id) == (False, True, first.id)
        with pytest.raises(AdtError, match="already used"):
            store_event(ledger, parse_adt(build_adt("A04", "M1", "C1", issuer=MPI), issuer=MPI))
        assert ledger.query("SELECT count(*) AS n FROM adt_events")[0]["n"] == 1


def test_pending_admissions_excludes_updates_merges_and_processed(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        a01 = _store(ledger, "A01", "M1", "C1")
        _store(ledger, "A08", "M1", "C2")
        a04 = _store(ledger, "A04", "M2", "C3")
        _store(ledger, "A40", "M2", "C4", prior_patient_id="M0")
        a05 = _store(ledger, "A05", "M3", "C5")
        pending = pending_admissions(ledger)
        assert [p["id"] for p in pending] == [a01, a04, a05]
        assert pending[0] == {"id": a01, "message_control_id": "C1", "event_type": "A01",
                              "mpi_patient_id": "M1"}
        assert [p["id"] for p in pending_admissions(ledger, after_id=a01)] == [a04, a05]
        assert [p["id"] for p in pending_admissions(ledger, limit=1)] == [a01]
        assert mark_processed(ledger, [a01, a04]) == 2
        assert mark_processed(ledger, [a01]) == 0
        assert [p["id"] for p in pending_admissions(ledger)] == [a05]


def test_patient_studies_resolves_through_the_crosswalk(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        _studies(ledger, [
            ("1.1", "L1", "SITE_A", None, "2020-01-01", "discovered"),   # crosswalk (SITE_A, L1)
            ("1.2", "L2", None, None, "2022-05-01", "discovered"),       # crosswalk ('', L2): no issuer
            ("1.3", "X9", "SITE_B", "M1", "2021-01-01", "discovered"),   # mpi_patient_id already set
            ("1.4", "M1", MPI, None, "2019-01-01", "discovered"),        # filed under the MPI ID itself
            ("1.5", "L1", "SITE_B", None, "2023-01-01", "discovered"),   # same local ID, other issuer
            ("1.6", "L3", "SITE_A", None, "2023-01-01", "discovered"),   # another patient
        ])
        with ledger.transaction() as cur:
            cur.executemany("INSERT INTO mpi_crosswalk VALUES (%s, %s, %s)",
                            [("SITE_A", "L1", "M1"), ("", "L2", "M1"), ("SITE_A", "L3", "M2")])
        assert patient_studies(ledger, "M1") == ["1.2", "1.3", "1.1", "1.4"]  # newest first
        assert patient_studies(ledger, "M2") == ["1.6"]
        assert patient_studies(ledger, "NOBODY") == []


def test_prioritise_raises_once_with_custody(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        _studies(ledger, [("2.1", "L1", "S", "M1", "2020-01-01", "discovered"),
                          ("2.2", "L1", "S", "M1", "2021-01-01", "verified"),
                          ("2.3", "L1", "S", "M1", "2022-01-01", "queued")])
        with ledger.transaction() as cur:
            cur.execute("UPDATE studies SET priority = 500 WHERE study_instance_uid = '2.3'")
        raised = prioritise(ledger, ["2.1", "2.2", "2.3", "2.1"], message_control_id="C-ADM")
        assert raised == ["2.1"]  # 2.2 is verified, 2.3 is already above
        assert prioritise(ledger, ["2.1"], message_control_id="C-ADM") == []  # a re-run changes nothing
        prio = {r["study_instance_uid"]: r["priority"] for r in ledger.query("SELECT * FROM studies")}
        assert prio == {"2.1": 100, "2.2": 0, "2.3": 500}
        entries = ledger.query("SELECT * FROM custody ORDER BY seq")
    assert [(e["event"], e["study_instance_uid"]) for e in entries] == [(PRIORITISED_EVENT, "2.1")]
    assert entries[0]["details"] == {"from": 0, "to": 100, "message_control_id": "C-ADM"}
    e = entries[0]
    assert e["entry_hash"] == custody_entry_hash(GENESIS_HASH, e["seq"], e["study_instance_uid"], e["event"],
                                                 e["actor"], e["details"], e["created_at"])


def test_handle_admissions_prioritises_and_marks_processed(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        _studies(ledger, [("3.1", "L1", "SITE_A", None, "2020-01-01", "discovered"),
                          ("3.2", "L1", "SITE_A", None, "2021-01-01", StudyState.HELD.value)])
        with ledger.transaction() as cur:
            cur.execute("INSERT INTO mpi_crosswalk VALUES ('SITE_A', 'L1', 'M1')")
        _store(ledger, "A01", "M1", "C-1")
        _store(ledger, "A04", "M-NO-PRIORS", "C-2")
        results = handle_admissions(ledger, pending_admissions(ledger))
        assert [(r["message_control_id"], r["studies"], r["prioritised"]) for r in results] == [
            ("C-1", 2, 2), ("C-2", 0, 0)]
        assert pending_admissions(ledger) == []
        custody = ledger.query("SELECT study_instance_uid, details FROM custody ORDER BY seq")
        assert {c["study_instance_uid"] for c in custody} == {"3.1", "3.2"}
        assert {c["details"]["message_control_id"] for c in custody} == {"C-1"}
