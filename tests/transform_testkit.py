"""Datasets for the transform tests: small images with vendor private blocks in chosen slots."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

#: (group, slot, creator, [(offset, vr, value), ...])
Block = tuple[int, int, str, list[tuple[int, str, object]]]


def make_dataset(*, modality: str = "CT", manufacturer: str = "SIEMENS", blocks: Iterable[Block] = (),
                 transfer_syntax: str = ExplicitVRLittleEndian, seed: int = 0, **attrs: object) -> Dataset:
    """A 4x4 16-bit image with file meta; ``blocks`` go exactly in the slots given."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"sop{seed}"])
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study{seed}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series{seed}"])
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P001"
    ds.StudyDate = "20200131"
    ds.StudyTime = "101500"
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    for key, value in attrs.items():
        setattr(ds, key, value)
    for group, slot, creator, elements in blocks:
        ds.add(DataElement((group << 16) | slot, "LO", creator))
        for offset, vr, value in elements:
            ds.add(DataElement((group << 16) | (slot << 8) | offset, vr, value))
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = rng.integers(0, 4096, (4, 4), dtype=np.uint16).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write as a Part-10 file in the dataset's transfer syntax."""
    ds.save_as(path, enforce_file_format=True)
    return path


def private_values(ds: Dataset) -> dict[tuple[str, int, int], object]:
    """Every private element as ``(creator, group, offset) -> value`` (slot-independent)."""
    out: dict[tuple[str, int, int], object] = {}
    for element in ds:
        tag = element.tag
        if tag.is_private and not tag.is_private_creator and element.private_creator:
            value = element.value
            out[(element.private_creator, tag.group, tag.element & 0xFF)] = (
                value if isinstance(value, bytes | str | int | float) else str(value))
    return out
