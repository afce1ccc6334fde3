"""Count reconciliation: re-query the source PACS for what it holds, so nothing unmigrated goes unnoticed.

The ledger says what pacsmig *thinks* the source holds; the source is asked again (C-FIND STUDY
for the range, then SERIES and IMAGE levels per study, walking the hierarchy because many legacy
Q/R SCPs return no counts). Every instance found must be verified at the target, quarantined or
held with a reason, or it is reported missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from pacsmig.config import DicomNode
from pacsmig.errors import VerifyError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scope:
    """What to validate: a study-date range, a patient, or (all None) everything."""

    date_from: date | None = None
    date_to: date | None = None
    patient_id: str | None = None

    @classmethod
    def parse(cls, date_from: str | date | None = None, date_to: str | date | None = None,
              patient_id: str | None = None) -> Scope:
        """From ``YYYY-MM-DD`` strings (or dates); empty strings mean unset."""
        def _d(value: str | date | None) -> date | None:
            if value in (None, ""):
                return None
            if isinstance(value, date):
                return value
            try:
                return date.fromisoformat(str(value)[:10])
            except ValueError as exc:
                raise VerifyError(f"bad date {value!r} (expected YYYY-MM-DD)") from exc
        scope = cls(_d(date_from), _d(date_to), patient_id or None)
        if scope.date_from and scope.date_to and scope.date_from > scope.date_to:
            raise VerifyError(f"date_from {scope.date_from} is after date_to {scope.date_to}")
        return scope

    def sql(self, alias: str = "s") -> tuple[str, list[Any]]:
        """A WHERE clause over ``studies`` (alias ``alias``) and its parameters."""
        clauses, params = ["TRUE"], []
        if self.date_from:
            clauses.append(f"{alias}.study_date >= %s")
            params.append(self.date_from)
        if self.date_to:
            clauses.append(f"{alias}.study_date <= %s")
            params.append(self.date_to)
        if self.patient_id:
            clauses.append(f"({alias}.patient_id = %s OR {alias}.mpi_patient_id = %s)")
            params += [self.patient_id, self.patient_id]
        return " AND ".join(clauses), params

    def study_uids(self, ledger: Any) -> list[str]:
        """The ledger's studies in this scope, sorted (exports, reports)."""
        where, params = self.sql("s")
        rows = ledger.query(f"SELECT study_instance_uid FROM studies s WHERE {where} ORDER BY 1", params)
        return [r["study_instance_uid"] for r in rows]

    def dicom_range(self) -> str:
        """The StudyDate matching key (``YYYYMMDD-YYYYMMDD``, open ends allowed, ``""`` = any)."""
        if not (self.date_from or self.date_to):
            return ""
        a = self.date_from.strftime("%Y%m%d") if self.date_from else ""
        b = self.date_to.strftime("%Y%m%d") if self.date_to else ""
        return f"{a}-{b}"

    def as_dict(self) -> dict[str, str | None]:
        return {"date_from": self.date_from.isoformat() if self.date_from else None,
                "date_to": self.date_to.isoformat() if self.date_to else None,
                "patient_id": self.patient_id}

    @property
    def label(self) -> str:
        parts = [f"{self.date_from or '…'}..{self.date_to or '…'}"]
        if self.patient_id:
            parts.append("one patient")
        return " ".join(parts)


@dataclass
class SourceStudy:
    """What the source holds for one study now: SOP UID -> series UID, and whether that is complete."""

    study_instance_uid: str
    instances: dict[str, str] = field(default_factory=dict)
    complete: bool = True
    problem: str = ""


def _walk_study(client: Any, study_uid: str) -> SourceStudy:
    from pacsmig.dicom.find import query_dataset

    found = SourceStudy(study_uid)
    series = client.find(query_dataset("SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": ""}))
    if not series.complete:
        found.complete, found.problem = False, f"series query ended with status {series.status}"
    for ident in series.identifiers:
        series_uid = str(ident.get("SeriesInstanceUID", ""))
        if not series_uid:
            continue
        images = client.find(query_dataset("IMAGE", {"StudyInstanceUID": study_uid,
                                                     "SeriesInstanceUID": series_uid,
                                                     "SOPInstanceUID": ""}))
        if not images.complete:
            found.complete = False
            found.problem = f"image query of series {series_uid} ended with status {images.status}"
        for img in images.identifiers:
            sop = str(img.get("SOPInstanceUID", ""))
            if sop:
                found.instances[sop] = series_uid
    return found


def list_study_instances(node: DicomNode, study_uids: list[str]) -> dict[str, SourceStudy]:
    """Re-query the source for every instance of each study (one association for all of them).

    ``pacsmig.dicom.retrieve.list_study_instances`` is preferred when the retrieve package offers
    it (its view of the source is the one the extraction used); otherwise a SERIES -> IMAGE walk.
    """
    try:
        from pacsmig.dicom.retrieve import list_study_instances as theirs  # type: ignore[attr-defined]
    except ImportError:
        theirs = None
    out: dict[str, SourceStudy] = {}
    if theirs is not None:
        for uid in study_uids:
            try:
                listed = theirs(node, uid)
            except Exception as exc:  # noqa: BLE001 - fall back to our own walk for this study
                logger.warning("retrieve.list_study_instances failed for study %s (%s); walking it",
                               uid, type(exc).__name__)
                continue
            # Their shape: series UID -> SOP UIDs. A series answering with as many rows as the
            # source's cap may be truncated: the study is then not provably complete.
            study = SourceStudy(uid)
            for series, sops in listed.items():
                study.instances.update(dict.fromkeys(map(str, sops), str(series)))
                if node.find_cap and len(sops) >= node.find_cap:
                    study.complete = False
                    study.problem = f"series {series} answered {len(sops)} rows, the source's cap"
            out[uid] = study
    rest = [uid for uid in study_uids if uid not in out]
    if rest:
        from pacsmig.dicom.find import FindClient

        with FindClient(node) as client:
            for uid in rest:
                out[uid] = _walk_study(client, uid)
    return out


def source_studies(node: DicomNode, scope: Scope) -> tuple[set[str], list[str]]:
    """Study UIDs the source holds for ``scope`` (date windows bisected when the source caps results).

    Returns the UIDs and warnings (a window still truncated at one day, a failed query): those
    are reported in the summary, never silently dropped.
    """
    from pacsmig.dicom.find import FindClient, query_dataset

    uids: set[str] = set()
    warnings: list[str] = []

    def query(client: FindClient, lo: date | None, hi: date | None) -> None:
        window = Scope(lo, hi, scope.patient_id)
        keys: dict[str, Any] = {"StudyInstanceUID": "", "StudyDate": window.dicom_range()}
        if scope.patient_id:
            keys["PatientID"] = scope.patient_id
        result = client.find(query_dataset("STUDY", keys))
        truncated = not result.complete or len(result) >= node.find_cap
        if truncated and lo and hi and lo < hi:
            mid = lo + timedelta(days=(hi - lo).days // 2)
            query(client, lo, mid)
            query(client, mid + timedelta(days=1), hi)
            return
        uids.update(str(i.get("StudyInstanceUID", "")) for i in result.identifiers
                    if i.get("StudyInstanceUID"))
        if truncated:
            warnings.append(f"source study query {window.label} incomplete (status {result.status}, "
                            f"{len(result)} matches): studies unknown to the ledger may be missed")

    with FindClient(node) as client:
        query(client, scope.date_from, scope.date_to)
    return uids, warnings
