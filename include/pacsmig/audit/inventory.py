"""The study inventory by C-FIND: date windows split at the source's cap, undated studies, counts.

How nothing is missed
---------------------
* A window whose answer reaches ``find_cap`` (Orthanc's LimitFindResults truncates silently, or
  answers "matching terminated", 0xFE00), or that times out, is split in halves and re-queried,
  down to a single day. A single day at the cap is re-queried per ModalitiesInStudy value, and a
  (day, modality) still at the cap per PatientID prefix (``0*``..``z*``, recursively). If a leaf
  is still capped, or the split answers do not cover every study the capped answer listed,
  :class:`InventoryTruncated` is raised: the inventory is never silently short.
* Studies without a StudyDate cannot be found by date: DICOM range matching compares values, and
  an empty (or malformed) StudyDate never falls inside a range. They are found by a separate
  universal query (StudyDate as a return key only), keeping the answers whose date is missing or
  not a valid ``YYYYMMDD``. That query obeys the same cap rules (modality, then PatientID prefix).
* Sources that do not return NumberOfStudyRelatedSeries/Instances or ModalitiesInStudy (dcmqrscp,
  many legacy PACS) are walked: SERIES level below the study, and IMAGE level below a series
  whose NumberOfSeriesRelatedInstances is missing.
* Rows are de-duplicated by StudyInstanceUID within a window and again when parts are merged.

The ``modalities`` column is a string in DICOM multi-value form, sorted: ``"CT\\SR"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsmig.audit.profile import KNOWN_MODALITIES, MODALITY_SEPARATOR, normalise_modalities, primary_modality
from pacsmig.audit.windows import UNDATED, DateWindow
from pacsmig.dicom.find import FindClient, FindResult, query_dataset
from pacsmig.errors import DicomError

logger = logging.getLogger(__name__)


class InventoryTruncated(DicomError):
    """The source capped an answer that could not be split further: studies would be missed."""


#: Return keys of the STUDY-level query (empty value = "return this attribute").
STUDY_RETURN_KEYS: dict[str, str] = {
    "StudyInstanceUID": "",
    "StudyDate": "",
    "StudyTime": "",
    "AccessionNumber": "",
    "PatientID": "",
    "IssuerOfPatientID": "",
    "PatientName": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "StudyDescription": "",
    "ModalitiesInStudy": "",
    "NumberOfStudyRelatedSeries": "",
    "NumberOfStudyRelatedInstances": "",
}

SERIES_RETURN_KEYS: dict[str, str] = {
    "SeriesInstanceUID": "",
    "Modality": "",
    "NumberOfSeriesRelatedInstances": "",
    "Manufacturer": "",
    "ManufacturerModelName": "",
}

#: The inventory's columns and types (parts and the merged file share it).
SCHEMA = pa.schema(
    [
        ("study_instance_uid", pa.string()),
        ("patient_id", pa.string()),
        ("issuer_of_patient_id", pa.string()),
        ("patient_name", pa.string()),
        ("patient_birth_date", pa.string()),
        ("patient_sex", pa.string()),
        ("study_date", pa.date32()),
        ("study_date_raw", pa.string()),
        ("study_date_status", pa.string()),
        ("study_time", pa.string()),
        ("accession_number", pa.string()),
        ("study_description", pa.string()),
        ("modalities", pa.string()),
        ("primary_modality", pa.string()),
        ("n_series", pa.int64()),
        ("n_instances", pa.int64()),
        ("counts_source", pa.string()),
        ("manufacturer", pa.string()),
        ("est_bytes", pa.int64()),
        ("window", pa.string()),
    ]
)

#: ``study_date_status`` values: the date is usable, absent, or present but not a valid YYYYMMDD.
DATE_OK, DATE_MISSING, DATE_MALFORMED = "ok", "missing", "malformed"


@dataclass
class WindowStats:
    """What one window's inventory cost and found (XCom-sized)."""

    label: str
    studies: int = 0
    queries: int = 0
    splits: int = 0
    walked_studies: int = 0
    modality_split_days: list[str] = field(default_factory=list)
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- pure parsing of C-FIND answers -------------------------------------------------------------
def text(ds: Dataset, keyword: str) -> str | None:
    """An attribute as stripped text (multi-values joined by ``\\``), None when absent or empty.

    PN values are decoded with the answer's SpecificCharacterSet by pydicom on access.
    """
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        joined = MODALITY_SEPARATOR.join(str(v).strip() for v in value if v is not None)
        return joined.strip(MODALITY_SEPARATOR) or None
    out = str(value).strip()
    return out or None


