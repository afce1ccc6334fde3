"""ResponseGuard: answers pynetdicom's reactor takes off the DIMSE queue are put back or counted."""

from __future__ import annotations

import queue
from typing import Any

from pynetdicom.dimse_primitives import C_ECHO, C_FIND

from pacsmig.dicom.find import ResponseGuard


class FakeDimse:
    def __init__(self) -> None:
        self.msg_queue: queue.Queue[tuple[int, Any]] = queue.Queue()


class FakeAssociation:
    """The two members the guard uses: ``_serve_request`` (what the reactor calls) and ``dimse``."""

    def __init__(self) -> None:
        self.dimse = FakeDimse()
        self.served: list[Any] = []

    def _serve_request(self, msg: Any, context_id: int) -> None:
        self.served.append(msg)


def find_response(msg_id: int, status: int) -> C_FIND:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.Status = status
    return rsp


def test_a_stolen_pending_match_of_the_query_in_flight_is_counted_lost() -> None:
    assoc = FakeAssociation()
    guard = ResponseGuard.of(assoc)  # type: ignore[arg-type]
    msg_id = guard.begin()
    assoc._serve_request(find_response(msg_id, 0xFF00), 1)  # what the racing reactor does
    assert guard.end() == 1
    assert assoc.dimse.msg_queue.empty() and assoc.served == []


def test_a_stolen_final_status_is_put_back_for_the_waiting_request() -> None:
    assoc = FakeAssociation()
    guard = ResponseGuard.of(assoc)  # type: ignore[arg-type]
    msg_id = guard.begin()
    final = find_response(msg_id, 0x0000)
    assoc._serve_request(final, 3)
    assert assoc.dimse.msg_queue.get_nowait() == (3, final)
    assert guard.end() == 0 and guard.requeued == 1


def test_an_answer_to_another_message_is_dropped_not_counted_against_the_query() -> None:
    assoc = FakeAssociation()
    guard = ResponseGuard.of(assoc)  # type: ignore[arg-type]
    first = guard.begin()
    guard.end()
    second = guard.begin()
    assert second != first
    assoc._serve_request(find_response(first, 0xFF00), 1)  # late answer to the previous query
    assert guard.end() == 0 and guard.dropped_late == 1
    assert assoc.dimse.msg_queue.empty()


def test_requests_from_the_peer_still_reach_pynetdicom_and_the_guard_is_installed_once() -> None:
    assoc = FakeAssociation()
    guard = ResponseGuard.of(assoc)  # type: ignore[arg-type]
    assert ResponseGuard.of(assoc) is guard  # type: ignore[arg-type]
    echo = C_ECHO()
    echo.MessageID = 7
    assoc._serve_request(echo, 1)
    assert assoc.served == [echo]


def test_message_ids_stay_in_the_us_range() -> None:
    guard = ResponseGuard(FakeAssociation())  # type: ignore[arg-type]
    guard._msg_id = 0xFFFF
    assert guard.begin() == 1
