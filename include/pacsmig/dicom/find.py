"""C-FIND as a client: one association reused for many queries, with the final status kept."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from pacsmig.config import DicomNode
from pacsmig.dicom.ae import make_ae
from pacsmig.errors import DicomError

logger = logging.getLogger(__name__)

#: Final C-FIND statuses (PS3.4 C.4.1.1.4) the inventory reacts to.
SUCCESS = 0x0000
CANCELLED = 0xFE00  # Orthanc answers this when LimitFindResults truncated the matches
OUT_OF_RESOURCES = 0xA700  # some PACS refuse over-broad queries with it instead of truncating
#: Times one C-FIND is sent when pynetdicom's reactor thread swallowed one of its answers.
FIND_ATTEMPTS = 4


@dataclass
class FindResult:
    """The matches of one C-FIND and how it ended.

    ``status`` is the final DIMSE status, or None when no final status arrived (DIMSE/network
    timeout or abort): the matches are then a prefix of the truth.
    """

    identifiers: list[Dataset] = field(default_factory=list)
    status: int | None = None
    #: Pending answers pynetdicom dropped (see :class:`ResponseGuard`); > 0 means the list is short.
    lost: int = 0

    @property
    def complete(self) -> bool:
        """True only when the peer said it sent every match (success or warning)."""
        return self.status is not None and code_to_category(self.status) in ("Success", "Warning")

    @property
    def timed_out(self) -> bool:
        return self.status is None

    @property
    def truncated_by_peer(self) -> bool:
        """The peer stopped early on purpose (cancel or out of resources)."""
        return self.status in (CANCELLED, OUT_OF_RESOURCES)

    @property
    def failed(self) -> bool:
        """A failure status other than the ones that mean "too many matches"."""
        return (
            self.status is not None
            and not self.complete
            and not self.truncated_by_peer
            and code_to_category(self.status) == "Failure"
        )

    def __len__(self) -> int:
        return len(self.identifiers)


class ResponseGuard:
    """Catches the C-FIND answers pynetdicom's reactor thread takes off the DIMSE queue.

    pynetdicom 3.0.4 pauses an association's reactor before a request with ``checkpoint.clear();
    while not assoc._is_paused: sleep()``. ``_is_paused`` is still True from the reactor's previous
    loop when the reactor has already passed ``checkpoint.wait()`` (typically: it was just woken by
    the end of the previous query on the same association), so the request goes out with the
    reactor running; its ``get_msg(block=False)`` can then take one answer of our query and hand
    it to ``_serve_request``, which logs "Received unexpected C-FIND service message" and drops it.
    ``send_c_find`` then yields every other answer and a final Success: one match short, silently.

    The guard replaces ``_serve_request`` on one association: an answer to the query in flight
    (matched on MessageIDBeingRespondedTo) is put back when it is the final status (nothing can
    follow it and the request's generator is still waiting for it, so order is kept), and counted
    as lost when it is a pending match, so that the caller re-sends the query. Requests from the
    peer still go to pynetdicom.
    """

    _install_lock = threading.Lock()

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        self._lock = threading.Lock()
        self._serve = assoc._serve_request
        self._msg_id = 0
        self._in_flight: int | None = None
        self._lost = 0
        #: Final statuses put back, pending matches lost (their query was re-sent), late answers dropped.
        self.requeued = 0
        self.lost_total = 0
        self.dropped_late = 0
        # an instance attribute shadows the method the reactor loop calls (self._serve_request)
        assoc._serve_request = self._serve_request  # type: ignore[method-assign]

    @classmethod
    def of(cls, assoc: Association) -> ResponseGuard:
        """The guard of ``assoc``, installed on first use (before its first request)."""
        with cls._install_lock:
            owner = getattr(assoc._serve_request, "__self__", None)
            return owner if isinstance(owner, ResponseGuard) else cls(assoc)

    def begin(self) -> int:
        """A fresh Message ID (1..65535) for the next request, now in flight."""
        with self._lock:
            self._msg_id = self._msg_id % 0xFFFF + 1
            self._in_flight, self._lost = self._msg_id, 0
            return self._msg_id

    def end(self) -> int:
        """Close the request in flight; returns how many of its pending answers were dropped."""
        with self._lock:
            lost, self._in_flight, self._lost = self._lost, None, 0
            return lost

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if not (isinstance(msg, C_FIND) and msg.is_valid_response):
            self._serve(msg, context_id)  # a request from the peer (or another service): pynetdicom's job
            return
        msg_id, status = msg.MessageIDBeingRespondedTo, int(msg.Status)
        with self._lock:
            ours = self._in_flight is not None and msg_id == self._in_flight
            if ours and code_to_category(status) != "Pending":
                self._assoc.dimse.msg_queue.put((context_id, msg))
                self.requeued += 1
            elif ours:
                self._lost += 1
                self.lost_total += 1
            else:
                self.dropped_late += 1
        if not ours:
            logger.warning("C-FIND: dropped a late answer to MsgID %s (status 0x%04X)", msg_id, status)
        else:
            logger.debug("C-FIND: recovered answer 0x%04X to MsgID %s from the reactor", status, msg_id)


def send_find(
    assoc: Association, identifier: Dataset, model: Any, guard: ResponseGuard | None = None
) -> FindResult:
    """One C-FIND on ``assoc``: every pending match and the final status, nothing dropped.

    Re-sends the query (up to :data:`FIND_ATTEMPTS` times) when pynetdicom's reactor swallowed one
    of its matches (see :class:`ResponseGuard`). ``status`` is None when no final status arrived
    (DIMSE timeout or abort; pynetdicom has then aborted the association).

    Raises
    ------
    DicomError
        If every attempt lost a match.
    """
    guard = guard or ResponseGuard.of(assoc)
    for attempt in range(1, FIND_ATTEMPTS + 1):
        result = FindResult()
        msg_id = guard.begin()
        try:
            for status, match in assoc.send_c_find(identifier, model, msg_id=msg_id):
                code = getattr(status, "Status", None)
                if code is None:
                    break  # DIMSE timeout or abort: no final status
                if code_to_category(code) == "Pending":
                    if match is not None:
                        result.identifiers.append(match)
                    continue
                result.status = int(code)
        finally:
            result.lost = guard.end()
        if not result.lost or result.status is None or not assoc.is_established:
            return result
        logger.warning(
            "C-FIND MsgID %d: pynetdicom dropped %d of its answers (attempt %d of %d): sending it again",
            msg_id, result.lost, attempt, FIND_ATTEMPTS,
        )
    raise DicomError(
        f"C-FIND: pynetdicom dropped answers in each of {FIND_ATTEMPTS} attempts; the match list is short"
    )


class FindClient:
    """Study Root C-FIND against one node, reconnecting after an abort.

    Use as a context manager; every :meth:`find` reuses the open association, so recursive window
    splitting and per-study series walks cost one TCP handshake, not one per query.

    Examples
    --------
    >>> with FindClient(node) as client:  # doctest: +SKIP
    ...     result = client.find(query)
    """

    def __init__(self, node: DicomNode, model: Any = StudyRootQueryRetrieveInformationModelFind) -> None:
        self.node = node
        self.model = model
        self._ae = make_ae(node.calling_ae_title, node.timeout)
        self._ae.add_requested_context(model)
        self._assoc: Association | None = None
        self.queries = 0

    def _association(self) -> Association:
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        node = self.node
        assoc = self._ae.associate(node.host, node.port, ae_title=node.ae_title)
        if not assoc.is_established:
            raise DicomError(
                f"C-FIND: association to {node.ae_title}@{node.host}:{node.port} "
                f"was rejected or failed (our AE {node.calling_ae_title})"
            )
        self._assoc = assoc
        return assoc

    def find(self, identifier: Dataset) -> FindResult:
        """Send one C-FIND and collect every pending match until the final status."""
        assoc = self._association()
        self.queries += 1
        started = time.monotonic()
        result = send_find(assoc, identifier, self.model)
        if result.status is None:
            # pynetdicom yields an empty status on DIMSE timeout and on abort; the association is gone
            self._assoc = None
            elapsed = time.monotonic() - started
            if elapsed < 0.9 * self.node.timeout:
                # not our timeout: the peer aborted (e.g. Orthanc aborts unknown calling AEs). That
                # says nothing about the size of the answer, so it must not be taken for truncation.
                raise DicomError(
                    f"C-FIND to {self.node.ae_title}@{self.node.host}:{self.node.port} was "
                    f"aborted by the peer after {elapsed:.1f}s ({len(result.identifiers)} "
                    f"matches); is our AE {self.node.calling_ae_title} known to it?"
                )
            logger.warning(
                "C-FIND to %s timed out after %d matches", self.node.ae_title, len(result.identifiers)
            )
            return result
        if result.lost:
            # only when the association went away mid-retry: never hand back a short list as complete
            self.close()
            raise DicomError(f"C-FIND to {self.node.ae_title}: {result.lost} answers lost by pynetdicom")
        if not result.complete:
            # after a cancel/failure some SCPs (Orthanc) still send a late message that pynetdicom
            # would hand to the next query ("unexpected C-FIND service message"): start afresh
            self.close()
        return result

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    def __enter__(self) -> FindClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and self._assoc is not None and self._assoc.is_established:
            self._assoc.abort()
            self._assoc = None
        self.close()


def query_dataset(level: str, keys: dict[str, Any]) -> Dataset:
    """A C-FIND identifier: ``QueryRetrieveLevel`` plus keys (``""`` = return key, else a match).

    The query declares no character set (the default repertoire: every SCP accepts it); answers
    are decoded with the SpecificCharacterSet they carry.

    Examples
    --------
    >>> ds = query_dataset("STUDY", {"StudyInstanceUID": "", "StudyDate": "20150101-20151231"})
    >>> ds.QueryRetrieveLevel, ds.StudyDate
    ('STUDY', '20150101-20151231')
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds
