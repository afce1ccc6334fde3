"""Transform one staged instance: coercion rules, MPI reconciliation, provenance; pixels untouched."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset

from pacsmig.errors import TransformError
from pacsmig.transform.mpi import Crosswalk, reconcile
from pacsmig.transform.provenance import record_original_attributes
from pacsmig.transform.rules import Change, RuleSet

if TYPE_CHECKING:
    import pandas

logger = logging.getLogger(__name__)

_ISSUER = 0x00100021

#: Columns of :func:`dry_run`'s report.
DRY_RUN_COLUMNS = ["path", "sop_instance_uid", "rule_id", "action", "tag", "keyword", "old", "new", "reason"]


@dataclass
class TransformResult:
    """What :func:`transform_instance` wrote."""

    sop_instance_uid: str
    path: Path
    file_hash: str
    changes: list[Change]


def _read(src: Path, *, stop_before_pixels: bool = False) -> Dataset:
    try:
        return pydicom.dcmread(src, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # noqa: BLE001 - any parse failure: the file is malformed
        raise TransformError(f"{Path(src).name}: not a readable DICOM file: {exc}") from exc


def apply_all(ds: Dataset, rules: RuleSet | None, mpi_patient_id: str | None,
              mpi_issuer: str) -> list[Change]:
    """Rules first (vendor fixes), then the MPI identity, so no rule can undo the reconciliation."""
    changes = rules.apply(ds) if rules is not None else []
    if mpi_patient_id:
        changes += reconcile(ds, mpi_patient_id, mpi_issuer)
    return changes


def transform_instance(src: Path, dst: Path, *, rules: RuleSet | None, mpi_patient_id: str | None,
                       mpi_issuer: str, when: datetime | None = None) -> TransformResult:
    """Apply ``rules`` and the MPI identity to ``src`` and write the result to ``dst``.

    Every change is recorded in OriginalAttributesSequence (one item per reason). The transfer
    syntax, file meta and PixelData bytes are kept as they are; an instance nothing applies to is
    copied byte for byte. ``when`` stamps AttributeModificationDateTime: the same input and
    ``when`` give the same output bytes. ``dst`` is replaced atomically.

    Raises
    ------
    TransformError
        The file cannot be read or a rule cannot be applied (the caller quarantines the study
        with reason ``transform_failed``).
    """
    src, dst = Path(src), Path(dst)
    ds = _read(src)
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    original_issuer = copy.deepcopy(ds[_ISSUER]) if _ISSUER in ds else None
    pixels_before = _pixel_bytes(ds)
    changes = apply_all(ds, rules, mpi_patient_id, mpi_issuer)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        if not changes:
            shutil.copyfile(src, tmp)
            data_hash = _file_hash(tmp)
        else:
            record_original_attributes(ds, changes, when or datetime.now(UTC),
                                       original_issuer=original_issuer)
            if _pixel_bytes(ds) != pixels_before:
                raise TransformError(f"instance {sop_uid}: pixel data changed during transform (bug)")
            buf = BytesIO()
            try:
                ds.save_as(buf, enforce_file_format=False)
            except Exception as exc:  # noqa: BLE001 - an encoder failure names the instance
                raise TransformError(f"instance {sop_uid}: cannot encode transformed dataset: {exc}") from exc
            data = buf.getvalue()
            tmp.write_bytes(data)
            data_hash = hashlib.sha256(data).hexdigest()
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    logger.info("transformed %s: %d changes", sop_uid, len(changes))
    return TransformResult(sop_instance_uid=sop_uid, path=dst, file_hash=data_hash, changes=changes)


def _pixel_bytes(ds: Dataset) -> str | None:
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            value = ds[keyword].value
            return hashlib.sha256(value if isinstance(value, bytes) else bytes(value)).hexdigest()
    return None


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return repr(value)


def iter_dicom_paths(paths: Iterable[Path]) -> list[Path]:
    """Files given, and every file below directories given, sorted (hidden files skipped)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        else:
            out.append(path)
    return out


def dry_run(paths: Iterable[Path], rules: RuleSet, crosswalk: Crosswalk | None = None,
            mpi_issuer: str | None = None) -> pandas.DataFrame:
    """What :func:`transform_instance` would change in ``paths``, writing nothing.

    One row per change (columns :data:`DRY_RUN_COLUMNS`). With a ``crosswalk``, MPI
    reconciliation is included; an unmatched patient gives a row with action ``no_mpi_match``
    (the study would be held). A file that cannot be read or a failing rule gives an ``error``
    row with the message in ``new``, so one bad file does not hide the rest of the report.
    """
    import pandas as pd

    from pacsmig.config import mpi_issuer as default_issuer

    issuer = mpi_issuer or default_issuer()
    rows: list[dict[str, Any]] = []
    for path in iter_dicom_paths(paths):
        sop_uid = ""
        try:
            ds = _read(path, stop_before_pixels=True)
            sop_uid = str(ds.get("SOPInstanceUID", ""))
            changes = rules.apply(ds)
            if crosswalk is not None:
                local_id = str(ds.get("PatientID", "") or "")
                mpi_id = crosswalk.lookup(str(ds.get("IssuerOfPatientID", "") or ""), local_id)
                if mpi_id is None:
                    rows.append({"path": str(path), "sop_instance_uid": sop_uid, "rule_id": "mpi",
                                 "action": "no_mpi_match", "tag": "(0010,0020)", "keyword": "PatientID",
                                 "old": local_id, "new": None, "reason": "no_mpi_match"})
                else:
                    changes += reconcile(ds, mpi_id, issuer)
        except TransformError as exc:
            rows.append({"path": str(path), "sop_instance_uid": sop_uid, "rule_id": "", "action": "error",
                         "tag": "", "keyword": "", "old": None, "new": str(exc), "reason": ""})
            continue
        for ch in changes:
            rows.append({"path": str(path), "sop_instance_uid": sop_uid, "rule_id": ch.rule_id,
                         "action": ch.action, "tag": ch.tag, "keyword": ch.keyword, "old": _cell(ch.old),
                         "new": _cell(ch.new), "reason": ch.reason})
    return pd.DataFrame(rows, columns=DRY_RUN_COLUMNS)
