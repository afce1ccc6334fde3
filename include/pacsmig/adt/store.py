"""ADT events in the ledger: durable storage, the pending-admission queue, and prefetch priority."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2.extensions

from pacsmig.adt.messages import ADMISSION_EVENTS, AdtError, AdtEvent, ErrorCode, fingerprint
from pacsmig.config import mpi_issuer
from pacsmig.ledger import Ledger, StudyState

logger = logging.getLogger(__name__)

#: Priority given to the priors of an admitted patient (background migration runs at 0).
PREFETCH_PRIORITY = 100
PRIORITISED_EVENT = "prefetch_prioritised"


@dataclass(frozen=True)
class StoredEvent:
    """Where an ADT event landed: its ``adt_events.id`` and whether it was already there."""

    id: int
    duplicate: bool


def store_event(ledger: Ledger, event: AdtEvent) -> StoredEvent:
    """Commit ``event`` to ``adt_events``; a resend of the same MSH-10 is a no-op.

    The row is committed when this returns, so the caller may acknowledge with AA.

    Raises
    ------
    AdtError
        (AE, 205) if MSH-10 is already stored with different content: one of the two would be lost.
    psycopg2.Error
        If the ledger is unavailable (the caller must not acknowledge AA).
    """
    with ledger.transaction() as cur:
        cur.execute(
            "INSERT INTO adt_events (message_control_id, event_type, mpi_patient_id, raw_message, "
            "prior_patient_id, details) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (message_control_id) DO NOTHING RETURNING id",
            (event.control_id, event.event_type, event.mpi_patient_id, event.raw_message,
             event.prior_patient_id, json.dumps(event.details())))
        row = cur.fetchone()
        if row is not None:
            return StoredEvent(id=int(row["id"]), duplicate=False)
        cur.execute("SELECT id, raw_message FROM adt_events WHERE message_control_id = %s",
                    (event.control_id,))
        existing = cur.fetchone()
    if existing is None:  # pragma: no cover - a conflict row cannot vanish (rows are never deleted)
        raise AdtError("control ID conflict could not be resolved", code=ErrorCode.APPLICATION_INTERNAL_ERROR,
                       header=event.header)
    if fingerprint(existing["raw_message"]) != fingerprint(event.raw_message):
        raise AdtError("MSH-10 was already used for a different message; send it with a new control ID",
                       code=ErrorCode.DUPLICATE_KEY_IDENTIFIER, location="MSH^1^10", header=event.header)
    return StoredEvent(id=int(existing["id"]), duplicate=True)


def pending_admissions(ledger: Ledger, limit: int = 100, after_id: int = 0,
                       event_types: Sequence[str] = ADMISSION_EVENTS) -> list[dict[str, Any]]:
    """Unprocessed admission events (A01/A04/A05), oldest first.

    ``after_id`` only narrows the scan: ``processed_at IS NULL`` is what decides, because ids from
    concurrent inserts can commit out of order and a high-water mark alone would skip one.

    Returns
    -------
    list of dict
        ``{"id", "message_control_id", "event_type", "mpi_patient_id"}`` per event (JSON-safe).
    """
    rows = ledger.query(
        "SELECT id, message_control_id, event_type, mpi_patient_id FROM adt_events "
        "WHERE processed_at IS NULL AND id > %s AND event_type = ANY(%s) ORDER BY id LIMIT %s",
        (int(after_id), list(event_types), int(limit)))
    return [{"id": int(r["id"]), "message_control_id": r["message_control_id"],
             "event_type": r["event_type"], "mpi_patient_id": r["mpi_patient_id"]} for r in rows]


def mark_processed(ledger: Ledger, ids: Iterable[int]) -> int:
    """Mark events processed (idempotent); returns how many were newly marked."""
    id_list = [int(i) for i in ids]
    if not id_list:
        return 0
    with ledger.transaction() as cur:
        return _mark_processed(cur, id_list)


def _mark_processed(cur: psycopg2.extensions.cursor, ids: list[int]) -> int:
    cur.execute("UPDATE adt_events SET processed_at = now() WHERE id = ANY(%s) AND processed_at IS NULL",
                (ids,))
    return int(cur.rowcount)


def patient_studies(ledger: Ledger, mpi_patient_id: str) -> list[str]:
    """The study UIDs of one MPI patient, newest first.

    A study belongs to the patient if its ``mpi_patient_id`` is set to it, if the crosswalk maps its
    (issuer, patient ID) to it (an empty crosswalk issuer matches a study without issuer), or if the
    source already files it under the MPI ID with the MPI issuer.
    """
    rows = ledger.query(
        "SELECT study_instance_uid FROM studies WHERE study_instance_uid IN ("
        " SELECT study_instance_uid FROM studies WHERE mpi_patient_id = %(mpi)s"
        " UNION SELECT s.study_instance_uid FROM mpi_crosswalk c JOIN studies s"
        "  ON s.patient_id = c.patient_id AND COALESCE(s.issuer_of_patient_id, '') = c.issuer_of_patient_id"
        "  WHERE c.mpi_patient_id = %(mpi)s"
        " UNION SELECT study_instance_uid FROM studies"
        "  WHERE patient_id = %(mpi)s AND issuer_of_patient_id = %(issuer)s"
        ") ORDER BY study_date DESC NULLS LAST, study_instance_uid",
        {"mpi": mpi_patient_id, "issuer": mpi_issuer()})
    return [r["study_instance_uid"] for r in rows]


def prioritise(ledger: Ledger, study_uids: Iterable[str], priority: int = PREFETCH_PRIORITY, *,
               message_control_id: str | None = None, adt_event_id: int | None = None) -> list[str]:
    """Raise ``studies.priority`` to ``priority`` with one custody entry per study raised.

    Never lowers a priority, skips verified studies (nothing left to fetch), and a re-run changes
    nothing; returns the UIDs actually raised.
    """
    uids = list(dict.fromkeys(study_uids))
    if not uids:
        return []
    with ledger.transaction() as cur:
        return _prioritise(ledger, cur, uids, priority, message_control_id, adt_event_id)


def _prioritise(ledger: Ledger, cur: psycopg2.extensions.cursor, uids: list[str], priority: int,
                message_control_id: str | None, adt_event_id: int | None) -> list[str]:
    cur.execute(
        "SELECT study_instance_uid, priority FROM studies WHERE study_instance_uid = ANY(%s) "
        "AND priority < %s AND state <> %s ORDER BY study_instance_uid FOR UPDATE",
        (uids, priority, StudyState.VERIFIED.value))
    rows = cur.fetchall()
    raised: list[str] = []
    for row in rows:
        uid = row["study_instance_uid"]
        cur.execute("UPDATE studies SET priority = %s, updated_at = now() WHERE study_instance_uid = %s",
                    (priority, uid))
        details: dict[str, Any] = {"from": row["priority"], "to": priority}
        if message_control_id is not None:
            details["message_control_id"] = message_control_id
        if adt_event_id is not None:
            details["adt_event_id"] = adt_event_id
        ledger.append_custody(cur, uid, PRIORITISED_EVENT, details)
        raised.append(uid)
    return raised


def handle_admissions(ledger: Ledger, events: Iterable[dict[str, Any]],
                      priority: int = PREFETCH_PRIORITY) -> list[dict[str, Any]]:
    """Prioritise each admitted patient's studies and mark the event processed, one transaction each.

    ``events`` are what :func:`pending_admissions` (or the admission sensor) returned. An event
    whose patient has no studies is still marked processed: the admission stays in the ledger.

    Returns
    -------
    list of dict
        ``{"id", "message_control_id", "studies", "prioritised"}`` per event (counts, no IDs).
    """
    results: list[dict[str, Any]] = []
    for event in events:
        event_id = int(event["id"])
        control_id = event.get("message_control_id")
        mpi = event.get("mpi_patient_id")
        uids = patient_studies(ledger, mpi) if mpi else []
        with ledger.transaction() as cur:
            raised = _prioritise(ledger, cur, uids, priority, control_id, event_id) if uids else []
            _mark_processed(cur, [event_id])
        logger.info("ADT event %s (%s, control %s): %d studies, %d prioritised", event_id,
                    event.get("event_type"), control_id, len(uids), len(raised))
        results.append({"id": event_id, "message_control_id": control_id, "studies": len(uids),
                        "prioritised": len(raised)})
    return results
