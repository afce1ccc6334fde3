"""Decide whether the object a target already holds is the object we are about to store.

Targets answer "success" for a different object with a known SOP Instance UID (Orthanc with
``OverwriteInstances`` false), so an existing instance is judged by content, never by status:

1. identical bytes (sha256 of the whole Part-10 file) -> same;
2. otherwise the target may have re-serialised the file (another File Meta group, a retired
   transfer syntax such as Explicit VR Big Endian converted on receipt): then the decoded pixels
   must hash the same (:func:`pacsmig.verify.hashing.pixel_hash`, transfer-syntax independent)
   and every data element of ours must be at the target with an equal value.

What the target may legitimately differ in, and is therefore ignored: the File Meta group
(0002,xxxx), group lengths, dataset trailing padding (FFFC,FFFC), the query/retrieve attributes
RetrieveAETitle and InstanceAvailability, and private elements present only at the target (an
archive's own bookkeeping). An element of ours missing or changed at the target is a conflict.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRBigEndian

from pacsmig.errors import VerifyError
from pacsmig.verify.hashing import PIXEL_DATA_ELEMENTS, pixel_hash, raw_pixel_hash

_PIXEL_TAGS = frozenset(Tag(t) for t in PIXEL_DATA_ELEMENTS)
_IGNORED = {Tag(0xFFFC, 0xFFFC), Tag(0x0008, 0x0054), Tag(0x0008, 0x0056)}
#: Differences listed in a detail at most (the rest are counted), to keep custody entries short.
_MAX_LISTED = 8


@dataclass(frozen=True)
class Comparison:
    """The verdict on one (ours, theirs) pair; ``detail`` names tags, never values."""

    same: bool
    detail: str


def sha256(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def _name(tag: BaseTag) -> str:
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def _big_endian(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return meta is not None and meta.get("TransferSyntaxUID") == ExplicitVRBigEndian


def _values_equal(ours: DataElement, theirs: DataElement, swap: bool) -> bool:
    if ours.value == theirs.value:
        return True
    a, b = ours.value, theirs.value
    if isinstance(a, bytes) and isinstance(b, bytes):
        # OW/OF/UN values stay in the file's byte order; a big-endian file converted to little
        # endian by the target holds the same words swapped.
        if swap and ours.VR in ("OW", "US or OW") and len(a) == len(b) and len(a) % 2 == 0:
            return a == b"".join(b[i + 1:i + 2] + b[i:i + 1] for i in range(0, len(b), 2))
        return a.rstrip(b"\x00 ") == b.rstrip(b"\x00 ")
    return False


def dataset_differences(ours: Dataset, theirs: Dataset, swap: bool = False, prefix: str = "") -> list[str]:
    """Names of our data elements that are missing or different at the target (pixels excluded)."""
    out: list[str] = []
    for tag in sorted(set(ours.keys()) | set(theirs.keys())):
        if tag.group == 0x0002 or tag.element == 0x0000 or tag in _PIXEL_TAGS or tag in _IGNORED:
            continue
        name = prefix + _name(tag)
        if tag not in theirs:
            out.append(f"{name} missing at target")
            continue
        if tag not in ours:
            if not tag.is_private:
                out.append(f"{name} added by target")
            continue
        mine, other = ours[tag], theirs[tag]
        if mine.VR == "SQ" or other.VR == "SQ":
            if mine.VR != other.VR or len(mine.value) != len(other.value):
                out.append(f"{name} item count differs")
                continue
            for i, (a, b) in enumerate(zip(mine.value, other.value, strict=True)):
                out.extend(dataset_differences(a, b, swap, f"{name}[{i}]."))
        elif not _values_equal(mine, other, swap):
            out.append(f"{name} differs")
    return out


def _arrays_equal(ours: Dataset, theirs: Dataset) -> bool:
    """Decoded pixels equal up to byte order (Explicit VR Big Endian decodes to '>i2' arrays)."""
    try:
        a, b = ours.pixel_array, theirs.pixel_array
    except Exception:  # noqa: BLE001 - already known decodable; any failure means not provable
        return False
    native_a = a.astype(a.dtype.newbyteorder("="), copy=False)
    native_b = b.astype(b.dtype.newbyteorder("="), copy=False)
    return bool(native_a.dtype == native_b.dtype and native_a.shape == native_b.shape
                and np.array_equal(native_a, native_b))


def _pixels_same(ours: Dataset, theirs: Dataset) -> tuple[bool, str]:
    try:
        mine, other = pixel_hash(ours), pixel_hash(theirs)
    except VerifyError as exc:
        # Without a decoder only identical encoded pixels can prove sameness.
        if raw_pixel_hash(ours) == raw_pixel_hash(theirs):
            return True, "pixel data bytes identical (not decodable here)"
        return False, f"pixels not comparable: {exc}"
    if mine == other:
        return True, f"pixel hash {mine[:16]}"
    if _arrays_equal(ours, theirs):
        return True, "decoded pixels equal (byte order differs)"
    return False, "pixel hash differs"


def compare_instances(ours: bytes, theirs: bytes) -> Comparison:
    """Compare the Part-10 bytes we hold with the bytes the target returned for the same SOP UID."""
    if sha256(ours) == sha256(theirs):
        return Comparison(True, f"identical bytes sha256={sha256(ours)[:16]}")
    try:
        mine = pydicom.dcmread(BytesIO(ours), force=True)
        other = pydicom.dcmread(BytesIO(theirs), force=True)
    except Exception as exc:  # noqa: BLE001 - an unparsable answer can prove nothing
        return Comparison(False, f"target object unreadable: {type(exc).__name__}")
    if mine.get("SOPInstanceUID") != other.get("SOPInstanceUID"):
        return Comparison(False, "target returned another SOP Instance UID")
    pixels_ok, pixel_detail = _pixels_same(mine, other)
    diffs = dataset_differences(mine, other, swap=_big_endian(mine) != _big_endian(other))
    if pixels_ok and not diffs:
        return Comparison(True, f"re-serialised by target, same content ({pixel_detail})")
    problems = ([] if pixels_ok else [pixel_detail]) + diffs
    listed = "; ".join(problems[:_MAX_LISTED])
    more = f"; +{len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return Comparison(False, f"different object under the same SOP UID: {listed}{more}")
