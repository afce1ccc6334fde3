"""Transform one staged instance: coercion rules, MPI reconciliation, provenance; pixels untouched."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID

from pacsmig.errors import TransformError
from pacsmig.transform.mpi import Crosswalk, reconcile
from pacsmig.transform.provenance import record_original_attributes
from pacsmig.transform.rules import Change, RuleSet
from pacsmig.verify.hashing import PIXEL_DATA_ELEMENTS, raw_pixel_hash

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


#: Elements that may follow the header in a staged file and that no rule can reach (protected).
_PIXEL_TAGS = frozenset(PIXEL_DATA_ELEMENTS)
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                       b"UV"})
_DEFLATED = "1.2.840.10008.1.2.1.99"
_CHUNK = 1 << 20


@dataclass
class StagedHeader:
    """A staged file parsed up to its pixel data, with where the unparsed rest starts.

    ``dataset`` holds every element before (7FE0,0008/0009/0010); ``tail_offset`` is the byte
    offset of the first pixel data element (the file size when there is none). ``version``
    (inode, size, mtime) identifies the file that was parsed: :func:`transform_instance` re-reads
    a file replaced or rewritten since. A CT header is a few KB, so many can be held at once.
    """

    path: Path
    dataset: Dataset
    tail_offset: int
    size: int
    version: tuple[int, int, int]

    def is_current(self, path: Path) -> bool:
        """Whether ``path`` is still the file this header was read from."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        return Path(path) == self.path and _version(st) == self.version


