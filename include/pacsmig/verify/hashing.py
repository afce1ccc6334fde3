"""Pixel and byte hashes of DICOM instances: what proves an image on the target is the source's.

The pixel hash is transfer-syntax independent: per frame, the decoded pixel array in C order with
its dtype and shape, concatenated, sha256. A lossless transcode keeps it; a lossy one changes it.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from pacsmig.errors import VerifyError

_LITTLE = sys.byteorder == "little"

#: Hash recorded for an instance with no PixelData (SR, KO, PR ...): the empty string's hash
#: would collide with a real empty image, so a named marker is used.
NO_PIXELS = "no-pixel-data"


@dataclass(frozen=True)
class InstanceHashes:
    """The hashes and facts recorded for one instance."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number_of_frames: int
    pixel_hash: str
    raw_hash: str
    file_hash: str
    size_bytes: int


def _read(source: bytes | Path | Dataset) -> tuple[Dataset, bytes | None]:
    if isinstance(source, Dataset):
        return source, None
    data = source.read_bytes() if isinstance(source, Path) else source
    return pydicom.dcmread(BytesIO(data), force=True), data


def pixel_hash(ds: Dataset) -> str:
    """sha256 over the decoded frames (C order, dtype and shape included)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return NO_PIXELS
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - every decoder failure is the same finding
        raise VerifyError(f"cannot decode pixels of {ds.get('SOPInstanceUID', '?')}: {exc}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    h = hashlib.sha256()
    if frames > 1 and arr.shape[0] == frames:
        parts = [arr[i] for i in range(frames)]
    else:
        parts = [arr]
    for frame in parts:
        # Byte order is an encoding detail (Big Endian files, transcodes): hash little-endian values.
        if frame.dtype.byteorder == ">" or (frame.dtype.byteorder == "=" and frame.dtype.itemsize > 1
                                            and not _LITTLE):
            frame = frame.astype(frame.dtype.newbyteorder("<"))
        h.update(f"{frame.dtype.str}{frame.shape}".encode())
        h.update(frame.tobytes(order="C"))
    return h.hexdigest()


def raw_pixel_hash(ds: Dataset) -> str:
    """sha256 of the PixelData element value as stored (encapsulated or native)."""
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            value = ds[keyword].value
            return hashlib.sha256(value if isinstance(value, bytes) else bytes(value)).hexdigest()
    return NO_PIXELS


def hash_instance(source: bytes | Path | Dataset) -> InstanceHashes:
    """All hashes of one instance (raises :class:`VerifyError` if its pixels cannot be decoded)."""
    ds, data = _read(source)
    tsuid = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "") if hasattr(ds, "file_meta") else ""
    return InstanceHashes(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        transfer_syntax_uid=tsuid,
        number_of_frames=int(ds.get("NumberOfFrames", 1) or 1) if "PixelData" in ds else 0,
        pixel_hash=pixel_hash(ds),
        raw_hash=raw_pixel_hash(ds),
        file_hash=hashlib.sha256(data).hexdigest() if data is not None else "",
        size_bytes=len(data) if data is not None else 0,
    )
