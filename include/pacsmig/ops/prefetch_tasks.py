"""Airflow adapter for ``pacs_prefetch``: admitted patients' studies to the head of the queue."""

from __future__ import annotations

import logging
from typing import Any

from pacsmig.ledger import Ledger
from pacsmig.ops.connections import ledger

log = logging.getLogger(__name__)

#: Ledger priority of an admitted patient's studies (above every background strategy priority).
ADMISSION_PRIORITY = 100


def prioritise_admitted(events: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Resolve each admitted patient's studies through the crosswalk, raise their priority, and
    return the ones still to migrate as the mapping of the migrate task (one unit per study)."""
    from pacsmig.adt.store import patient_studies, prioritise
    from pacsmig.migrate.pipeline import ACTIVE_STATES
    from pacsmig.migrate.units import pack_units

    if not events:
        return []
    with Ledger(ledger()) as led:
        uids: list[str] = []
        for event in events:
            found = patient_studies(led, event["mpi_patient_id"])
            prioritise(led, found, priority=ADMISSION_PRIORITY,
                       message_control_id=event.get("message_control_id"), adt_event_id=event.get("id"))
            uids += [u for u in found if u not in uids]
        rows = led.query("SELECT study_instance_uid, accession_number, state FROM studies "
                         "WHERE study_instance_uid = ANY(%s)", (uids,))
    todo = {r["study_instance_uid"]: r for r in rows if r["state"] in (*ACTIVE_STATES, "held")}
    log.info("%d admissions: %d studies found, %d to migrate now", len(events), len(uids), len(todo))
    # One task per study: a patient's priors are few, and each starts at once on its own slot.
    return pack_units([{"study_instance_uid": u, "label": todo[u]["accession_number"] or u}
                       for u in uids if u in todo])


def mark_admissions_processed(events: list[dict[str, Any]] | None) -> int:
    from pacsmig.adt.store import mark_processed

    if not events:
        return 0
    with Ledger(ledger()) as led:
        return mark_processed(led, [e["id"] for e in events])
