"""
### pacs_prefetch — an admitted patient's priors jump the queue

The enterprise cutover: the new archive is live at once and history migrates in the background
(`pacs_migrate` backfill, newest first). When a patient shows up — an HL7 ADT A01 / A04 / A05
(admit, register, pre-admit) received by `pacsmig adt-listener` and stored in the ledger — this DAG
wakes up (a deferrable sensor, no worker slot held while waiting), resolves the patient's local IDs
through the MPI crosswalk, raises those studies' priority and migrates them at once with a higher
priority weight on the shared `legacy_pacs` pool, ahead of background work.

Runs continuously (one run at a time); each run handles the admissions that arrived since the last.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, task

from pacsmig.ops.migrate_tasks import migrate_task
from pacsmig.ops.sensors import AdmissionSensor

PREFETCH_PRIORITY_WEIGHT = 100


@dag(
    dag_id="pacs_prefetch",
    schedule="@continuous",
    max_active_runs=1,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["pacsmig", "phase3", "prefetch", "sensor"],
    doc_md=__doc__,
    default_args={"owner": "pacsmig", "retries": 2, "retry_delay": timedelta(seconds=15)},
    params={
        "targets": Param(["target_archive"], type="array",
                         description="Connection ids of the destinations."),
        "rules_path": Param(None, type=["null", "string"],
                            description="Coercion rule file. Empty: $PACSMIG_RULES or the shipped default."),
    },
)
def pacs_prefetch():
    admissions = AdmissionSensor(task_id="wait_for_admission", poke_interval=5,
                                 timeout=timedelta(hours=12).total_seconds(), soft_fail=True)

    @task
    def prioritise(events: list[dict]) -> list[dict]:
        from pacsmig.ops.prefetch_tasks import prioritise_admitted

        return prioritise_admitted(events)

    @task(trigger_rule="all_done")
    def mark_processed(events: list[dict]) -> int:
        from pacsmig.ops.prefetch_tasks import mark_admissions_processed

        return mark_admissions_processed(events)

    units = prioritise(admissions.output)
    done = migrate_task(priority_weight=PREFETCH_PRIORITY_WEIGHT).expand(unit=units)
    done >> mark_processed(admissions.output)


pacs_prefetch()
