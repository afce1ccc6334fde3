"""MPI reconciliation: the issuer-qualified crosswalk from local patient IDs to the hospital's MPI ID.

A patient ID means nothing without its issuer: ``12345`` from the cardiology PACS and ``12345``
from radiology may be two people. Lookups are therefore by ``(issuer, id)`` only; an ID whose
issuer has no row is unmatched (the caller holds the study with reason ``no_mpi_match``), never
guessed from a row of another issuer.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pacsmig.errors import TransformError
from pacsmig.transform import values as V
from pacsmig.transform.rules import COERCE, Change, tag_str

if TYPE_CHECKING:
    from pacsmig.ledger import Ledger

logger = logging.getLogger(__name__)

HEADER = ("issuer_of_patient_id", "patient_id", "mpi_patient_id")
RULE_ID = "mpi"

_PATIENT_ID = 0x00100020
_ISSUER = 0x00100021
_QUALIFIERS = 0x00100024  # IssuerOfPatientIDQualifiersSequence: describes the old issuer
_OTHER_IDS = 0x00101002


def _key(issuer: str | None, patient_id: str) -> tuple[str, str]:
    return ((issuer or "").strip(), (patient_id or "").strip())


class Crosswalk:
    """Local ``(issuer, patient_id)`` -> MPI patient ID, and back.

    Examples
    --------
    >>> cw = Crosswalk({("RAD", "1"): "M1", ("CARD", "1"): "M2"})
    >>> cw.lookup("RAD", "1"), cw.lookup("CARD", "1"), cw.lookup(None, "1")
    ('M1', 'M2', None)
    >>> cw.local_ids("M1")
    [('RAD', '1')]
    """

    def __init__(self, mapping: dict[tuple[str, str], str] | None = None) -> None:
        self._forward: dict[tuple[str, str], str] = {}
        self._reverse: dict[str, list[tuple[str, str]]] = {}
        for (issuer, patient_id), mpi_id in (mapping or {}).items():
            self._add(issuer, patient_id, mpi_id, "mapping")

    def _add(self, issuer: str | None, patient_id: str, mpi_id: str, where: str) -> None:
        key = _key(issuer, patient_id)
        mpi_id = (mpi_id or "").strip()
        if not key[1] or not mpi_id:
            raise TransformError(f"crosswalk {where}: patient_id and mpi_patient_id must not be empty")
        known = self._forward.get(key)
        if known is not None and known != mpi_id:
            # Two MPI IDs for one local ID is a data error a human must resolve; never pick one.
            raise TransformError(f"crosswalk {where}: one local ID (issuer {key[0]!r}) maps to two MPI IDs")
        if known is None:
            self._forward[key] = mpi_id
            self._reverse.setdefault(mpi_id, []).append(key)

    def __len__(self) -> int:
        return len(self._forward)

    def items(self) -> list[tuple[str, str, str]]:
        """``(issuer, patient_id, mpi_patient_id)`` rows, sorted."""
        return sorted((i, p, m) for (i, p), m in self._forward.items())

    @classmethod
    def from_csv(cls, path: Path) -> Crosswalk:
        """Read a CSV with header ``issuer_of_patient_id,patient_id,mpi_patient_id``."""
        path = Path(path)
        cw = cls()
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is None or not set(HEADER) <= {f.strip() for f in reader.fieldnames}:
                    raise TransformError(f"crosswalk {path}: header must be {','.join(HEADER)}, "
                                         f"got {reader.fieldnames}")
                for line, row in enumerate(reader, start=2):
                    row = {k.strip(): (v or "") for k, v in row.items() if k is not None}
                    cw._add(row["issuer_of_patient_id"], row["patient_id"], row["mpi_patient_id"],
                            f"{path.name} line {line}")
        except OSError as exc:
            raise TransformError(f"crosswalk {path}: cannot read: {exc}") from exc
        return cw

    @classmethod
    def from_ledger(cls, ledger: Ledger) -> Crosswalk:
        """Read the ``mpi_crosswalk`` table."""
        cw = cls()
        for row in ledger.query("SELECT issuer_of_patient_id, patient_id, mpi_patient_id FROM mpi_crosswalk "
                                "ORDER BY issuer_of_patient_id, patient_id"):
            cw._add(row["issuer_of_patient_id"], row["patient_id"], row["mpi_patient_id"], "ledger")
        return cw

    def lookup(self, issuer_of_patient_id: str | None, patient_id: str) -> str | None:
        """The MPI ID of this issuer-qualified local ID, or None (no fallback to other issuers)."""
        return self._forward.get(_key(issuer_of_patient_id, patient_id))

    def local_ids(self, mpi_patient_id: str) -> list[tuple[str, str]]:
        """Every ``(issuer, patient_id)`` that maps to ``mpi_patient_id`` (issuer '' = none)."""
        return list(self._reverse.get((mpi_patient_id or "").strip(), []))


def load_crosswalk_into_ledger(ledger: Ledger, path: Path) -> int:
    """Upsert the crosswalk CSV into ``mpi_crosswalk``; returns the number of rows in the file.

    Idempotent: loading the same file twice leaves the table as after one load. A changed MPI ID
    for a known local ID is updated and the count of such updates goes into the custody entry.
    """
    path = Path(path)
    cw = Crosswalk.from_csv(path)
    rows = cw.items()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with ledger.transaction() as cur:
        cur.execute("SELECT issuer_of_patient_id, patient_id, mpi_patient_id FROM mpi_crosswalk")
        before = {(r["issuer_of_patient_id"], r["patient_id"]): r["mpi_patient_id"] for r in cur.fetchall()}
        if rows:
            from psycopg2.extras import execute_values

            execute_values(
                cur,
                "INSERT INTO mpi_crosswalk (issuer_of_patient_id, patient_id, mpi_patient_id) VALUES %s "
                "ON CONFLICT (issuer_of_patient_id, patient_id) DO UPDATE "
                "SET mpi_patient_id = EXCLUDED.mpi_patient_id "
                "WHERE mpi_crosswalk.mpi_patient_id IS DISTINCT FROM EXCLUDED.mpi_patient_id",
                rows, page_size=1000)
        inserted = sum(1 for i, p, _ in rows if (i, p) not in before)
        updated = sum(1 for i, p, m in rows if (i, p) in before and before[(i, p)] != m)
        ledger.append_custody(cur, None, "mpi_crosswalk_loaded",
                              {"file": path.name, "sha256": digest, "rows": len(rows),
                               "inserted": inserted, "updated": updated})
    logger.info("crosswalk %s: %d rows (%d new, %d updated)", path.name, len(rows), inserted, updated)
    return len(rows)


def reconcile(ds: Dataset, mpi_patient_id: str, mpi_issuer: str) -> list[Change]:
    """Set PatientID / IssuerOfPatientID to the MPI's, keeping the old ones in OtherPatientIDsSequence.

    The old pair is added as an item (PatientID, IssuerOfPatientID, TypeOfPatientID ``TEXT``, and
    the old IssuerOfPatientIDQualifiersSequence if there was one), unless already listed. Returns
    the changes (reason COERCE), empty when the dataset already carries the MPI identity.
    """
    mpi_patient_id = (mpi_patient_id or "").strip()
    if not mpi_patient_id:
        raise TransformError("reconcile: empty MPI patient ID")
    old_id = str(ds.get("PatientID", "") or "").strip()
    old_issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    if old_id == mpi_patient_id and old_issuer == mpi_issuer:
        return []
    changes: list[Change] = []

    def record(tag: int, keyword: str, before: DataElement | None, action: str = "reconcile") -> None:
        element = ds[tag] if tag in ds else None
        vr = element.VR if element is not None else (before.VR if before is not None else "")
        changes.append(Change(
            tag=tag_str(tag), keyword=keyword, action=action,
            old=None if before is None else V.plain(before.value),
            new=None if element is None else V.plain(element.value),
            rule_id=RULE_ID, reason=COERCE, original=before, vr=vr))

    if old_id:
        existing = ds.get("OtherPatientIDsSequence") or []
        listed = {(str(i.get("PatientID", "")).strip(), str(i.get("IssuerOfPatientID", "")).strip())
                  for i in existing}
        if (old_id, old_issuer) not in listed:
            before = copy.deepcopy(ds[_OTHER_IDS]) if _OTHER_IDS in ds else None
            item = Dataset()
            item.PatientID = old_id
            item.IssuerOfPatientID = old_issuer
            if _QUALIFIERS in ds:
                item.IssuerOfPatientIDQualifiersSequence = copy.deepcopy(ds[_QUALIFIERS].value)
            item.TypeOfPatientID = "TEXT"
            if _OTHER_IDS not in ds:
                ds.OtherPatientIDsSequence = DicomSequence()
            ds.OtherPatientIDsSequence.append(item)
            record(_OTHER_IDS, "OtherPatientIDsSequence", before)
    before = copy.deepcopy(ds[_PATIENT_ID]) if _PATIENT_ID in ds else None
    if old_id != mpi_patient_id:
        ds.PatientID = mpi_patient_id
        record(_PATIENT_ID, "PatientID", before)
    before = copy.deepcopy(ds[_ISSUER]) if _ISSUER in ds else None
    if old_issuer != mpi_issuer:
        ds.IssuerOfPatientID = mpi_issuer
        record(_ISSUER, "IssuerOfPatientID", before)
    if _QUALIFIERS in ds and old_issuer != mpi_issuer:
        # The qualifiers described the old issuer; they now live in the OtherPatientIDs item.
        before = copy.deepcopy(ds[_QUALIFIERS])
        del ds[_QUALIFIERS]
        record(_QUALIFIERS, "IssuerOfPatientIDQualifiersSequence", before, "move")
    logger.debug("reconciled %s to the MPI (%d changes)", ds.get("SOPInstanceUID", "?"), len(changes))
    return changes
