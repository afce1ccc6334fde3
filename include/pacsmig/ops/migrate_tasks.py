"""Airflow adapter: the per-study task group (extract -> transform -> load) shared by
``pacs_migrate`` and ``pacs_prefetch``. Each task is a few lines around :mod:`pacsmig.migrate.pipeline`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import get_current_context, task, task_group

#: The pool that throttles associations to the legacy PACS (slots = what the PACS tolerates).
SOURCE_POOL = os.environ.get("PACSMIG_SOURCE_POOL", "legacy_pacs")
TARGET_POOL = os.environ.get("PACSMIG_TARGET_POOL", "default_pool")


def migration_context() -> Any:
    """Resolve connections and settings at execute time (never at parse time)."""
    from pacsmig.migrate.pipeline import MigrationContext
    from pacsmig.ops.connections import dicom_node, get_connection, ledger

    params = get_current_context()["params"]
    rules = params.get("rules_path") or os.environ.get("PACSMIG_RULES")
    return MigrationContext(
        ledger_dsn=ledger(), source=dicom_node("legacy_pacs"),
        targets=[get_connection(t) for t in (params.get("targets") or ["target_archive"])],
        rules_path=Path(rules) if rules else None,
        hash_workers=int(os.environ.get("PACSMIG_HASH_WORKERS", "1")))


def _step(study: dict[str, Any]) -> tuple[Any, str, bool]:
    """Label the mapped task, claim the study for this run; returns (ctx, token, final_attempt)."""
    from airflow.sdk.exceptions import AirflowSkipException

    from pacsmig.ledger import Ledger
    from pacsmig.migrate.pipeline import claim

    context = get_current_context()
    context["study_label"] = str(study["label"])  # type: ignore[typeddict-unknown-key]
    ti = context["ti"]
    token = f"{ti.dag_id}/{ti.run_id}/{ti.map_index}"
    ctx = migration_context()
    with Ledger(ctx.ledger_dsn) as ledger:
        if not claim(ledger, study["study_instance_uid"], token):
            raise AirflowSkipException(f"study {study['study_instance_uid']} is claimed by another run")
    final = ti.try_number > int(context["task"].retries or 0)
    return ctx, token, final


def study_task_group(priority_weight: int = 1) -> Any:
    """A mapped-ready task group migrating one study; ``.expand(study=[{study_instance_uid, label}])``."""

    @task(pool=SOURCE_POOL, priority_weight=priority_weight, map_index_template="{{ study_label }}",
          retries=3, retry_delay=timedelta(seconds=20), retry_exponential_backoff=True)
    def extract(study: dict[str, Any]) -> dict[str, Any]:
        from pacsmig.migrate.pipeline import extract_study

        ctx, _, final = _step(study)
        return {**study, **extract_study(ctx, study["study_instance_uid"], final_attempt=final)}

    @task(priority_weight=priority_weight, map_index_template="{{ study_label }}", retries=2,
          retry_delay=timedelta(seconds=10))
    def transform(study: dict[str, Any]) -> dict[str, Any]:
        from pacsmig.migrate.pipeline import transform_study

        ctx, _, _ = _step(study)
        return {"study_instance_uid": study["study_instance_uid"], "label": study["label"],
                **transform_study(ctx, study["study_instance_uid"])}

    @task(pool=TARGET_POOL, priority_weight=priority_weight, map_index_template="{{ study_label }}",
          retries=3, retry_delay=timedelta(seconds=20), retry_exponential_backoff=True)
    def load(study: dict[str, Any]) -> dict[str, Any]:
        from pacsmig.ledger import Ledger
        from pacsmig.migrate.pipeline import load_study, release

        ctx, token, final = _step(study)
        result = load_study(ctx, study["study_instance_uid"], final_attempt=final)
        with Ledger(ctx.ledger_dsn) as ledger:
            release(ledger, study["study_instance_uid"], token)
        return result

    @task_group(group_id="study")
    def migrate_one(study: dict[str, Any]) -> Any:
        return load(transform(extract(study)))

    return migrate_one


def partition_from_context() -> dict[str, Any]:
    """The run's partition: the Params if given, else the data interval over StudyDate."""
    from datetime import date

    context = get_current_context()
    params = context["params"]
    part: dict[str, Any] = {"patient_id": params.get("patient_id") or None,
                            "undated": bool(params.get("undated")),
                            "all_queued": bool(params.get("all_queued")),
                            "retry_quarantined": bool(params.get("retry_quarantined"))}
    if params.get("date_from") or params.get("date_to"):
        part["date_from"] = date.fromisoformat(params["date_from"]) if params.get("date_from") else None
        # date_to is inclusive for users; the ledger query takes an exclusive end.
        part["date_to"] = (date.fromisoformat(params["date_to"]) + timedelta(days=1)
                           if params.get("date_to") else None)
    elif context.get("data_interval_start") and context.get("data_interval_end") and not (
            part["patient_id"] or part["undated"] or part["all_queued"]):
        part["date_from"] = context["data_interval_start"].date()
        part["date_to"] = context["data_interval_end"].date()
    else:
        part["all_queued"] = part["all_queued"] or not part["patient_id"] and not part["undated"]
    return part


def select_for_run(max_map_length: int = 1024) -> list[dict[str, Any]]:
    """The studies this run maps over (at most ``max_map_length``: the rest stay queued, reported)."""
    import logging

    from pacsmig.ledger import Ledger
    from pacsmig.migrate.pipeline import select_studies
    from pacsmig.ops.connections import ledger

    part = partition_from_context()
    with Ledger(ledger()) as led:
        studies = select_studies(led, **part)
    if len(studies) > max_map_length:
        logging.getLogger(__name__).warning(
            "partition holds %d studies to migrate; this run maps the first %d by priority, the rest stay "
            "queued: use smaller partitions or re-run", len(studies), max_map_length)
    get_current_context()["ti"].xcom_push(key="partition", value={
        k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in part.items()})
    return [{"study_instance_uid": s["study_instance_uid"], "label": s["label"]}
            for s in studies[:max_map_length]]


def partition_report(studies: list[dict[str, Any]]) -> dict[str, Any]:
    """States of the run's studies after the run; raises if any is still unfinished."""
    from pacsmig.ledger import Ledger
    from pacsmig.ops.connections import ledger

    uids = [s["study_instance_uid"] for s in studies]
    with Ledger(ledger()) as led:
        rows = led.query("SELECT state, reason, count(*) AS n FROM studies WHERE study_instance_uid = ANY(%s) "
                         "GROUP BY state, reason ORDER BY state", (uids,))
    report = {"studies": len(uids),
              "states": [{"state": r["state"], "reason": r["reason"], "n": r["n"]} for r in rows]}
    unfinished = sum(r["n"] for r in rows if r["state"] not in ("loaded", "verified", "held", "quarantined"))
    if unfinished:
        raise RuntimeError(f"{unfinished} studies of this partition are unfinished: {report}")
    return report
