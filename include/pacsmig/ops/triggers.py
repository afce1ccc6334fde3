"""Deferrable triggers: wait in the triggerer, not in a worker slot, for ledger events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


def _poll_admissions(dsn: str, after_id: int, limit: int) -> list[dict[str, Any]]:
    from pacsmig.adt.store import pending_admissions
    from pacsmig.ledger import Ledger

    with Ledger(dsn) as ledger:
        return pending_admissions(ledger, limit=limit, after_id=after_id)


class AdmissionTrigger(BaseTrigger):
    """Fire once unprocessed admissions (ADT A01/A04/A05) with ``id > after_id`` are in the ledger.

    The event payload is ``{"status": "success", "events": [{"id", "message_control_id",
    "event_type", "mpi_patient_id"}, ...]}`` (at most ``limit``). If the ledger stays unreachable
    for ``max_errors`` polls in a row the payload is ``{"status": "error", "message": ...}``;
    shorter outages are ridden out, since a triggerer should survive a database restart.

    Parameters
    ----------
    dsn
        Ledger PostgreSQL DSN (the sensor resolves it from the ``migration_ledger`` connection).
    after_id
        Only events with a larger ``adt_events.id``; unprocessed ones are what counts.
    poll_interval
        Seconds between polls.
    """

    def __init__(self, dsn: str, after_id: int = 0, poll_interval: float = 30.0, limit: int = 100,
                 max_errors: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dsn = dsn
        self.after_id = int(after_id)
        self.poll_interval = float(poll_interval)
        self.limit = int(limit)
        self.max_errors = int(max_errors)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("pacsmig.ops.triggers.AdmissionTrigger",
                {"dsn": self.dsn, "after_id": self.after_id, "poll_interval": self.poll_interval,
                 "limit": self.limit, "max_errors": self.max_errors})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import psycopg2

        errors = 0
        while True:
            try:
                # psycopg2 blocks; the triggerer's event loop serves every other trigger meanwhile.
                events = await asyncio.to_thread(_poll_admissions, self.dsn, self.after_id, self.limit)
            except psycopg2.Error as exc:
                errors += 1
                self.log.warning("ledger poll failed (%d/%d): %s", errors, self.max_errors,
                                 type(exc).__name__)
                if errors >= self.max_errors:
                    yield TriggerEvent({"status": "error",
                                        "message": f"ledger unreachable for {errors} polls: "
                                                   f"{type(exc).__name__}: {exc}".strip()})
                    return
            else:
                errors = 0
                if events:
                    self.log.info("%d admission(s) pending, first event %d", len(events), events[0]["id"])
                    yield TriggerEvent({"status": "success", "events": events})
                    return
            await asyncio.sleep(self.poll_interval)
