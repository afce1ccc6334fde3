"""A packed work unit on real components: one failing study does not stop the others, a claimed
study is left to its owner, and a retry of the unit resumes without duplicating anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsmig.ledger import Ledger
from pacsmig.migrate.pipeline import claim
from pacsmig.migrate.units import migrate_unit
from testbed.orthanc import OrthancServer
from tests.integration.test_migrate_pipeline import context, planned  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def test_a_unit_migrates_its_studies_isolating_failures_and_resumes(
        ledger_dsn: str, legacy_node, target_archive: OrthancServer, planned, tmp_path: Path) -> None:  # noqa: ANN001, F811
    truth = planned
    target_archive.reset()
    matched = [s for s in truth.studies if s.mpi_patient_id][:3]
    other_run = [s for s in truth.studies if s.mpi_patient_id][3]
    bogus = "1.2.826.0.1.3680043.10.999.1"          # not in the ledger: its extract step raises
    unit = [{"study_instance_uid": matched[0].study_instance_uid, "label": "a"},
            {"study_instance_uid": bogus, "label": "b"},
            {"study_instance_uid": other_run.study_instance_uid, "label": "c"},
            *({"study_instance_uid": s.study_instance_uid, "label": "d"} for s in matched[1:])]
    with Ledger(ledger_dsn) as ledger:
        assert claim(ledger, other_run.study_instance_uid, "pacs_migrate/other_run/0")
    ctx = context(ledger_dsn, legacy_node, target_archive, tmp_path)

    result = migrate_unit(ctx, unit, "pacs_migrate/run/0")
    assert set(result.failed) == {bogus} and "not in the ledger" in result.failed[bogus]
    assert result.skipped == [other_run.study_instance_uid]
    assert result.done == [s.study_instance_uid for s in matched]
    expected = sum(s.n_instances for s in matched)
    assert target_archive.count("instances") == expected
    with Ledger(ledger_dsn) as ledger:
        rows = {r["study_instance_uid"]: r for r in ledger.query(
            "SELECT study_instance_uid, state, claimed_by FROM studies WHERE study_instance_uid = ANY(%s)",
            ([s.study_instance_uid for s in [*matched, other_run]],))}
    assert {u: r["state"] for u, r in rows.items() if u != other_run.study_instance_uid} == {
        s.study_instance_uid: "loaded" for s in matched}
    assert all(rows[s.study_instance_uid]["claimed_by"] is None for s in matched)   # released
    assert rows[other_run.study_instance_uid]["claimed_by"] == "pacs_migrate/other_run/0"
    assert rows[other_run.study_instance_uid]["state"] == "queued"

    # The retry of the same unit: finished studies are not redone, nothing is duplicated.
    again = migrate_unit(ctx, unit, "pacs_migrate/run/0")
    assert set(again.failed) == {bogus} and again.done == []
    assert set(result.done) <= set(again.skipped)                       # finished: left as they are
    assert target_archive.count("instances") == expected


def test_an_idle_task_takes_over_unclaimed_studies_and_nothing_is_done_twice(
        ledger_dsn: str, legacy_node, target_archive: OrthancServer, planned, tmp_path: Path) -> None:  # noqa: ANN001, F811
    from pacsmig.migrate.pipeline import select_studies

    truth = planned
    target_archive.reset()
    matched = [s for s in truth.studies if s.mpi_patient_id][:4]
    uids = [s.study_instance_uid for s in matched]
    ctx = context(ledger_dsn, legacy_node, target_archive, tmp_path)

    def steal() -> list[dict]:
        with Ledger(ledger_dsn) as ledger:
            return [s for s in select_studies(ledger, all_queued=True, include_held=False, claimable_by="run/0")
                    if s["study_instance_uid"] in uids]

    # Unit A holds one study, unit B three; A runs first, finishes, and takes B's over (tail first).
    a = migrate_unit(ctx, [{"study_instance_uid": uids[0], "label": "a"}], "run/0", steal=steal)
    assert a.done[0] == uids[0] and sorted(a.stolen) == sorted(uids[1:]) and not a.failed
    b = migrate_unit(ctx, [{"study_instance_uid": u, "label": "b"} for u in uids[1:]], "run/1", steal=steal)
    assert b.done == [] and sorted(b.skipped) == sorted(uids[1:]) and not b.failed
    assert target_archive.count("instances") == sum(s.n_instances for s in matched)
    with Ledger(ledger_dsn) as ledger:
        rows = ledger.query("SELECT state, claimed_by FROM studies WHERE study_instance_uid = ANY(%s)", (uids,))
    assert {(r["state"], r["claimed_by"]) for r in rows} == {("loaded", None)}


def test_a_task_retry_resumes_the_studies_it_took_over_and_no_one_else_takes_them(
        ledger_dsn: str, planned) -> None:  # noqa: ANN001, F811
    from pacsmig.migrate.pipeline import select_studies

    uid = planned.studies[0].study_instance_uid
    with Ledger(ledger_dsn) as ledger:   # task run/0 took the study over, then its step failed
        assert claim(ledger, uid, "run/0")

        def listed(token: str) -> bool:
            return uid in {s["study_instance_uid"] for s in select_studies(
                ledger, all_queued=True, include_held=False, claimable_by=token)}

        assert listed("run/0") and not listed("run/1")
