"""
### pacs_migrate — Phase 3: extract, transform and load one partition of the archive

One run migrates one **partition**: the studies whose StudyDate falls in the run's data interval
(so `airflow backfill create --dag-id pacs_migrate --from-date … --to-date … --run-backwards` is
the historical migration, newest first), or the range / patient given in the Params.

For each study still to migrate (per the ledger; verified ones are skipped) the mapped task
`migrate`, labelled with the accession number (or study UID), runs one step after the other:

1. **extract** — C-MOVE (or C-GET) at STUDY level into the engine's storage SCP, through the
   `legacy_pacs` pool (slots = associations the PACS tolerates); what arrived is counted against the
   source's own listing and missing instances are re-pulled at SERIES/IMAGE level;
2. **transform** — MPI reconciliation (unmatched patients are *held*, reason `no_mpi_match`) and the
   coercion rules, every change recorded in OriginalAttributesSequence;
3. **load** — DICOMweb / C-STORE / S3 / filesystem; the study is `loaded` only when the target lists
   every instance.

Every step writes the ledger and the chain of custody; a re-run resumes, never duplicates.

**One task per study** by default. For bulk backfills set `images_per_task` (e.g. 2000): studies
are packed into tasks of about that many images (at least `$PACSMIG_PARALLEL_TASKS` tasks, at most
`[core] max_map_length`), so Airflow's per-task start-up stops costing wall time and a partition
larger than `max_map_length` studies is migrated in one run. The steps, ledger and retries are the
same; a task's label is its first study's accession number `+N`, and a failed study is named in the
task's log and in the `report` task.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from pacsmig.ops.migrate_tasks import migrate_task, partition_report, select_for_run

# A data-interval timetable: each run covers [start, end) of study dates (Airflow 3's default cron
# timetable has no interval). Monthly by default; "@daily" for very large archives.
PARTITION_SCHEDULE = CronDataIntervalTimetable(os.environ.get("PACSMIG_PARTITION_CRON", "@monthly"), timezone="UTC")


@dag(
    dag_id="pacs_migrate",
    schedule=PARTITION_SCHEDULE,
    # Partitions are study dates: the start date is the oldest StudyDate a backfill may reach.
    start_date=datetime(1980, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=4,
    tags=["pacsmig", "phase3", "migrate"],
    doc_md=__doc__,
    default_args={"owner": "pacsmig", "retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "date_from": Param(None, type=["null", "string"], format="date",
                           description="First StudyDate to migrate (YYYY-MM-DD). Empty: the run's data interval."),
        "date_to": Param(None, type=["null", "string"], format="date",
                         description="Last StudyDate to migrate, inclusive (YYYY-MM-DD)."),
        "patient_id": Param(None, type=["null", "string"],
                            description="Migrate only this patient (local Patient ID or MPI ID)."),
        "undated": Param(False, type="boolean",
                         description="Migrate the studies that have no StudyDate (no date partition covers them)."),
        "all_queued": Param(False, type="boolean",
                            description="Ignore dates: migrate every queued study (the delta pass)."),
        "retry_quarantined": Param(False, type="boolean",
                                   description="Also retry studies in quarantine (e.g. after fixing the source)."),
        "targets": Param(["target_archive"], type="array",
                         description="Connection ids of the destinations (several = edge + cloud)."),
        "rules_path": Param(None, type=["null", "string"],
                            description="Coercion rule file (YAML). Empty: $PACSMIG_RULES or the shipped default."),
        "images_per_task": Param(None, type=["null", "integer"], minimum=0,
                                 description="0: one task per study. N: pack studies into tasks of about N "
                                             "images (bulk backfills). Empty: $PACSMIG_IMAGES_PER_TASK or 0."),
    },
)
def pacs_migrate():
    @task
    def select_studies() -> list[dict]:
        return select_for_run()

    @task(trigger_rule="all_done")
    def report(studies: list[dict]) -> dict:
        return partition_report(studies)

    units = select_studies()
    done = migrate_task(priority_weight=1).expand(unit=units)
    done >> report(units)


pacs_migrate()
