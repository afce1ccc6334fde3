"""Airflow adapter: the mapped migration task shared by ``pacs_migrate`` and ``pacs_prefetch``.

One mapped task per work unit (:mod:`pacsmig.migrate.units`): one study per task by default,
several studies packed per task when ``images_per_task`` is set. Each task is a few lines around
:func:`pacsmig.migrate.units.migrate_unit`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import get_current_context, task

#: The pool that throttles associations to the legacy PACS (slots = what the PACS tolerates).
SOURCE_POOL = os.environ.get("PACSMIG_SOURCE_POOL", "legacy_pacs")


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


def migrate_task(priority_weight: int = 1) -> Any:
    """The mapped task migrating one unit; ``.expand(unit=[{label, studies: [{study_instance_uid,
    label}], images}])``. It holds one ``legacy_pacs`` pool slot (one association at a time)."""

    @task(task_id="migrate", pool=SOURCE_POOL, priority_weight=priority_weight,
          map_index_template="{{ unit_label }}", retries=3, retry_delay=timedelta(seconds=20),
          retry_exponential_backoff=True)
    def migrate(unit: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from pacsmig.errors import MigrationError
        from pacsmig.migrate.units import migrate_unit

        context = get_current_context()
        context["unit_label"] = str(unit["label"])  # type: ignore[typeddict-unknown-key]
        ti = context["ti"]
        final = ti.try_number > int(context["task"].retries or 0)
        ctx, token = migration_context(), f"{ti.dag_id}/{ti.run_id}/{ti.map_index}"
        result = migrate_unit(ctx, unit["studies"], token, final_attempt=final,
                              steal=_stealer(ctx, unit.get("partition"), token))
        if result.failed:
            raise MigrationError(f"{len(result.failed)} of {len(unit['studies'])} studies of this task failed "
                                 f"(the retry resumes them): {result.failed}")
        if not result.done and result.skipped:
            raise AirflowSkipException(f"all {len(result.skipped)} studies were taken by other tasks or runs")
        return result.summary()

    return migrate


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


def _stealer(ctx: Any, partition: dict[str, Any] | None, token: str) -> Any:
    """For a packed unit: a function listing the run's studies no task has claimed yet (or that
    this task claimed on an earlier try and must resume)."""
    if not partition:
        return None
    from datetime import date

    from pacsmig.ledger import Ledger
    from pacsmig.migrate.pipeline import select_studies

    part = {k: (date.fromisoformat(v) if k in ("date_from", "date_to") and v else v) for k, v in partition.items()}
    # Held and quarantined studies are their own unit's business (never retried by a bystander).
    part.update(include_held=False, retry_quarantined=False, claimable_by=token)

    def steal() -> list[dict[str, Any]]:
        with Ledger(ctx.ledger_dsn) as led:
            return select_studies(led, **part)

    return steal


def images_per_task() -> int:
    """The run's packing: the ``images_per_task`` Param, else ``$PACSMIG_IMAGES_PER_TASK``, else 0."""
    value = get_current_context()["params"].get("images_per_task")
    if value is None:
        value = os.environ.get("PACSMIG_IMAGES_PER_TASK", "0")
    return int(value or 0)


def select_for_run(max_map_length: int | None = None, lanes: int | None = None) -> list[dict[str, Any]]:
    """The work units this run maps over (:func:`pacsmig.migrate.units.pack_units`)."""
    import logging

    from airflow.configuration import conf

    from pacsmig.ledger import Ledger
    from pacsmig.migrate.pipeline import select_studies
    from pacsmig.migrate.units import pack_units
    from pacsmig.ops.connections import ledger

    max_map_length = max_map_length or conf.getint("core", "max_map_length", fallback=1024)
    lanes = lanes or int(os.environ.get("PACSMIG_PARALLEL_TASKS", "4"))
    part = partition_from_context()
    with Ledger(ledger()) as led:
        studies = select_studies(led, **part)
    per_task = images_per_task()
    units = pack_units([{"study_instance_uid": s["study_instance_uid"], "label": s["label"],
                         "n_instances": s.get("n_instances")} for s in studies],
                       images_per_task=per_task, lanes=lanes, max_units=max_map_length)
    partition = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in part.items()}
    if per_task > 0:  # packed units may take over each other's studies: they need the partition
        units = [{**u, "partition": partition} for u in units]
    mapped = sum(len(u["studies"]) for u in units)
    if mapped < len(studies):
        logging.getLogger(__name__).warning(
            "partition holds %d studies to migrate; this run maps the first %d by priority (one task per "
            "study, [core] max_map_length=%d), the rest stay queued: set images_per_task to pack studies "
            "into tasks, use smaller partitions, or re-run", len(studies), mapped, max_map_length)
    logging.getLogger(__name__).info("%d studies in %d tasks (images_per_task=%d)", mapped, len(units), per_task)
    get_current_context()["ti"].xcom_push(key="partition", value={
        **partition, "studies": len(studies), "mapped": mapped, "tasks": len(units), "images_per_task": per_task})
    return units


def partition_report(units: list[dict[str, Any]]) -> dict[str, Any]:
    """States of the run's studies after the run; raises if any is still unfinished."""
    from pacsmig.ledger import Ledger
    from pacsmig.ops.connections import ledger

    uids = [s["study_instance_uid"] for u in units for s in (u["studies"] if "studies" in u else [u])]
    with Ledger(ledger()) as led:
        rows = led.query("SELECT state, reason, count(*) AS n FROM studies WHERE study_instance_uid = ANY(%s) "
                         "GROUP BY state, reason ORDER BY state", (uids,))
    report = {"studies": len(uids),
              "states": [{"state": r["state"], "reason": r["reason"], "n": r["n"]} for r in rows]}
    unfinished = sum(r["n"] for r in rows if r["state"] not in ("loaded", "verified", "held", "quarantined"))
    if unfinished:
        raise RuntimeError(f"{unfinished} studies of this partition are unfinished: {report}")
    return report
