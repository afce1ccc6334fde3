"""Extract: pull a study from the source by C-MOVE or C-GET into staging, count it, re-pull what is missing.

Every instance counted as received has been fsynced and re-read with the hash its receiver computed
from the network bytes (:meth:`~pacsmig.dicom.staging.StagingStore.make_durable`): receivers no
longer fsync per C-STORE, so this is where the durability the ledger relies on is established.

A final C-MOVE status is never trusted on its own: after every request we count what is in
``staging_root/<study_uid>/`` and compare it with what the source says it holds (C-FIND at SERIES
then IMAGE level, or the caller's ``expected``). Whatever is missing is re-pulled at SERIES level,
then IMAGE level (SOP Instance UID lists), with backoff after failures and a bounded number of
rounds. The result says what is still missing; the pipeline decides about quarantine.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.presentation import AllStoragePresentationContexts, build_context, build_role
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from pacsmig.config import DicomNode
from pacsmig.dicom.ae import make_ae
from pacsmig.dicom.reactor import fix_reactor_race
from pacsmig.dicom.scp import StorageSCP, handle_store
from pacsmig.dicom.staging import Conflict, Malformed, ReceivedInstance, StagingStore
from pacsmig.errors import DicomError

logger = logging.getLogger(__name__)

__all__ = ["Conflict", "Malformed", "ReceivedInstance", "RetrieveResult", "list_study_instances",
           "retrieve", "study_sop_classes"]

#: SOP Instance UIDs per IMAGE-level request (keeps identifiers well under any PDU limit).
IMAGE_BATCH = 200

#: Syntaxes proposed, one presentation context each, per SOP class on a C-GET association, so the
#: source can send every object in the syntax it is stored in (no transcoding, no decompression).
GET_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1, JPEGLossless, JPEGBaseline8Bit,
    JPEGExtended12Bit, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
    DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
)
_MAX_CONTEXTS = 128

# Status categories (pynetdicom's names).
_PENDING, _SUCCESS, _WARNING, _FAILURE, _CANCEL = "Pending", "Success", "Warning", "Failure", "Cancel"


@dataclass
class RetrieveResult:
    """What one :func:`retrieve` call achieved, counted from staging (not from statuses)."""

    study_instance_uid: str
    #: SOP UID -> instance: everything now in staging for the study.
    received: dict[str, ReceivedInstance]
    #: Final C-MOVE/C-GET status of the last request (None if it was aborted or never sent).
    status: int | None
    #: Sub-operation counters, summed over every request.
    completed: int = 0
    failed: int = 0
    warning: int = 0
    #: Remaining sub-operations reported by the last request (non-zero after an abort or A702).
    remaining: int = 0
    #: From FailedSOPInstanceUIDList, over every request (deduplicated, in order).
    failed_sop_uids: list[str] = field(default_factory=list)
    #: Same SOP UID, different bytes: every version kept in quarantine.
    conflicts: list[Conflict] = field(default_factory=list)
    #: Could not be parsed: kept in quarantine with the reason.
    malformed: list[Malformed] = field(default_factory=list)
    #: One entry per request: level, keys (UIDs only), status, counters, error.
    attempts: list[dict[str, Any]] = field(default_factory=list)
    #: Series UID -> SOP UIDs the source (or the caller) says exist in the requested scope.
    expected: dict[str, set[str]] = field(default_factory=dict)
    #: Series UID -> SOP UIDs expected but neither staged nor quarantined as malformed.
    missing: dict[str, set[str]] = field(default_factory=dict)
    #: Staged SOP UIDs the expectation did not list (kept; the inventory was stale or capped).
    unexpected: list[str] = field(default_factory=list)
    #: False when the source could not be asked what it holds (counts rely on statuses then).
    expected_known: bool = True

    @property
    def n_missing(self) -> int:
        """How many expected instances are still missing."""
        return sum(len(v) for v in self.missing.values())

    @property
    def complete(self) -> bool:
        """Everything expected is accounted for (staged, or quarantined as malformed)."""
        if self.missing:
            return False
        if self.expected_known:
            return True
        accounted = set(self.received) | {m.sop_instance_uid for m in self.malformed}
        return self.status == 0 and not (set(self.failed_sop_uids) - accounted)

    def summary(self) -> dict[str, Any]:
        """Counts only (no patient data): for logs, XCom and custody details."""
        return {
            "study_instance_uid": self.study_instance_uid, "received": len(self.received),
            "expected": sum(len(v) for v in self.expected.values()), "missing": self.n_missing,
            "conflicts": len(self.conflicts), "malformed": len(self.malformed),
            "unexpected": len(self.unexpected), "status": self.status, "completed": self.completed,
            "failed": self.failed, "warning": self.warning, "remaining": self.remaining,
            "requests": len(self.attempts),
        }


# --- C-FIND below a study ---------------------------------------------------------------------
@contextmanager
def _find_association(node: DicomNode) -> Iterator[Association]:
    fix_reactor_race()
    ae = make_ae(node.calling_ae_title, node.timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        raise DicomError(f"C-FIND association to {node.ae_title}@{node.host}:{node.port} refused or failed")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _find(assoc: Association, query: Dataset) -> list[Dataset]:
    # send_find re-sends a query whose answer pynetdicom's reactor swallowed on this reused association
    from pacsmig.dicom.find import send_find

    result = send_find(assoc, query, StudyRootQueryRetrieveInformationModelFind)
    final = result.status
    if final is None:
        raise DicomError(f"C-FIND at {query.QueryRetrieveLevel} level: no response (timeout or abort)")
    if code_to_category(final) not in (_SUCCESS, _WARNING):
        raise DicomError(f"C-FIND at {query.QueryRetrieveLevel} level failed with status "
                         f"0x{(final or 0):04X}")
    return result.identifiers


def _walk_study(node: DicomNode, study_instance_uid: str,
                series_filter: str | None = None, *, sop_classes: bool = True) -> dict[str, dict[str, str]]:
    """Series UID -> {SOP UID: SOP Class UID}, walking SERIES then IMAGE level.

    ``sop_classes=False`` leaves SOPClassUID out of the IMAGE query (the values are then ""):
    sources that index only some instance attributes (Orthanc 1.10) read every file to answer it.
    """
    out: dict[str, dict[str, str]] = {}
    with _find_association(node) as assoc:
        if series_filter:
            series_uids = [series_filter]
        else:
            q = Dataset()
            q.QueryRetrieveLevel = "SERIES"
            q.StudyInstanceUID = study_instance_uid
            q.SeriesInstanceUID = ""
            series_uids = sorted({str(r.SeriesInstanceUID) for r in _find(assoc, q)
                                  if r.get("SeriesInstanceUID")})
        for series_uid in series_uids:
            q = Dataset()
            q.QueryRetrieveLevel = "IMAGE"
            q.StudyInstanceUID = study_instance_uid
            q.SeriesInstanceUID = series_uid
            q.SOPInstanceUID = ""
            if sop_classes:
                q.SOPClassUID = ""
            rows = _find(assoc, q)
            if node.find_cap and len(rows) >= node.find_cap:
                logger.warning("series %s: C-FIND returned %d rows (the source's cap): the list may be "
                               "truncated; the move counters and staging count will tell", series_uid,
                               len(rows))
            out[series_uid] = {str(r.SOPInstanceUID): str(r.get("SOPClassUID", "") or "")
                               for r in rows if r.get("SOPInstanceUID")}
    return out


def list_study_instances(node: DicomNode, study_instance_uid: str) -> dict[str, set[str]]:
    """What the source says it holds below a study: series UID -> SOP Instance UIDs.

    SERIES then IMAGE level C-FIND (Study Root), so it works with sources that answer IMAGE-level
    queries only below a SeriesInstanceUID and report no NumberOf*Related* counts.

    Raises
    ------
    DicomError
        The association failed or a C-FIND answered a failure status.
    """
    walked = _walk_study(node, study_instance_uid, sop_classes=False)
    return {series: set(sops) for series, sops in walked.items()}


def study_sop_classes(node: DicomNode, study_instance_uid: str) -> set[str]:
    """The SOP classes of a study's instances (to propose C-GET storage contexts)."""
    walked = _walk_study(node, study_instance_uid)
    return {cls for sops in walked.values() for cls in sops.values() if cls}