def _version(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read_header(src: Path) -> StagedHeader:
    """Parse ``src`` up to its pixel data (never reading the pixel bytes).

    Raises
    ------
    TransformError
        The file is not readable DICOM.
    """
    src = Path(src)
    try:
        with src.open("rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            offset = fh.tell()
            st = os.fstat(fh.fileno())
    except Exception as exc:  # noqa: BLE001 - any parse failure: the file is malformed
        raise TransformError(f"{src.name}: not a readable DICOM file: {exc}") from exc
    return StagedHeader(src, ds, offset, st.st_size, _version(st))


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
                       mpi_issuer: str, when: datetime | None = None,
                       header: StagedHeader | None = None) -> TransformResult:
    """Apply ``rules`` and the MPI identity to ``src`` and write the result to ``dst``.

    Every change is recorded in OriginalAttributesSequence (one item per reason). The transfer
    syntax, file meta and PixelData bytes are kept as they are; an instance nothing applies to is
    copied byte for byte. ``when`` stamps AttributeModificationDateTime: the same input and
    ``when`` give the same output bytes. ``dst`` is replaced atomically. ``header`` is
    :func:`read_header` of ``src`` when the caller has it already (it is re-read if the file
    changed since); it is modified in place.

    How pixels stay untouched: the dataset is parsed only up to the pixel data, the rules and the
    MPI act on that header, and the output is the re-encoded header followed by the source's
    remaining bytes copied verbatim (so no pixel byte passes through pydicom). That is the same
    file a full parse and re-encode gives, because the copied remainder is checked to hold only
    pixel data elements, which no rule may address (``PROTECTED_KEYWORDS``). Any other remainder
    (trailing padding, private groups after the pixels) or a deflated transfer syntax takes the
    full parse, where the pixel bytes are compared before and after. The file hash is taken from
    the bytes as they are written, not by reading the output back.

    Raises
    ------
    TransformError
        The file cannot be read or a rule cannot be applied (the caller quarantines the study
        with reason ``transform_failed``).
    """
    src, dst = Path(src), Path(dst)
    if header is None or not header.is_current(src):
        header = read_header(src)
    ds = header.dataset
    tail = _pixel_tail(src, header)
    if tail is None:
        ds = _read(src)  # the remainder is not pixels only: rules must see the whole dataset
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    original_issuer = copy.deepcopy(ds[_ISSUER]) if _ISSUER in ds else None
    pixels_before = raw_pixel_hash(ds) if tail is None else None
    changes = apply_all(ds, rules, mpi_patient_id, mpi_issuer)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            if not changes:
                _copy_hashed(fin, fout, h, None)
            else:
                record_original_attributes(ds, changes, when or datetime.now(UTC),
                                           original_issuer=original_issuer)
                if tail is None and raw_pixel_hash(ds) != pixels_before:
                    raise TransformError(f"instance {sop_uid}: pixel data changed during transform (bug)")
                if tail is not None and ds and int(max(ds.keys())) >= min(_PIXEL_TAGS):
                    raise TransformError(f"instance {sop_uid}: a change reached the pixel data (bug)")
                try:
                    if tail is None:
                        buf = BytesIO()
                        ds.save_as(buf, enforce_file_format=False)
                        data = buf.getvalue()
                    else:
                        data = _encode_header(ds)
                except Exception as exc:  # noqa: BLE001 - an encoder failure names the instance
                    raise TransformError(f"instance {sop_uid}: cannot encode transformed dataset: {exc}") from exc
                fout.write(data)
                h.update(data)
                if tail is not None:
                    fin.seek(tail)
                    _copy_hashed(fin, fout, h, header.size - tail)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    logger.info("transformed %s: %d changes", sop_uid, len(changes))
    return TransformResult(sop_instance_uid=sop_uid, path=dst, file_hash=h.hexdigest(), changes=changes)


def _copy_hashed(fin: Any, fout: Any, h: Any, length: int | None) -> None:
    """Copy ``length`` bytes (all when None) from ``fin`` to ``fout``, hashing them on the way."""
    copied = 0
    while length is None or copied < length:
        chunk = fin.read(_CHUNK if length is None else min(_CHUNK, length - copied))
        if not chunk:
            break
        fout.write(chunk)
        h.update(chunk)
        copied += len(chunk)
    if length is not None and copied != length:
        raise TransformError(f"{Path(fin.name).name}: file shrank while being transformed")


def _syntax(ds: Dataset) -> UID | None:
    """The dataset's public transfer syntax, None if absent, private or not a transfer syntax."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not isinstance(syntax, UID) or syntax.is_private or not syntax.is_transfer_syntax:
        return None
    return syntax


def _encode_header(ds: Dataset) -> bytes:
    """Preamble, file meta and ``ds`` as ``dcmwrite(enforce_file_format=False)`` writes them.

    The same calls dcmwrite makes, minus its defensive deep copy of the file meta (whose group
    length is set in place: the dataset is discarded after). Only for what :func:`_pixel_tail`
    accepted: a public, non-deflated transfer syntax matching the dataset's encoding.
    """
    syntax = _syntax(ds)
    preamble = getattr(ds, "preamble", None)
    if syntax is None or (preamble and len(preamble) != 128) or any(
            t >> 16 in (0x0000, 0x0002) for t in ds.keys()):
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=False)  # raises as it always did
        return buf.getvalue()
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = syntax.is_implicit_VR, syntax.is_little_endian
    if preamble:
        fp.write(preamble)
        fp.write(b"DICM")
    meta = getattr(ds, "file_meta", None)
    if meta:
        write_file_meta_info(fp, meta, enforce_standard=False)
    write_dataset(fp, ds)
    return fp.getvalue()


def _pixel_tail(src: Path, header: StagedHeader) -> int | None:
    """The offset of the source's remainder if it holds pixel data elements only, else None.

    Walks the element headers (and, for encapsulated pixel data, the item headers) of the bytes
    after the parsed header without reading their values.
    """
    ds = header.dataset
    syntax = _syntax(ds)
    if syntax is None or syntax == _DEFLATED or ds.original_encoding != (
            syntax.is_implicit_VR, syntax.is_little_endian):
        # deflated: the parsed offset is in the inflated stream; a file not encoded as its
        # transfer syntax says is re-encoded by pydicom, so its remainder cannot be spliced on
        return None
    implicit, little = ds.original_encoding
    end = "<" if little else ">"
    pos, size = header.tail_offset, header.size
    try:
        with src.open("rb") as fh:
            while pos < size:
                fh.seek(pos)
                head = fh.read(8)
                if len(head) < 8:
                    return None
                group, element = struct.unpack(end + "HH", head[:4])
                if (group << 16 | element) not in _PIXEL_TAGS:
                    return None
                if implicit:
                    (length,), pos = struct.unpack(end + "L", head[4:]), pos + 8
                elif head[4:6] in _LONG_VRS:
                    ext = fh.read(4)
                    if len(ext) < 4:
                        return None
                    (length,), pos = struct.unpack(end + "L", ext), pos + 12
                else:
                    (length,), pos = struct.unpack(end + "H", head[6:]), pos + 8
                if length != 0xFFFFFFFF:
                    pos += length
                    continue
                while True:  # encapsulated: items up to the sequence delimiter
                    fh.seek(pos)
                    item = fh.read(8)
                    if len(item) < 8:
                        return None
                    ig, ie, il = struct.unpack(end + "HHL", item)
                    pos += 8
                    if (ig, ie) == (0xFFFE, 0xE0DD):
                        break
                    if (ig, ie) != (0xFFFE, 0xE000) or il == 0xFFFFFFFF:
                        return None
                    pos += il
    except OSError:
        return None
    return header.tail_offset if pos == size else None



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