def count(ds: Dataset, keyword: str) -> int | None:
    """An IS count, None when the source did not return it (absent, empty or not a number)."""
    raw = text(ds, keyword)
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


def parse_study_date(raw: str | None) -> tuple[date | None, str]:
    """``(date, status)`` for a StudyDate value.

    Examples
    --------
    >>> parse_study_date("20150102"), parse_study_date(None), parse_study_date("2015-1-2")
    ((datetime.date(2015, 1, 2), 'ok'), (None, 'missing'), (None, 'malformed'))
    """
    if not raw:
        return None, DATE_MISSING
    if len(raw) != 8 or not raw.isdigit():
        return None, DATE_MALFORMED
    try:
        return date(int(raw[:4]), int(raw[4:6]), int(raw[6:])), DATE_OK
    except ValueError:
        return None, DATE_MALFORMED


def study_record(ds: Dataset, window: str) -> dict[str, Any]:
    """One inventory row from a STUDY-level answer (counts may still be None: see :func:`walk_study`)."""
    raw_date = text(ds, "StudyDate")
    study_date, status = parse_study_date(raw_date)
    modalities = normalise_modalities(ds.get("ModalitiesInStudy") or [])
    return {
        "study_instance_uid": text(ds, "StudyInstanceUID"),
        "patient_id": text(ds, "PatientID"),
        "issuer_of_patient_id": text(ds, "IssuerOfPatientID"),
        "patient_name": text(ds, "PatientName"),
        "patient_birth_date": text(ds, "PatientBirthDate"),
        "patient_sex": text(ds, "PatientSex"),
        "study_date": study_date,
        "study_date_raw": raw_date,
        "study_date_status": status,
        "study_time": text(ds, "StudyTime"),
        "accession_number": text(ds, "AccessionNumber"),
        "study_description": text(ds, "StudyDescription"),
        "modalities": MODALITY_SEPARATOR.join(modalities) or None,
        "primary_modality": primary_modality(modalities),
        "n_series": count(ds, "NumberOfStudyRelatedSeries"),
        "n_instances": count(ds, "NumberOfStudyRelatedInstances"),
        "counts_source": "study",
        "manufacturer": None,
        "est_bytes": None,
        "window": window,
    }


def needs_walk(record: dict[str, Any]) -> bool:
    """The study answer lacked counts or modalities, so the series level must be asked."""
    return record["n_series"] is None or record["n_instances"] is None or not record["modalities"]


