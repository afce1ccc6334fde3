"""C-FIND as a client: one association reused for many queries, with the final status kept."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.association import Association
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


@dataclass
class FindResult:
    """The matches of one C-FIND and how it ended.

    ``status`` is the final DIMSE status, or None when no final status arrived (DIMSE/network
    timeout or abort): the matches are then a prefix of the truth.
    """

    identifiers: list[Dataset] = field(default_factory=list)
    status: int | None = None

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
        result = FindResult()
        self.queries += 1
        started = time.monotonic()
        for status, match in assoc.send_c_find(identifier, self.model):
            code = getattr(status, "Status", None)
            if code is None:
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
            if code_to_category(code) == "Pending":
                if match is not None:
                    result.identifiers.append(match)
                continue
            result.status = int(code)
        if result.status is None:
            self._assoc = None  # generator ended without any final status: treat like an abort
        elif not result.complete:
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
