"""Phase 4 - pacs_validate: prove every migrated image on the target is the source's, pixel for pixel.

For a study-date range (or a patient, or everything), every migrated instance is read back from
the target archive and its decoded-pixel hash compared with the one taken at extraction (raw
PixelData and frame count too; the header against the staged source minus the recorded
coercions). The source PACS is re-queried so that every instance it holds is accounted for:
verified, quarantined or held with a reason, or reported missing. Mismatched or missing studies
go to ``review``; the others to ``verified``. Outputs under ``$PACSMIG_DATA_DIR/validation/``:
``hash_report.parquet``, ``summary.json``, ``studies.csv|html``, Great Expectations Data Docs, the
radiologist's review worklist, DICOM audit messages / FHIR AuditEvents, and a custody anchor.

Params: ``date_from`` / ``date_to`` (YYYY-MM-DD), ``patient_id``, ``sample_fraction``, ``recheck``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

DEFAULT_ARGS = {"owner": "pacsmig", "retries": 2, "retry_delay": timedelta(minutes=2)}


def _scope(params: dict[str, Any]) -> Any:
    from pacsmig.verify.reconcile import Scope

    return Scope.parse(params.get("date_from"), params.get("date_to"), params.get("patient_id"))


@dag(
    dag_id="pacs_validate",
    schedule=None,
    start_date=datetime.fromisoformat("2025-01-01T00:00:00+00:00"),
    catchup=False,
    max_active_runs=1,
    tags=["pacsmig", "phase-4", "validation"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "date_from": Param(
            None,
            type=["null", "string"],
            format="date",
            description="First study date to validate (YYYY-MM-DD); empty: no lower bound.",
        ),
        "date_to": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Last study date to validate (YYYY-MM-DD); empty: no upper bound.",
        ),
        "patient_id": Param(
            None,
            type=["null", "string"],
            description="Validate only this patient's studies (source or MPI patient ID).",
        ),
        "sample_fraction": Param(
            0.10,
            type="number",
            minimum=0,
            maximum=1,
            description="Share of studies drawn for the chief radiologist's review (0 disables the sample).",
        ),
        "recheck": Param(
            False, type="boolean", description="Read back instances already verified by an earlier run too."
        ),
    },
)
def pacs_validate() -> None:
    @task
    def plan(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Chunks of studies whose instances still need reading back."""
        from pacsmig.ledger import Ledger
        from pacsmig.ops.connections import ledger
        from pacsmig.verify.validate import plan_chunks

        params = params or {}
        with Ledger(ledger()) as db:
            return plan_chunks(db, _scope(params), recheck=bool(params.get("recheck")))

    @task(map_index_template="{{ chunk_label }}", max_active_tis_per_dag=2)
    def verify_chunk(chunk: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, int]:
        """Read back and check one chunk of studies (decoding in worker processes)."""
        from pacsmig.ledger import Ledger
        from pacsmig.ops.connections import get_connection, ledger
        from pacsmig.verify.validate import verify_studies

        get_current_context()["chunk_label"] = chunk["label"]  # type: ignore[index]
        with Ledger(ledger()) as db:
            return verify_studies(
                db,
                get_connection("target_archive"),
                chunk["studies"],
                recheck=bool((params or {}).get("recheck")),
            )

    @task(trigger_rule="none_failed")
    def reconcile_and_report(
        counts: list[dict[str, int]], params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Re-query the source, account for every instance, write the reports, decide the studies."""
        from pacsmig.ledger import Ledger
        from pacsmig.ops.connections import dicom_node, ledger
        from pacsmig.verify.validate import SUMMARY_KEYS, finalize

        with Ledger(ledger()) as db:
            summary = finalize(
                db, _scope(params or {}), dicom_node("legacy_pacs"), target_name="target_archive"
            )
        return {k: summary[k] for k in SUMMARY_KEYS}

    @task
    def review_sample(summary: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Draw the radiologist's sample, record it (pending sign-off) and run its automatic checks."""
        from pacsmig.ledger import Ledger
        from pacsmig.ops.connections import get_connection, ledger
        from pacsmig.verify.sample import build_review_sample

        fraction = float((params or {}).get("sample_fraction") or 0)
        if fraction <= 0:
            return {"studies": 0}
        with Ledger(ledger()) as db:
            result = build_review_sample(db, _scope(params or {}), get_connection("target_archive"), fraction)
        return {k: v for k, v in result.items() if k in ("studies", "recorded", "checks_failed", "by_reason")}

    @task
    def export_audit(summary: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """DICOM audit messages and FHIR AuditEvents for the range's studies."""
        from pacsmig import config
        from pacsmig.custody.export import export_studies
        from pacsmig.ledger import Ledger
        from pacsmig.ops.connections import dicom_node, get_connection, ledger

        with Ledger(ledger()) as db:
            result = export_studies(
                db,
                _scope(params or {}).study_uids(db),
                config.sub_dir("validation", "audit"),
                dicom_node("legacy_pacs"),
                get_connection("target_archive"),
            )
        return {"studies": result["studies"], "messages": result["messages"], "ndjson": result["ndjson"]}

    chunks = plan()
    counts = verify_chunk.expand(chunk=chunks)
    summary = reconcile_and_report(counts)
    review_sample(summary)
    export_audit(summary)


pacs_validate()
