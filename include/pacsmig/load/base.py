"""The one interface every destination implements, and the store flow they share.

:class:`BaseDestination` owns what must be identical for every target: per-instance acks for every
path, batches, the "already there?" check before storing (targets answer success for a different
object with a known SOP UID, so presence is verified by content via :mod:`pacsmig.load.compare`),
bounded retries with exponential backoff, and :class:`StoreFailed` when the target cannot be
reached. A subclass only speaks its protocol: ``_put``, ``_list``, ``_get``, ``close``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import pydicom
from pydicom.errors import InvalidDicomError

from pacsmig.errors import LoadError
from pacsmig.load.compare import compare_instances, sha256

logger = logging.getLogger(__name__)

T = TypeVar("T")

STORED = "stored"
ALREADY_STORED_SAME = "already_stored_same"
CONFLICT = "conflict"
FAILED = "failed"
STATUSES = (STORED, ALREADY_STORED_SAME, CONFLICT, FAILED)

_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


@dataclass(frozen=True)
class StoreAck:
    """The outcome of storing one instance at one destination."""

    sop_instance_uid: str
    study_instance_uid: str
    destination: str
    #: ``stored`` | ``already_stored_same`` | ``conflict`` | ``failed``
    status: str
    #: True for ``stored`` and ``already_stored_same``.
    ok: bool
    #: The target's answer (HTTP status / DICOM status / ETag / sha256), for the custody trail.
    detail: str
    #: The file the ack is for (every path given to ``store`` gets exactly one ack).
    path: str = ""


@runtime_checkable
class Destination(Protocol):
    """A target archive: store Part-10 files, list and read back what it holds."""

    name: str

    def store(self, paths: Sequence[Path]) -> list[StoreAck]:
        """Store the files (batched inside); one ack per path, in the order given."""
        ...

    def instances(self, study_instance_uid: str) -> dict[str, str]:
        """SOP Instance UID -> Series Instance UID of every instance of the study at the target."""
        ...

    def fetch(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> bytes:
        """The instance as the target holds it (Part-10 bytes), for read-back verification."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class StoreFailed(LoadError):
    """The destination could not be reached (after retries) or refused the whole request.

    ``acks`` holds one ack per path given to ``store`` (those stored before the failure are ok),
    so the caller records what did reach the target and retries the rest.
    """

    def __init__(self, destination: str, acks: list[StoreAck], cause: str) -> None:
        self.destination = destination
        self.acks = acks
        self.not_stored = sum(not ack.ok for ack in acks)
        super().__init__(f"destination {destination}: {self.not_stored} of {len(acks)} instances not stored "
                         f"({cause})")


class DestinationUnavailable(LoadError):
    """The destination did not answer after the bounded retries (refused, timed out, 5xx)."""


class Transient(Exception):
    """A failure worth retrying (connection refused, timeout, 5xx, 429); raised by protocol code.

    ``done`` holds the results of the batch's first items when a per-item protocol failed midway.
    """

    done: list[PutResult]


class Fatal(Exception):
    """A whole-request failure that a retry cannot fix (401, 404, rejected association)."""

    done: list[PutResult]


@dataclass
class Item:
    """One file to store, with the identity read from its header."""

    index: int
    path: Path
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    data: bytes = b""
    sha256: str = ""

    def load(self) -> bytes:
        """Read the file's bytes (once) and their sha256."""
        if not self.data:
            self.data = self.path.read_bytes()
            self.sha256 = sha256(self.data)
        return self.data

    def release(self) -> None:
        """Drop the bytes once the batch is done (keeps memory to one batch)."""
        self.data = b""


@dataclass(frozen=True)
class PutResult:
    """A protocol's per-instance answer: ``stored``, ``check`` (target hints it had it) or ``failed``."""

    status: str
    detail: str


def read_item(index: int, path: Path) -> Item:
    """Read the identity of a Part-10 file (raises :class:`LoadError` naming the problem)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise LoadError(f"not a readable DICOM Part-10 file: {type(exc).__name__}") from exc
    tsuid = str(ds.file_meta.get("TransferSyntaxUID", "")) if getattr(ds, "file_meta", None) else ""
    uids = {k: str(ds.get(k, "") or "") for k in _HEADER_TAGS}
    missing = [k for k, v in uids.items() if not v]
    if missing or not tsuid:
        raise LoadError(f"missing {', '.join(missing + ([] if tsuid else ['TransferSyntaxUID']))}")
    return Item(index, path, uids["SOPInstanceUID"], uids["StudyInstanceUID"], uids["SeriesInstanceUID"],
                uids["SOPClassUID"], tsuid)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size``."""
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


