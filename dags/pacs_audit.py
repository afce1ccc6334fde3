"""Phase 1, audit: inventory the legacy PACS by C-FIND and assess what a migration involves.

Writes under `$PACSMIG_DATA_DIR/audit/`: `inventory.parquet` (one row per study),
`patient_id_issues.csv`, `private_tags.csv`, `assessment.json`, `assessment.html` (for the CIO)
and the inventory's Great Expectations Data Docs in `data_docs/`.

* **Windows**: the study-date range is cut into year/quarter/month windows, one mapped task each
  (named by its range). A window that reaches the source's C-FIND cap is split in halves down to a
  day, then by modality; studies without a StudyDate are found by their own `undated` task.
* **Checks**: the merged inventory must pass its expectations (unique study UIDs, counts > 0,
  known modalities, dates parseable unless flagged undated) or the run fails.
* **Samples**: a few instances per (modality, manufacturer, model) are retrieved into
  `audit/samples/` for the bytes estimate and the private-tag audit.

Reads the `legacy_pacs` connection at run time. Nothing here writes to the source or the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="pacs_audit",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["pacsmig", "phase1", "audit"],
    doc_md=__doc__,
    default_args={"owner": "pacsmig", "retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "date_from": Param(
            "1990-01-01",
            type="string",
            pattern=r"^\d{4}-\d{2}-\d{2}$",
            description="First study date to inventory (YYYY-MM-DD).",
        ),
        "date_to": Param(
            "",
            type="string",
            pattern=r"^(\d{4}-\d{2}-\d{2})?$",
            description="Last study date (YYYY-MM-DD); empty = the day the run was triggered.",
        ),
        "window": Param(
            "year",
            type="string",
            enum=["year", "quarter", "month", "day"],
            description="C-FIND window size; windows at the source's cap are split further.",
        ),
        "samples_per_group": Param(
            3,
            type="integer",
            minimum=1,
            description="Instances retrieved per (modality, manufacturer, model).",
        ),
        "candidates_per_modality": Param(
            10,
            type="integer",
            minimum=1,
            description="Studies per modality whose series are listed for sampling.",
        ),
        "throughput_images_per_s": Param(
            150.0,
            type="number",
            minimum=0,
            description="Migration rate for the timeline (0 = measured while sampling).",
        ),
        "link_mbit_s": Param(
            1000.0,
            type="number",
            exclusiveMinimum=0,
            description="Network link to the target, Mbit/s (above ~50 TB: seed physically).",
        ),
        "find_cap": Param(
            0,
            type="integer",
            minimum=0,
            description="Results a C-FIND returns at most (0 = the connection's find_cap).",
        ),
    },
)
def pacs_audit() -> None:
    @task
    def plan_windows() -> list[str]:
        from pacsmig.audit.pipeline import plan_windows as plan

        ctx = get_current_context()
        params = ctx["params"]
        date_to = params["date_to"] or ctx["dag_run"].run_after.date()
        return plan(params["date_from"], date_to, params["window"])

    @task(map_index_template="{{ task.op_kwargs['label'] }}")
    def inventory_window(label: str) -> dict[str, Any]:
        from pacsmig.audit.pipeline import audit_dir, run_window, with_cap
        from pacsmig.ops.connections import dicom_node

        node = with_cap(dicom_node("legacy_pacs"), get_current_context()["params"]["find_cap"])
        return run_window(node, label, audit_dir())

    @task
    def merge_inventory(windows: list[dict[str, Any]]) -> dict[str, Any]:
        from pacsmig.audit.pipeline import audit_dir, merge

        return merge(list(windows), audit_dir())

    @task
    def validate_inventory(inventory: dict[str, Any]) -> dict[str, Any]:
        from pacsmig.audit.pipeline import audit_dir, validate

        return validate(audit_dir())

    @task
    def patient_id_health(inventory: dict[str, Any]) -> dict[str, int]:
        from pacsmig.audit.pipeline import audit_dir, id_health

        return id_health(audit_dir())

    @task
    def sample_instances(inventory: dict[str, Any]) -> dict[str, Any]:
        from pacsmig.audit.pipeline import audit_dir, take_samples, with_cap
        from pacsmig.ops.connections import dicom_node

        params = get_current_context()["params"]
        node = with_cap(dicom_node("legacy_pacs"), params["find_cap"])
        return take_samples(node, audit_dir(), params["samples_per_group"], params["candidates_per_modality"])

    @task
    def private_tag_audit(samples: dict[str, Any]) -> dict[str, int]:
        from pacsmig.audit.pipeline import audit_dir, private_tags

        return private_tags(audit_dir())

    @task
    def assessment(samples: dict[str, Any], issues: dict[str, int], tags: dict[str, int]) -> dict[str, Any]:
        from pacsmig.audit.pipeline import assess, audit_dir

        params = get_current_context()["params"]
        return assess(
            audit_dir(),
            throughput_images_per_s=float(params["throughput_images_per_s"]),
            link_mbit_s=float(params["link_mbit_s"]),
            measured_images_per_s=samples.get("images_per_s"),
        )

    @task
    def html_report(summary: dict[str, Any], quality: dict[str, Any]) -> str:
        from pacsmig.audit.pipeline import audit_dir, report

        return report(audit_dir())

    windows = inventory_window.expand(label=plan_windows())
    inventory = merge_inventory(windows)
    quality = validate_inventory(inventory)
    samples = sample_instances(inventory)
    summary = assessment(samples, patient_id_health(inventory), private_tag_audit(samples))
    html_report(summary, quality)


pacs_audit()
