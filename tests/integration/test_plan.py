"""Phase 2 on the real PostgreSQL: inventory upsert / delta sync, strategies, the plan, claiming."""

from __future__ import annotations

import threading
from datetime import date

import pandas as pd
import pytest

from pacsmig.ledger import Ledger, StudyState
from pacsmig.migrate.pipeline import claim, release, select_studies
from pacsmig.plan.inventory import load_inventory
from pacsmig.plan.strategy import PRIORITY_ADMISSION, PRIORITY_RECENT, apply_strategy, build_plan


def inventory(n: int = 6, undated: int = 1) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows.append({"study_instance_uid": f"1.2.826.0.1.{i}", "patient_id": f"MRN{i:08d}",
                     "issuer_of_patient_id": "HOSP_A", "patient_name": "X^Y", "patient_birth_date": "19700101",
                     "study_date": None if i < undated else date(2012 + i, 3, 1 + i),
                     "accession_number": None if i == 2 else f"ACC{i}", "modalities": ["CT"],
                     "n_series": 2, "n_instances": 10 + i})
    return pd.DataFrame(rows)


def test_inventory_load_is_an_idempotent_upsert_with_custody(ledger_dsn: str) -> None:
    inv = inventory()
    with Ledger(ledger_dsn) as ledger:
        first = load_inventory(ledger, inv)
        again = load_inventory(ledger, inv)
        studies = ledger.query("SELECT * FROM studies ORDER BY study_instance_uid")
        custody = ledger.query("SELECT event, count(*) AS n FROM custody GROUP BY event")
    assert (first.new, first.changed) == (6, 0)
    assert (again.new, again.changed, again.unchanged) == (0, 0, 6)
    assert [s["expected_instances"] for s in studies] == [10 + i for i in range(6)]
    assert studies[0]["study_date"] is None and studies[2]["accession_number"] is None
    assert {r["event"]: r["n"] for r in custody} == {"queried": 6}


def test_delta_sync_requeues_changed_studies_and_adds_new_ones(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        load_inventory(ledger, inventory())
        apply_strategy(ledger, "big_bang", today=date(2026, 1, 1))
        ledger.set_state("1.2.826.0.1.3", StudyState.VERIFIED)
        grown = pd.concat([inventory(), inventory(8).iloc[6:]])
        grown.loc[grown.study_instance_uid == "1.2.826.0.1.3", "n_instances"] = 99
        delta = load_inventory(ledger, grown)
        changed = ledger.study("1.2.826.0.1.3")
        events = [r["event"] for r in ledger.query(
            "SELECT event FROM custody WHERE study_instance_uid = '1.2.826.0.1.3' ORDER BY seq")]
    assert (delta.new, delta.changed) == (2, 1)
    assert changed["state"] == "queued" and changed["expected_instances"] == 99
    assert changed["reason"] == "changed_at_source"
    assert events[-1] == "changed_at_source"


def test_prefetch_puts_admitted_patients_then_recent_studies_first(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        load_inventory(ledger, inventory())
        with ledger.transaction() as cur:
            cur.execute("INSERT INTO mpi_crosswalk VALUES ('HOSP_A', 'MRN00000001', 'MPI1')")
            cur.execute("INSERT INTO adt_events (message_control_id, event_type, mpi_patient_id, raw_message) "
                        "VALUES ('c1', 'A05', 'MPI1', 'MSH|...')")
        queued = apply_strategy(ledger, "prefetch", recent_years=2, today=date(2017, 6, 1))
        prio = {r["study_instance_uid"]: r["priority"] for r in ledger.query("SELECT * FROM studies")}
        order = [s["study_instance_uid"] for s in select_studies(ledger, all_queued=True)]
    assert queued == 6
    assert prio["1.2.826.0.1.1"] == PRIORITY_ADMISSION
    assert prio["1.2.826.0.1.5"] == prio["1.2.826.0.1.4"] == PRIORITY_RECENT   # 2017, 2016 >= 2015-06
    assert prio["1.2.826.0.1.3"] == 0
    assert order[0] == "1.2.826.0.1.1" and order[1] == "1.2.826.0.1.5"


def test_plan_has_partitions_eta_and_the_backfill_commands(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        load_inventory(ledger, inventory())
        apply_strategy(ledger, "prefetch", today=date(2026, 1, 1))
        plan = build_plan(ledger, "prefetch", throughput_images_per_s=10)
        big = build_plan(ledger, "big_bang", throughput_images_per_s=10)
    dated = inventory().dropna(subset=["study_date"])
    assert sum(p["studies"] for p in plan.partitions) == len(dated)
    assert plan.instances_queued == sum(10 + i for i in range(6))
    assert plan.eta_hours == pytest.approx(plan.instances_queued / 10 / 3600, abs=0.01)
    # Runs are picked by their logical date (interval start): the months holding the first and last study.
    assert dated.study_date.min() == date(2013, 3, 2) and dated.study_date.max() == date(2017, 3, 6)
    assert plan.commands[0] == ("airflow backfill create --dag-id pacs_migrate --from-date 2013-03-01 "
                                "--to-date 2017-03-01 --run-backwards")
    assert "--run-backwards" not in big.commands[0]
    assert plan.undated_studies == 1 and any('"undated": true' in c for c in plan.commands)


def test_select_partition_by_date_and_patient(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        load_inventory(ledger, inventory())
        apply_strategy(ledger, "big_bang", today=date(2026, 1, 1))
        with ledger.transaction() as cur:
            cur.execute("INSERT INTO mpi_crosswalk VALUES ('HOSP_A', 'MRN00000004', 'MPI4')")
        in_2016 = select_studies(ledger, date_from=date(2016, 1, 1), date_to=date(2017, 1, 1))
        undated = select_studies(ledger, undated=True)
        by_mpi = select_studies(ledger, patient_id="MPI4")
    assert [s["study_instance_uid"] for s in in_2016] == ["1.2.826.0.1.4"]
    assert [s["study_instance_uid"] for s in undated] == ["1.2.826.0.1.0"]
    assert [s["study_instance_uid"] for s in by_mpi] == ["1.2.826.0.1.4"]
    assert in_2016[0]["label"] == "ACC4"


def test_claim_is_exclusive_across_concurrent_workers(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        load_inventory(ledger, inventory(1, undated=0))
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        with Ledger(ledger_dsn) as led:
            barrier.wait()
            results.append(claim(led, "1.2.826.0.1.0", f"run-{i}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    with Ledger(ledger_dsn) as ledger:
        owner = ledger.study("1.2.826.0.1.0")["claimed_by"]
        assert claim(ledger, "1.2.826.0.1.0", owner)            # the same run (a retry) keeps it
        release(ledger, "1.2.826.0.1.0", owner)
        assert claim(ledger, "1.2.826.0.1.0", "another-run")


def test_a_study_another_run_finished_with_can_be_claimed_again(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        load_inventory(ledger, inventory(1, undated=0))
        assert claim(ledger, "1.2.826.0.1.0", "run-a")
        assert not claim(ledger, "1.2.826.0.1.0", "run-b")        # run-a is still working on it
        ledger.set_state("1.2.826.0.1.0", StudyState.QUARANTINED)  # run-a's last try gave up
        assert claim(ledger, "1.2.826.0.1.0", "run-b")