# --- one C-MOVE / C-GET request ---------------------------------------------------------------
def _identifier(level: str, study: str, series: str | None = None, sops: list[str] | None = None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study
    if level in ("SERIES", "IMAGE") and series:
        ds.SeriesInstanceUID = series
    if level == "IMAGE":
        ds.SOPInstanceUID = sops if sops and len(sops) > 1 else (sops[0] if sops else "")
    return ds


def _uid_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v for v in value.split("\\") if v]
    return [str(v) for v in value if v]


def _get_contexts(sop_classes: set[str]) -> tuple[list[Any], list[Any]]:
    """(requested contexts, SCP role items) for a C-GET association."""
    classes = sorted(sop_classes) or [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    room = _MAX_CONTEXTS - 1
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    if len(classes) * len(GET_TRANSFER_SYNTAXES) <= room:
        for uid in classes:
            contexts.extend(build_context(uid, [ts]) for ts in GET_TRANSFER_SYNTAXES)
    else:
        if len(classes) > room:
            logger.warning("C-GET: %d SOP classes, only %d fit one association", len(classes), room)
            classes = classes[:room]
        contexts.extend(build_context(uid, list(GET_TRANSFER_SYNTAXES)) for uid in classes)
    return contexts, [build_role(uid, scp_role=True) for uid in classes]


def _request(node: DicomNode, store: StagingStore, mode: str, identifier: Dataset,
             sop_classes: set[str]) -> dict[str, Any]:
    """Send one C-MOVE or C-GET, run it to its final response, and describe what the source said."""
    msg_id = random.randint(1, 65535)  # ties each C-STORE to its move (MoveOriginatorMessageID)
    attempt: dict[str, Any] = {
        "mode": mode, "level": str(identifier.QueryRetrieveLevel), "message_id": msg_id,
        "keys": {"study": str(identifier.StudyInstanceUID),
                 "series": str(identifier.get("SeriesInstanceUID", "") or "") or None,
                 "n_sop_uids": len(_uid_list(identifier.get("SOPInstanceUID")))},
        "status": None, "category": None, "completed": 0, "failed": 0, "warning": 0, "remaining": 0,
        "failed_sop_uids": [], "error": None,
    }
    fix_reactor_race()
    ae = make_ae(node.calling_ae_title, node.timeout)
    kwargs: dict[str, Any] = {}
    if mode == "get":
        contexts, roles = _get_contexts(sop_classes)
        ae.requested_contexts = contexts
        kwargs = {"ext_neg": roles, "evt_handlers": [
            (evt.EVT_C_STORE, handle_store, [store, str(identifier.StudyInstanceUID)])]}
        model = StudyRootQueryRetrieveInformationModelGet
    else:
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        model = StudyRootQueryRetrieveInformationModelMove
    started = time.monotonic()
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, **kwargs)
    if not assoc.is_established:
        attempt["error"] = "association rejected, aborted or timed out"
        return attempt
    try:
        if mode == "get":
            responses = assoc.send_c_get(identifier, model, msg_id=msg_id)
        else:
            responses = assoc.send_c_move(identifier, node.move_destination, model, msg_id=msg_id)
        for status, ident in responses:
            if not status or "Status" not in status:
                attempt["error"] = "no final response (association aborted or DIMSE timeout)"
                break
            code = int(status.Status)
            category = code_to_category(code)
            for key, name in (("completed", "NumberOfCompletedSuboperations"),
                              ("failed", "NumberOfFailedSuboperations"),
                              ("warning", "NumberOfWarningSuboperations"),
                              ("remaining", "NumberOfRemainingSuboperations")):
                if name in status and status[name].value is not None:
                    attempt[key] = int(status[name].value)
            if category == _PENDING:
                continue
            attempt["status"], attempt["category"] = code, category
            if category == _SUCCESS:
                # Some sources (Orthanc) echo a stale Remaining count in the final success response.
                attempt["remaining"] = 0
            if ident is not None and "FailedSOPInstanceUIDList" in ident:
                attempt["failed_sop_uids"] = _uid_list(ident.FailedSOPInstanceUIDList)
            if category in (_FAILURE, _CANCEL):
                attempt["error"] = f"source answered 0x{code:04X} ({category})"
            break
    except (RuntimeError, ValueError, OSError) as exc:
        logger.exception("%s at %s level failed", mode, attempt["level"])
        attempt["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if assoc.is_established:
            assoc.release()
    attempt["seconds"] = round(time.monotonic() - started, 3)
    return attempt


# --- retrieve ---------------------------------------------------------------------------------
def _scope(expected: dict[str, set[str]], series: str | None, sops: list[str] | None) -> dict[str, set[str]]:
    if series is not None:
        expected = {series: set(expected.get(series, set()))}
    if sops is not None:
        wanted = set(sops)
        expected = {s: v & wanted for s, v in expected.items() if v & wanted}
    return expected


def retrieve(node: DicomNode, staging_root: Path, *, study_instance_uid: str,
             series_instance_uid: str | None = None, sop_instance_uids: list[str] | None = None,
             expected: dict[str, set[str]] | None = None, quarantine_root: Path | None = None,
             max_rounds: int = 4, backoff_s: float = 1.0) -> RetrieveResult:
    """Pull a study (or one series, or a list of instances) into ``staging_root/<study_uid>/``.

    Parameters
    ----------
    node
        The source; ``node.retrieve_mode`` is ``"move"`` (C-MOVE to ``node.move_destination``,
        received by a :class:`~pacsmig.dicom.scp.StorageSCP` this call runs on
        ``node.storage_port``) or ``"get"`` (C-GET, stores on the same association).
    staging_root
        Shared staging folder; several processes may retrieve into it at once.
    study_instance_uid, series_instance_uid, sop_instance_uids
        The scope. The first request is at STUDY level (or SERIES / IMAGE when narrowed).
    expected
        Series UID -> SOP UIDs, if known (from the inventory); otherwise the source is asked.
    quarantine_root
        Where conflicts and malformed objects go (default ``staging_root.parent / "quarantine"``).
    max_rounds
        Requests rounds at most: the scope, then SERIES level for the missing, then IMAGE level.
    backoff_s
        Base of the exponential wait before a round that follows a failure.

    Returns
    -------
    RetrieveResult
        Counted from staging: ``missing`` lists what is still not there.

    Examples
    --------
    >>> result = retrieve(node, Path("data/staging"), study_instance_uid="1.2.3")  # doctest: +SKIP
    >>> result.complete, len(result.received)  # doctest: +SKIP
    (True, 12)
    """
    staging_root = Path(staging_root)
    quarantine_root = Path(quarantine_root) if quarantine_root else staging_root.parent / "quarantine"
    store = StagingStore(staging_root, quarantine_root)
    mode = (node.retrieve_mode or "move").lower()
    if mode not in ("move", "get"):
        raise DicomError(f"retrieve_mode must be 'move' or 'get', got {node.retrieve_mode!r}")
    study = study_instance_uid
    result = RetrieveResult(study_instance_uid=study, received={}, status=None)

    # What should arrive. Asking the source is part of extract: if it cannot answer, we still move
    # and fall back on the counters and FailedSOPInstanceUIDList.
    sop_classes: set[str] = set()
    if expected is None or (mode == "get"):
        try:
            walked = _walk_study(node, study, series_instance_uid)
            sop_classes = {c for v in walked.values() for c in v.values() if c}
            if expected is None:
                expected = {s: set(v) for s, v in walked.items()}
        except DicomError as exc:
            logger.warning("study %s: cannot list instances at the source (%s)", study, exc)
            result.expected_known = expected is not None
            expected = expected or {}
    result.expected = _scope({s: set(v) for s, v in expected.items()}, series_instance_uid, sop_instance_uids)
    sop_to_series = {sop: s for s, sops in result.expected.items() for sop in sops}
    sop_filter = set(sop_to_series) | set(sop_instance_uids or [])

    durable: set[str] = set()

    def account() -> None:
        contents = store.scan(study, sop_filter | set(result.failed_sop_uids))
        # Receivers do not fsync per instance: make what arrived durable now, before anything is
        # counted (and so before the ledger can record it); unconfirmed bytes count as missing.
        fresh = [inst for sop, inst in contents.received.items() if sop not in durable]
        for inst in store.make_durable(fresh):
            del contents.received[inst.sop_instance_uid]
        durable.update(contents.received)
        result.received, result.conflicts, result.malformed = (contents.received, contents.conflicts,
                                                               contents.malformed)
        accounted = set(result.received) | {m.sop_instance_uid for m in result.malformed}
        result.missing = {s: sops - accounted for s, sops in result.expected.items() if sops - accounted}
        result.unexpected = sorted(set(result.received) - set(sop_to_series)) if result.expected else []

    def run(identifier: Dataset) -> dict[str, Any]:
        attempt = _request(node, store, mode, identifier, sop_classes)
        result.attempts.append(attempt)
        result.status = attempt["status"]
        result.remaining = attempt["remaining"]
        result.completed += attempt["completed"]
        result.failed += attempt["failed"]
        result.warning += attempt["warning"]
        for uid in attempt["failed_sop_uids"]:
            if uid not in result.failed_sop_uids:
                result.failed_sop_uids.append(uid)
        logger.info("study %s: %s %s-level (msg %d) -> status %s, completed %d failed %d warning %d "
                    "remaining %d%s", study, mode.upper(), attempt["level"], attempt["message_id"],
                    f"0x{attempt['status']:04X}" if attempt["status"] is not None else "none",
                    attempt["completed"], attempt["failed"], attempt["warning"], attempt["remaining"],
                    f" ({attempt['error']})" if attempt["error"] else "")
        return attempt

    def troubled(attempts: list[dict[str, Any]]) -> bool:
        return any(a["error"] or a["failed"] or a["remaining"] or a["category"] != _SUCCESS
                   for a in attempts)

    scp = StorageSCP(node, staging_root, quarantine_root) if mode == "move" else None
    if scp is not None:
        scp.start()
    try:
        # Round 0: the scope as asked.
        if sop_instance_uids:
            by_series: dict[str | None, list[str]] = {}
            for uid in sop_instance_uids:
                by_series.setdefault(series_instance_uid or sop_to_series.get(uid), []).append(uid)
            first = [_identifier("IMAGE", study, s, chunk[i:i + IMAGE_BATCH])
                     for s, chunk in by_series.items() for i in range(0, len(chunk), IMAGE_BATCH)]
        elif series_instance_uid:
            first = [_identifier("SERIES", study, series_instance_uid)]
        else:
            first = [_identifier("STUDY", study)]
        last = [run(ident) for ident in first]
        account()

        for round_no in range(1, max(1, max_rounds)):
            unaccounted_failures = [u for u in result.failed_sop_uids
                                    if u not in result.received
                                    and u not in {m.sop_instance_uid for m in result.malformed}]
            if not result.missing and not unaccounted_failures and (result.expected_known
                                                                    or not troubled(last)):
                break
            if troubled(last):
                time.sleep(backoff_s * (2 ** (round_no - 1)))
            requests: list[Dataset] = []
            if not result.missing and not unaccounted_failures:
                requests = first  # nothing to narrow to (source could not be listed): repeat the scope
            elif round_no == 1 and not sop_instance_uids:
                requests = [_identifier("SERIES", study, s) for s in sorted(result.missing)]
                # Failed SOPs we cannot place in a series go by IMAGE level without a series key.
                orphans = [u for u in unaccounted_failures if u not in sop_to_series]
                requests += [_identifier("IMAGE", study, None, orphans[i:i + IMAGE_BATCH])
                             for i in range(0, len(orphans), IMAGE_BATCH)]
            else:
                per_series: dict[str | None, list[str]] = {s: sorted(v) for s, v in result.missing.items()}
                for uid in unaccounted_failures:
                    s = sop_to_series.get(uid)
                    if uid not in per_series.get(s, []):
                        per_series.setdefault(s, []).append(uid)
                requests = [_identifier("IMAGE", study, s, uids[i:i + IMAGE_BATCH])
                            for s, uids in sorted(per_series.items(), key=lambda kv: kv[0] or "")
                            for i in range(0, len(uids), IMAGE_BATCH)]
            logger.info("study %s: round %d, %d missing, %d unaccounted failures -> %d request(s)", study,
                        round_no, result.n_missing, len(unaccounted_failures), len(requests))
            last = [run(ident) for ident in requests]
            account()
    finally:
        if scp is not None:
            scp.stop()
    account()
    if result.missing:
        logger.warning("study %s: %d of %d expected instances still missing after %d request(s)", study,
                       result.n_missing, sum(len(v) for v in result.expected.values()), len(result.attempts))
    else:
        logger.info("study %s: %d instances in staging (%d conflicts, %d malformed) after %d request(s)",
                    study, len(result.received), len(result.conflicts), len(result.malformed),
                    len(result.attempts))
    return result
