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
from pydicom.uid import UID

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


#: The pixel data elements, tag -> keyword, in the order they are looked for.
PIXEL_DATA_ELEMENTS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}


def pixel_keyword(ds: Dataset) -> str | None:
    """The keyword of the dataset's pixel data element, or None if it has none."""
    return next((kw for kw in PIXEL_DATA_ELEMENTS.values() if kw in ds), None)


def pixel_hash(ds: Dataset) -> str:
    """sha256 over the decoded frames (C order, dtype and shape included)."""
    if pixel_keyword(ds) is None:
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
    keyword = pixel_keyword(ds)
    if keyword is None:
        return NO_PIXELS
    value = ds[keyword].value
    return hashlib.sha256(value if isinstance(value, bytes) else bytes(value)).hexdigest()


#: Image Pixel elements pydicom reads to decode (``pydicom.pixels.utils.as_pixel_options``),
#: plus the Extended Offset Table that locates encapsulated frames.
DECODE_TAGS = (0x00280002, 0x00280004, 0x00280006, 0x00280008, 0x00280010, 0x00280011, 0x00280100,
               0x00280101, 0x00280103, 0x7FE00001, 0x7FE00002)


def pixel_decode_inputs(ds: Dataset) -> tuple[tuple[int, str], ...]:
    """Every header value besides the pixel bytes and transfer syntax that :func:`pixel_hash` depends on.

    Two datasets with equal ``pixel_decode_inputs``, the same transfer syntax and the same pixel
    element (keyword and bytes) decode to the same frames, hence the same pixel hash. Values are
    compared parsed (so implicit and explicit VR encodings of one value agree); a value that
    cannot be parsed is compared by its stored bytes.
    """
    out = []
    for tag in DECODE_TAGS:
        if tag not in ds:
            continue
        try:
            elem = ds[tag]
            value = elem.value
            text = bytes(value).hex() if isinstance(value, bytes | bytearray) else repr(value)
            out.append((tag, f"{elem.VR}:{text}"))
        except Exception:  # noqa: BLE001 - an unparsable value is compared as stored
            raw = ds.get_item(tag)
            out.append((tag, f"raw:{bytes(raw.value or b'').hex()}"))
    return tuple(out)


def hash_instance(source: bytes | Path | Dataset) -> InstanceHashes:
    """All hashes of one instance (raises :class:`VerifyError` if its pixels cannot be decoded)."""
    ds, data = _read(source)
    return _hashes(ds, data)


def hashes_if_native(ds: Dataset, data: bytes) -> InstanceHashes | None:
    """:func:`hash_instance` of Part 10 ``data`` already parsed as ``ds``, unless it needs a decoder.

    The storage SCP has the received bytes parsed anyway; for native (uncompressed) pixels the
    hashes cost little more there and save :func:`hash_instance` a second read and parse. For
    compressed pixels it returns None: decoding is left to the (parallel) extract step. The result
    equals ``hash_instance(data)``: the same functions applied to the same bytes.
    """
    tsuid = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "") if hasattr(ds, "file_meta") else ""
    uid = UID(tsuid)
    if not uid.is_transfer_syntax or ("PixelData" in ds and uid.is_compressed):
        return None
    return _hashes(ds, data)


def _hashes(ds: Dataset, data: bytes | None) -> InstanceHashes:
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
