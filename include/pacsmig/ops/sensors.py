"""Sensors: wait for ledger events (ADT admissions) and hand them to the DAG through XCom."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from pacsmig.errors import LedgerError
from pacsmig.ops.triggers import AdmissionTrigger


class AdmissionSensor(BaseSensorOperator):
    """Wait for ADT admissions (A01/A04/A05) not yet processed; return them as the XCom value.

    Returns ``[{"id", "mpi_patient_id", "event_type", "message_control_id"}, ...]``; pass it to
    :func:`pacsmig.adt.store.handle_admissions`, which prioritises the patient's studies and marks
    each event processed (until then, a re-run of the sensor returns the same events).

    Parameters
    ----------
    ledger_conn_id
        The ``migration_ledger`` connection, read at execute time.
    after_id
        Only events with a larger id (templated).
    limit
        At most this many events per run.
    deferrable
        Wait in the triggerer (default); with False the sensor pokes every ``poke_interval``.
    """

    template_fields: Sequence[str] = ("ledger_conn_id", "after_id")
    ui_color = "#d9ead3"

    def __init__(self, *, ledger_conn_id: str = "migration_ledger", after_id: int | str = 0,
                 limit: int = 100, deferrable: bool = True, poke_interval: timedelta | float = 30.0,
                 **kwargs: Any) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.ledger_conn_id = ledger_conn_id
        self.after_id = after_id
        self.limit = limit
        self.deferrable = deferrable

    def _dsn(self) -> str:
        from pacsmig.ops.connections import ledger

        return ledger(self.ledger_conn_id)

    def _pending(self) -> list[dict[str, Any]]:
        from pacsmig.adt.store import pending_admissions
        from pacsmig.ledger import Ledger

        with Ledger(self._dsn()) as led:
            return pending_admissions(led, limit=self.limit, after_id=int(self.after_id or 0))

    def poke(self, context: Any) -> PokeReturnValue:
        events = self._pending()
        self.log.info("%d admission(s) pending", len(events))
        return PokeReturnValue(is_done=bool(events), xcom_value=events)

    def execute(self, context: Any) -> list[dict[str, Any]]:
        if not self.deferrable:
            return super().execute(context)
        # One look before deferring: no round trip through the triggerer when events are waiting.
        events = self._pending()
        if events:
            return events
        self.defer(
            trigger=AdmissionTrigger(dsn=self._dsn(), after_id=int(self.after_id or 0),
                                     poll_interval=self.poke_interval, limit=self.limit),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if not event or event.get("status") != "success":
            message = (event or {}).get("message", "no event")
            raise LedgerError(f"admission trigger failed: {message}")
        events = list(event.get("events") or [])
        self.log.info("%d admission(s) from the trigger", len(events))
        return events
