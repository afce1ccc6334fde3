"""The deferrable admission trigger and sensor against the real ledger (trigger run in asyncio)."""

import asyncio
import importlib
import threading

import pytest

from pacsmig.adt.messages import parse_adt
from pacsmig.adt.send import build_adt
from pacsmig.adt.store import store_event
from pacsmig.errors import LedgerError
from pacsmig.ledger import Ledger
from testbed.orthanc import free_port

pytestmark = pytest.mark.integration
MPI = "HOSPITAL_MPI"

triggers = pytest.importorskip("pacsmig.ops.triggers")
sensors = pytest.importorskip("pacsmig.ops.sensors")


def _store(dsn: str, event: str, mpi: str, cid: str) -> int:
    with Ledger(dsn) as ledger:
        return store_event(ledger, parse_adt(build_adt(event, mpi, cid, issuer=MPI), issuer=MPI)).id


class _CountingPoll:
    """Wraps the trigger's ledger poll to let the test wait for N polls instead of a fixed time."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.calls = 0
        self.cond = threading.Condition()

    def __call__(self, *args: object) -> object:
        result = self.real(*args)  # type: ignore[operator]
        with self.cond:
            self.calls += 1
            self.cond.notify_all()
        return result

    def wait_for(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.calls >= n, timeout=60)


def test_serialize_round_trips() -> None:
    trig = triggers.AdmissionTrigger("postgresql://127.0.0.1/x", after_id=7, poll_interval=2.5)
    path, kwargs = trig.serialize()
    module, name = path.rsplit(".", 1)
    clone = getattr(importlib.import_module(module), name)(**kwargs)
    assert clone.serialize() == (path, kwargs)
    assert kwargs["after_id"] == 7 and kwargs["poll_interval"] == 2.5


def test_trigger_fires_for_an_admission_not_for_an_update(ledger_dsn: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    a08 = _store(ledger_dsn, "A08", "M1", "C-A08")
    poll = _CountingPoll(triggers._poll_admissions)
    monkeypatch.setattr(triggers, "_poll_admissions", poll)
    trig = triggers.AdmissionTrigger(ledger_dsn, after_id=0, poll_interval=0.01)

    async def scenario() -> tuple[object, bool]:
        runner = asyncio.ensure_future(trig.run().__anext__())
        await asyncio.to_thread(poll.wait_for, 3)  # three polls saw only the A08
        fired_early = runner.done()
        await asyncio.to_thread(_store, ledger_dsn, "A01", "M1", "C-A01")
        return await asyncio.wait_for(runner, timeout=60), fired_early

    event, fired_early = asyncio.run(scenario())
    assert not fired_early
    assert event.payload["status"] == "success"
    events = event.payload["events"]
    assert [(e["event_type"], e["mpi_patient_id"], e["message_control_id"]) for e in events] == [
        ("A01", "M1", "C-A01")]
    assert events[0]["id"] > a08


def test_trigger_respects_after_id(ledger_dsn: str) -> None:
    first = _store(ledger_dsn, "A01", "M1", "C-1")
    second = _store(ledger_dsn, "A04", "M2", "C-2")

    async def one(after: int) -> object:
        trig = triggers.AdmissionTrigger(ledger_dsn, after_id=after, poll_interval=0.01)
        return await trig.run().__anext__()

    assert [e["id"] for e in asyncio.run(one(0)).payload["events"]] == [first, second]
    assert [e["id"] for e in asyncio.run(one(first)).payload["events"]] == [second]


def test_trigger_reports_a_dead_ledger() -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/x?connect_timeout=2"
    trig = triggers.AdmissionTrigger(dead, poll_interval=0.01, max_errors=2)
    event = asyncio.run(trig.run().__anext__())
    assert event.payload["status"] == "error" and "OperationalError" in event.payload["message"]


def test_sensor_returns_pending_events_or_defers(ledger_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    monkeypatch.setenv("AIRFLOW_CONN_MIGRATION_LEDGER", ledger_dsn)
    sensor = sensors.AdmissionSensor(task_id="wait_for_admission", poke_interval=5, timeout=600)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trig = deferred.value.trigger
    assert isinstance(trig, triggers.AdmissionTrigger)
    assert trig.dsn == ledger_dsn and trig.poll_interval == 5
    assert deferred.value.method_name == "execute_complete"

    event_id = _store(ledger_dsn, "A01", "M1", "C-S")
    expected = [{"id": event_id, "message_control_id": "C-S", "event_type": "A01", "mpi_patient_id": "M1"}]
    assert sensor.execute({}) == expected  # events already waiting: no deferral
    fired = asyncio.run(trig.run().__anext__())
    assert sensor.execute_complete({}, fired.payload) == expected
    with pytest.raises(LedgerError, match="ledger unreachable"):
        sensor.execute_complete({}, {"status": "error", "message": "ledger unreachable for 10 polls"})

    poker = sensors.AdmissionSensor(task_id="poke", deferrable=False, poke_interval=1, timeout=60)
    result = poker.poke({})
    assert result.is_done and result.xcom_value == expected