def to_table(records: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows -> a table with :data:`SCHEMA` (also for zero rows)."""
    rows = list(records)
    return pa.Table.from_pylist(rows, schema=SCHEMA) if rows else SCHEMA.empty_table()


# --- queries ------------------------------------------------------------------------------------
def _study_query(**match: str) -> Dataset:
    return query_dataset("STUDY", {**STUDY_RETURN_KEYS, **match})


def _is_capped(result: FindResult, cap: int) -> bool:
    return len(result) >= cap or result.truncated_by_peer or result.timed_out


def _check_failed(result: FindResult, what: str) -> None:
    if result.failed:
        raise DicomError(f"C-FIND {what} failed with status 0x{result.status:04X}")


def _by_uid(answers: Iterable[Dataset], into: dict[str, Dataset], what: str) -> None:
    missing = 0
    for ds in answers:
        uid = text(ds, "StudyInstanceUID")
        if uid is None:
            missing += 1
            continue
        into.setdefault(uid, ds)
    if missing:
        # an answer without its UID names nothing we could migrate or count: refuse, do not drop
        raise DicomError(f"C-FIND {what}: {missing} answers carry no StudyInstanceUID")


#: First characters PatientID prefixes are split over when a (day, modality) query is still capped.
PATIENT_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_. "
#: Longest PatientID prefix tried before giving up loudly.
MAX_PREFIX = 16


def split_by_patient_id(
    client: FindClient, keys: dict[str, str], cap: int, what: str, prefix: str = ""
) -> dict[str, Dataset]:
    """Re-query a capped query per PatientID prefix (wildcard matching ``MRN1*``), recursively."""
    found: dict[str, Dataset] = {}
    for char in PATIENT_ID_ALPHABET:
        pattern = prefix + char
        result = client.find(_study_query(**keys, PatientID=pattern + "*"))
        _check_failed(result, f"{what} PatientID={pattern}*")
        if not _is_capped(result, cap):
            _by_uid(result.identifiers, found, what)
        elif len(pattern) < MAX_PREFIX:
            found.update(split_by_patient_id(client, keys, cap, what, pattern))
        else:
            raise InventoryTruncated(
                f"C-FIND {what} PatientID={pattern}* still returned {len(result)} answers "
                f"(cap {cap}); raise find_cap if the source allows more answers per query"
            )
    return found


def split_by_modality(
    client: FindClient, base: dict[str, str], cap: int, capped: FindResult, what: str
) -> dict[str, Dataset]:
    """Re-query a capped query that dates cannot split: per ModalitiesInStudy, then PatientID prefix.

    Raises
    ------
    InventoryTruncated
        If a leaf query is still capped, or the union misses a study that the capped answer listed
        (the source does not match on these keys, or a study has a modality outside the known
        vocabulary or an empty/odd PatientID): loud, never a silently short inventory.
    """
    seen: set[str] = set()
    for ds in capped.identifiers:
        seen.update(normalise_modalities(ds.get("ModalitiesInStudy") or []))
    found: dict[str, Dataset] = {}
    for modality in sorted(KNOWN_MODALITIES | seen):
        keys = {**base, "ModalitiesInStudy": modality}
        result = client.find(_study_query(**keys))
        _check_failed(result, f"{what} ModalitiesInStudy={modality}")
        if _is_capped(result, cap):
            found.update(split_by_patient_id(client, keys, cap, f"{what} ModalitiesInStudy={modality}"))
            continue
        _by_uid(result.identifiers, found, what)
    listed: dict[str, Dataset] = {}
    _by_uid(capped.identifiers, listed, what)
    lost = sorted(set(listed) - set(found))
    if lost:
        raise InventoryTruncated(
            f"C-FIND {what}: splitting by ModalitiesInStudy/PatientID lost {len(lost)} of the studies the "
            f"capped answer listed (e.g. {lost[0]}); the source does not match on these keys."
        )
    logger.warning(
        "C-FIND %s hit the cap (%d); split by ModalitiesInStudy into %d studies", what, cap, len(found)
    )
    return found


def find_window(client: FindClient, window: DateWindow, cap: int, stats: WindowStats) -> dict[str, Dataset]:
    """Every study with ``window.start <= StudyDate <= window.end``, splitting at the cap."""
    found: dict[str, Dataset] = {}
    pending = [window]
    while pending:
        current = pending.pop()
        result = client.find(_study_query(StudyDate=current.dicom_range))
        _check_failed(result, f"StudyDate={current.dicom_range}")
        if not _is_capped(result, cap):
            _by_uid(result.identifiers, found, current.label)
            continue
        if not current.is_single_day:
            first, second = current.split()
            pending.extend([second, first])  # depth first, oldest half first
            stats.splits += 1
            logger.info(
                "window %s: %d answers (cap %d, status %s): split into %s and %s",
                current.label,
                len(result),
                cap,
                result.status,
                first.label,
                second.label,
            )
            continue
        day = current.dicom_range
        found.update(split_by_modality(client, {"StudyDate": day}, cap, result, f"StudyDate={day}"))
        stats.modality_split_days.append(current.start.isoformat())
    return found


def find_undated(client: FindClient, cap: int) -> dict[str, Dataset]:
    """Studies whose StudyDate is missing or malformed (universal query, filtered here)."""
    result = client.find(_study_query())
    _check_failed(result, "universal (undated studies)")
    everything: dict[str, Dataset] = {}
    if _is_capped(result, cap):
        everything = split_by_modality(client, {}, cap, result, "universal (undated studies)")
    else:
        _by_uid(result.identifiers, everything, "universal (undated studies)")
    return {
        uid: ds for uid, ds in everything.items() if parse_study_date(text(ds, "StudyDate"))[1] != DATE_OK
    }


def walk_study(client: FindClient, study_instance_uid: str, cap: int) -> dict[str, Any]:
    """Counts, modalities and manufacturers of one study from SERIES (and IMAGE) level answers."""
    series = client.find(
        query_dataset("SERIES", {"StudyInstanceUID": study_instance_uid, **SERIES_RETURN_KEYS})
    )
    _check_failed(series, f"SERIES below {study_instance_uid}")
    if _is_capped(series, cap) or not series.complete:
        raise InventoryTruncated(
            f"C-FIND SERIES below study {study_instance_uid}: {len(series)} answers, "
            f"status {series.status} (cap {cap}); cannot count this study"
        )
    series_uids: set[str] = set()
    modalities: set[str] = set()
    manufacturers: set[str] = set()
    instances = 0
    source = "series"
    for ds in series.identifiers:
        uid = text(ds, "SeriesInstanceUID")
        if uid is None or uid in series_uids:
            continue
        series_uids.add(uid)
        modalities.update(normalise_modalities(ds.get("Modality") or []))
        if maker := text(ds, "Manufacturer"):
            manufacturers.add(maker)
        n = count(ds, "NumberOfSeriesRelatedInstances")
        if n is None:
            n = count_images(client, study_instance_uid, uid, cap)
            source = "image"
        instances += n
    return {
        "n_series": len(series_uids),
        "n_instances": instances,
        "modalities": MODALITY_SEPARATOR.join(sorted(modalities)) or None,
        "primary_modality": primary_modality(modalities),
        "manufacturer": MODALITY_SEPARATOR.join(sorted(manufacturers)) or None,
        "counts_source": source,
    }


def count_images(client: FindClient, study_instance_uid: str, series_instance_uid: str, cap: int) -> int:
    """Instances of one series by IMAGE-level C-FIND (unique SOPInstanceUIDs)."""
    result = client.find(
        query_dataset(
            "IMAGE",
            {
                "StudyInstanceUID": study_instance_uid,
                "SeriesInstanceUID": series_instance_uid,
                "SOPInstanceUID": "",
            },
        )
    )
    _check_failed(result, f"IMAGE below series {series_instance_uid}")
    if _is_capped(result, cap) or not result.complete:
        raise InventoryTruncated(
            f"C-FIND IMAGE below series {series_instance_uid}: {len(result)} answers, "
            f"status {result.status} (cap {cap}); raise find_cap to count it"
        )
    return len({text(ds, "SOPInstanceUID") for ds in result.identifiers} - {None})


def records_for(
    client: FindClient, answers: dict[str, Dataset], label: str, cap: int, stats: WindowStats
) -> list[dict[str, Any]]:
    """Inventory rows for the answers of one window, walking studies that lack counts."""
    records = []
    for uid in sorted(answers):
        record = study_record(answers[uid], label)
        if needs_walk(record):
            walked = walk_study(client, uid, cap)
            # keep what the study level did say: a source may give modalities but no counts
            if record["modalities"] and not walked["modalities"]:
                walked.pop("modalities")
                walked.pop("primary_modality")
            record.update(walked)
            stats.walked_studies += 1
        records.append(record)
    return records


def inventory_window(client: FindClient, label: str, cap: int) -> tuple[list[dict[str, Any]], WindowStats]:
    """The rows of one mapped window (a date-window label or :data:`UNDATED`)."""
    stats = WindowStats(label=label)
    start_queries = client.queries
    if label == UNDATED:
        answers = find_undated(client, cap)
    else:
        answers = find_window(client, DateWindow.from_label(label), cap, stats)
    records = records_for(client, answers, label, cap, stats)
    stats.studies = len(records)
    stats.queries = client.queries - start_queries
    logger.info(
        "window %s: %d studies (%d queries, %d splits, %d walked)",
        label,
        stats.studies,
        stats.queries,
        stats.splits,
        stats.walked_studies,
    )
    return records, stats


# --- parquet parts and the merged inventory ------------------------------------------------------
def part_path(parts_dir: Path, label: str) -> Path:
    return parts_dir / f"{label}.parquet"


def write_table(table: pa.Table, path: Path) -> Path:
    """Write parquet atomically: a re-run replaces the file, a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def write_part(records: list[dict[str, Any]], parts_dir: Path, label: str) -> Path:
    return write_table(to_table(records), part_path(parts_dir, label))


#: What patient-ID health reads.
ID_HEALTH_COLUMNS = ("study_instance_uid", "patient_id", "issuer_of_patient_id", "patient_name",
                     "patient_birth_date", "patient_sex")

#: What the byte estimate and the assessment read: a 10 M-study inventory fits in memory this way.
ASSESSMENT_COLUMNS = ("study_instance_uid", "study_date", "study_date_status", "modalities",
                      "primary_modality", "n_series", "n_instances", "est_bytes")


def read_inventory(path: Path, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """The inventory (or a part) as a DataFrame with :data:`SCHEMA`'s columns (or only ``columns``)."""
    if columns is None:
        return pq.read_table(path, schema=SCHEMA).to_pandas()
    wanted = [c for c in columns if c in SCHEMA.names]
    return pq.read_table(path, schema=SCHEMA, columns=wanted).to_pandas()


def set_est_bytes(path: Path, est_bytes: Any) -> None:
    """Write the byte estimate into the inventory file without loading it into pandas."""
    table = pq.read_table(path, schema=SCHEMA)
    column = pa.array(est_bytes, type=SCHEMA.field("est_bytes").type)
    table = table.set_column(SCHEMA.get_field_index("est_bytes"), SCHEMA.field("est_bytes"), column)
    write_table(table, path)


def frame_to_table(df: pd.DataFrame) -> pa.Table:
    """A DataFrame with the inventory columns back to a :data:`SCHEMA` table."""
    return pa.Table.from_pandas(df[SCHEMA.names], schema=SCHEMA, preserve_index=False)


def merge_parts(parts: Iterable[Path], out: Path) -> dict[str, Any]:
    """Concatenate window parts into ``inventory.parquet``, one row per StudyInstanceUID.

    A UID reported by two windows with different patient IDs is a source conflict, counted and
    logged by UID (never by patient). The first row in (window, UID) order is kept.
    """
    paths = [Path(p) for p in parts]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DicomError(f"inventory parts missing (their windows did not finish): {missing}")
    tables = [pq.read_table(p, schema=SCHEMA) for p in paths]
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    df = table.to_pandas().sort_values(["study_instance_uid", "window"], kind="stable")
    dup_mask = df.duplicated("study_instance_uid", keep=False)
    conflicts = 0
    if dup_mask.any():
        dups = df[dup_mask]
        conflicts_uids = dups.groupby("study_instance_uid")["patient_id"].nunique(dropna=False)
        conflicts = int((conflicts_uids > 1).sum())
        for uid in conflicts_uids[conflicts_uids > 1].index[:20]:
            logger.warning("StudyInstanceUID %s is reported under more than one patient ID", uid)
    deduped = df.drop_duplicates("study_instance_uid", keep="first").reset_index(drop=True)
    write_table(frame_to_table(deduped), out)
    summary = {
        "path": str(out),
        "studies": len(deduped),
        "parts": len(paths),
        "duplicates": int(len(df) - len(deduped)),
        "uid_conflicts": conflicts,
        "instances": int(deduped["n_instances"].sum()) if len(deduped) else 0,
    }
    logger.info(
        "inventory: %d studies from %d parts (%d duplicate rows dropped, %d UID conflicts)",
        summary["studies"],
        summary["parts"],
        summary["duplicates"],
        conflicts,
    )
    return summary
