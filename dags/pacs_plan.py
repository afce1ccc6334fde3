"""
### pacs_plan — Phase 2: load the inventory into the ledger and choose the strategy

Reads `$PACSMIG_DATA_DIR/audit/inventory.parquet` (from `pacs_audit`) into the migration ledger
(`migration_ledger`): new studies are *discovered*, studies whose instance count changed since the
last audit are re-queued (this is the **delta sync**). Loads the MPI crosswalk
(`$PACSMIG_MPI_CROSSWALK`), then applies the strategy:

* **big_bang** — queue everything; after the bulk backfill, run `pacs_audit` + `pacs_plan` again and
  migrate the delta (`all_queued`).
* **prefetch** — the enterprise norm: the new archive is live at once; history migrates in the
  background newest first (`--run-backwards`), patients with current or upcoming encounters first,
  and `pacs_prefetch` pulls an admitted patient's priors to the head of the queue.

Writes `$PACSMIG_DATA_DIR/plan/plan.json`: partitions by study date, ETA at the measured (or
configured) throughput, and the exact backfill commands.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, task


@dag(
    dag_id="pacs_plan",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["pacsmig", "phase2", "plan"],
    doc_md=__doc__,
    default_args={"owner": "pacsmig", "retries": 2, "retry_delay": timedelta(seconds=15)},
    params={
        "strategy": Param("prefetch", enum=["big_bang", "prefetch"],
                          description="big_bang: migrate all then delta-sync. prefetch: live cutover, "
                                      "history in the background, admitted patients first."),
        "inventory_path": Param(None, type=["null", "string"],
                                description="Inventory Parquet. Empty: $PACSMIG_DATA_DIR/audit/inventory.parquet."),
        "throughput_images_per_s": Param(150, type="number", minimum=1,
                                         description="Throughput for the ETA until one is measured."),
        "recent_years": Param(2, type="integer", minimum=0,
                              description="prefetch: studies newer than this many years come first."),
        "partition": Param("month", enum=["day", "month", "year"],
                           description="Granularity of the partition table in the plan."),
    },
)
def pacs_plan():
    @task
    def migrate_ledger() -> list[int]:
        from pacsmig.ops.plan_tasks import migrate_ledger

        return migrate_ledger()

    @task
    def load_crosswalk() -> int:
        from pacsmig.ops.plan_tasks import load_crosswalk

        return load_crosswalk()

    @task
    def load_inventory() -> dict:
        from pacsmig.ops.plan_tasks import load_inventory

        return load_inventory()

    @task
    def apply_strategy(loaded: dict) -> int:
        from pacsmig.ops.plan_tasks import apply_strategy

        return apply_strategy()

    @task
    def write_plan(queued: int) -> str:
        from pacsmig.ops.plan_tasks import write_plan

        return write_plan()

    schema = migrate_ledger()
    crosswalk = load_crosswalk()
    loaded = load_inventory()
    schema >> [crosswalk, loaded]
    queued = apply_strategy(loaded)
    crosswalk >> queued
    write_plan(queued)


pacs_plan()
