"""``pacs_prefetch``: an ADT admission sent over MLLP migrates that patient's priors at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsmig.ledger import Ledger
from tests.dags.test_pacs_migrate import airflow_conns, dag, states  # noqa: F401 - fixture reuse

pytestmark = pytest.mark.dags


def test_admission_pulls_the_patients_priors_ahead_of_the_queue(
        airflow_db: str, airflow_conns: dict[str, str], loaded_legacy, target_archive, tmp_path: Path) -> None:  # noqa: ANN001, F811
    from pacsmig.adt.listener import running_listener
    from pacsmig.adt.send import build_adt, parse_ack, send_adt

    _, truth = loaded_legacy
    dsn = airflow_conns["AIRFLOW_CONN_MIGRATION_LEDGER"]
    assert dag("pacs_plan").test(run_conf={"strategy": "prefetch"}).state == "success"
    # The person registered under two IDs (hospital and acquired clinic) has one MPI ID: both
    # identities' studies are their priors.
    pairs = truth.expected_id_issues["same_demographics_different_ids"][0]
    person = [s for s in truth.studies if (s.issuer_of_patient_id, s.patient_id) in {tuple(p) for p in pairs}]
    mpi = {s.mpi_patient_id for s in person}
    assert len(mpi) == 1 and None not in mpi
    mpi_id = mpi.pop()
    with running_listener(dsn) as listener:
        ack = send_adt("127.0.0.1", listener.port, build_adt("A01", mpi_id, "ADT-TEST-1"))
    assert parse_ack(ack).code == "AA"

    run = dag("pacs_prefetch").test()
    assert run.state == "success"
    st = states(dsn)
    priors = {s.study_instance_uid for s in person}
    assert {st[u] for u in priors} == {"loaded"}
    assert {u for u, s in st.items() if s == "loaded"} == priors          # nobody else jumped the queue
    assert target_archive.count("instances") == sum(s.n_instances for s in person)
    with Ledger(dsn) as ledger:
        assert ledger.query("SELECT processed_at FROM adt_events")[0]["processed_at"] is not None
        prio = ledger.query("SELECT DISTINCT priority FROM studies WHERE study_instance_uid = ANY(%s)",
                            (sorted(priors),))
        entries = ledger.query("SELECT count(*) AS n FROM custody WHERE event = 'prefetch_prioritised'")
    assert [r["priority"] for r in prio] == [100]
    assert entries[0]["n"] == len(priors)