class BaseDestination(Destination):
    """The shared store flow; subclasses implement ``_put``, ``_list``, ``_get`` and ``close``.

    Parameters
    ----------
    name
        The destination's name in acks, logs and errors (the connection id).
    batch_size
        Instances per request / association.
    retries
        Attempts after the first for a transient failure.
    backoff
        Seconds before the first retry; doubled each time (capped at 30 s).
    """

    kind = "destination"

    def __init__(self, name: str, batch_size: int = 50, retries: int = 4, backoff: float = 1.0) -> None:
        self.name = name
        self.batch_size = max(1, int(batch_size))
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))

    # --- to implement ----------------------------------------------------------------------
    def _put(self, items: Sequence[Item]) -> list[PutResult]:
        """Send one batch; one result per item. Raise :class:`Transient` / :class:`Fatal`."""
        return self._put_each(items, self._put_one)

    def _put_one(self, item: Item) -> PutResult:
        """Store one item (protocols without batch requests implement this instead of ``_put``)."""
        raise NotImplementedError

    @staticmethod
    def _put_each(items: Sequence[Item], put: Callable[[Item], PutResult]) -> list[PutResult]:
        """Store items one by one; on failure the results so far travel on the exception."""
        results: list[PutResult] = []
        for item in items:
            try:
                results.append(put(item))
            except (Transient, Fatal) as exc:
                exc.done = results
                raise
        return results

    def _list(self, study_instance_uid: str) -> dict[str, str]:
        """SOP UID -> series UID at the target. Raise :class:`Transient` / :class:`Fatal`."""
        raise NotImplementedError

    def _get(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> bytes:
        """The stored bytes. Raise :class:`Transient`, :class:`Fatal`, or ``KeyError`` if absent."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (nothing by default)."""

    # --- shared ----------------------------------------------------------------------------
    def __enter__(self) -> BaseDestination:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """Run ``call`` with bounded retries on :class:`Transient` (exponential backoff)."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return call()
            except Transient as exc:
                if attempt == self.retries:
                    raise DestinationUnavailable(
                        f"destination {self.name} ({self.kind}): {what} failed after "
                        f"{self.retries + 1} attempts: {exc}") from exc
                logger.warning("destination %s: %s failed (%s); retry %d/%d in %.1fs",
                               self.name, what, exc, attempt + 1, self.retries, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
            except Fatal as exc:
                raise DestinationUnavailable(
                    f"destination {self.name} ({self.kind}): {what} refused: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def instances(self, study_instance_uid: str) -> dict[str, str]:
        """SOP Instance UID -> Series Instance UID of every instance of the study at the target."""
        return self._retry(f"listing study {study_instance_uid}", lambda: self._list(study_instance_uid))

    def fetch(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> bytes:
        """The instance as the target holds it (Part-10 bytes); :class:`LoadError` if absent."""
        try:
            return self._retry(f"fetching {sop_instance_uid}",
                               lambda: self._get(study_instance_uid, series_instance_uid, sop_instance_uid))
        except KeyError as exc:
            raise LoadError(f"destination {self.name}: instance {sop_instance_uid} not found") from exc

    def _ack(self, item: Item, status: str, detail: str) -> StoreAck:
        return StoreAck(item.sop_instance_uid, item.study_instance_uid, self.name, status,
                        status in (STORED, ALREADY_STORED_SAME), detail, str(item.path))

    def _verify_existing(self, item: Item, series_uid: str, ok_status: str, why: str) -> StoreAck:
        """Fetch what the target holds under the item's SOP UID and compare it with the file."""
        try:
            theirs = self._retry(
                f"fetching {item.sop_instance_uid} for comparison",
                lambda: self._get(item.study_instance_uid, series_uid, item.sop_instance_uid))
        except KeyError:
            return self._ack(item, FAILED, f"{why}, but the target could not return it")
        verdict = compare_instances(item.load(), theirs)
        if verdict.same:
            return self._ack(item, ok_status, f"{why}; {verdict.detail}")
        logger.error("destination %s: conflict for SOP %s (study %s): %s", self.name,
                     item.sop_instance_uid, item.study_instance_uid, verdict.detail)
        return self._ack(item, CONFLICT, f"{why}; {verdict.detail}")

    def _store_batch(self, batch: Sequence[Item], present: dict[str, dict[str, str]],
                     acks: dict[int, StoreAck]) -> None:
        for study in dict.fromkeys(item.study_instance_uid for item in batch):
            if study not in present:
                present[study] = dict(self.instances(study))
        new: list[Item] = []
        for item in batch:
            series = present[item.study_instance_uid].get(item.sop_instance_uid)
            if series is None:
                new.append(item)
            else:
                acks[item.index] = self._verify_existing(item, series, ALREADY_STORED_SAME,
                                                         "already at target")
        if new:
            for item in new:
                item.load()
            try:
                results = self._retry(f"storing {len(new)} instances", lambda: self._put(new))
            except DestinationUnavailable as exc:
                # Keep what the last attempt did store: an ack must not say failed for it.
                done = getattr(exc.__cause__, "done", [])
                for item, result in zip(new, done, strict=False):
                    if result.status == STORED:
                        acks[item.index] = self._ack(item, STORED, result.detail)
                raise
            for item, result in zip(new, results, strict=True):
                if result.status == STORED:
                    acks[item.index] = self._ack(item, STORED, result.detail)
                    present[item.study_instance_uid][item.sop_instance_uid] = item.series_instance_uid
                elif result.status == "check":
                    ack = self._verify_existing(item, item.series_instance_uid, STORED, result.detail)
                    acks[item.index] = ack
                    if ack.status != FAILED:
                        present[item.study_instance_uid][item.sop_instance_uid] = item.series_instance_uid
                else:
                    acks[item.index] = self._ack(item, FAILED, result.detail)
        for item in batch:
            item.release()

    def store(self, paths: Sequence[Path]) -> list[StoreAck]:
        """Store the files; one ack per path in the order given.

        An instance the target already holds is fetched and compared with the file:
        ``already_stored_same`` or ``conflict``, never trusted from a status code. The same SOP
        UID given twice is stored once and the repeat compared with it.

        Raises
        ------
        StoreFailed
            When the target stays unreachable after the retries or refuses a whole request; its
            ``acks`` still cover every path (``failed`` for those not stored).
        """
        paths = [Path(p) for p in paths]
        acks: dict[int, StoreAck] = {}
        rounds: list[list[Item]] = []
        seen: Counter[str] = Counter()
        for index, path in enumerate(paths):
            try:
                item = read_item(index, path)
            except LoadError as exc:
                acks[index] = StoreAck("", "", self.name, FAILED, False, f"unreadable: {exc}", str(path))
                continue
            occurrence = seen[item.sop_instance_uid]
            seen[item.sop_instance_uid] += 1
            if occurrence == len(rounds):
                rounds.append([])
            rounds[occurrence].append(item)
        present: dict[str, dict[str, str]] = {}
        try:
            for round_items in rounds:
                for batch in chunks(round_items, self.batch_size):
                    self._store_batch(batch, present, acks)
        except DestinationUnavailable as exc:
            for round_items in rounds:
                for item in round_items:
                    if item.index not in acks:
                        acks[item.index] = self._ack(item, FAILED, f"not stored: {exc}")
            ordered = [acks[i] for i in range(len(paths))]
            logger.error("destination %s: %d of %d instances not stored", self.name,
                         sum(not a.ok for a in ordered), len(ordered))
            raise StoreFailed(self.name, ordered, str(exc)) from exc
        ordered = [acks[i] for i in range(len(paths))]
        counts = Counter(ack.status for ack in ordered)
        logger.info("destination %s: %d instances: %s", self.name, len(ordered),
                    ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]))
        return ordered


def extra_int(extra: dict[str, Any], key: str, default: int) -> int:
    """An integer from a connection's extra (accepts strings, as URI-form extras are)."""
    value = extra.get(key)
    return int(value) if value not in (None, "") else default


def extra_float(extra: dict[str, Any], key: str, default: float) -> float:
    """A float from a connection's extra."""
    value = extra.get(key)
    return float(value) if value not in (None, "") else default
