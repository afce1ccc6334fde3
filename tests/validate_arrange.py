"""Test helper for Phase 4: a small synthetic archive and a "migrated" ledger state without the pipeline.

Files are made with pydicom (CT, MR, US cine, breast tomosynthesis, KO), uploaded to real Orthanc
servers, and recorded in the ledger the way the pipeline records them (hashes from
``hash_instance`` of the staged source files, custody entries for the transform's changes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacsmig.ledger import Ledger, StudyState
from pacsmig.verify.hashing import hash_instance

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
TOMO = "1.2.840.10008.5.1.4.1.1.13.1.3"
KO = "1.2.840.10008.5.1.4.1.1.88.59"
ROOT = "1.2.826.0.1.3680043.10.1234."


@dataclass
class Inst:
    path: Path
    study: str
    series: str
    sop: str
    sop_class: str


@dataclass
class Archive:
    """The generated source files, by study key."""

    root: Path
    studies: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> uid/date/modality/patient
    instances: dict[str, list[Inst]] = field(default_factory=dict)  # key -> instances

    @property
    def files(self) -> list[Path]:
        return [i.path for insts in self.instances.values() for i in insts]

    def all(self) -> list[Inst]:
        return [i for insts in self.instances.values() for i in insts]


def _base(
    sop_class: str,
    study: str,
    series: str,
    sop: str,
    patient: str,
    study_date: str,
    modality: str,
    number: int,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = (
        patient,
        f"TEST^{patient}",
        "19700101",
        "O",
    )
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = study_date, "101010", f"ACC{study[-6:]}"
    ds.Modality, ds.StudyDescription, ds.SeriesNumber, ds.InstanceNumber = modality, "TEST", 1, number
    ds.StudyID, ds.Manufacturer = "1", "PACSMIG-TEST"
    return ds


def _pixels(ds: Dataset, arr: np.ndarray, frames: int = 1) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape[-2], arr.shape[-1]
    bits = 16 if arr.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = arr.tobytes()


def make_archive(root: Path, seed: int = 5) -> Archive:
    """Four studies: CT (3 images), MR (2 images + KO), US cine (1 multi-frame), tomosynthesis."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    archive = Archive(root)
    specs = [
        ("ct", "CT", "20240105", "PAT1"),
        ("mr", "MR", "20230601", "PAT2"),
        ("us", "US", "20240210", "PAT1"),
        ("tomo", "MG", "20220314", "PAT3"),
    ]
    for key, modality, day, patient in specs:
        study = generate_uid(ROOT)
        series = generate_uid(ROOT)
        archive.studies[key] = {"uid": study, "date": day, "modality": modality, "patient": patient}
        insts: list[Inst] = []

        def write(ds: Dataset, name: str, key: str = key, insts: list[Inst] = insts) -> None:
            path = root / f"{key}_{name}.dcm"
            ds.save_as(path, enforce_file_format=True)
            insts.append(
                Inst(path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)
            )

        if key in ("ct", "mr"):
            n = 3 if key == "ct" else 2
            for i in range(1, n + 1):
                ds = _base(
                    CT if key == "ct" else MR, study, series, generate_uid(ROOT), patient, day, modality, i
                )
                _pixels(ds, rng.integers(0, 4000, (32, 32), dtype=np.uint16))
                ds.ImagePositionPatient = [0, 0, float(i * 2)]
                ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
                ds.PixelSpacing = [0.5, 0.5]
                ds.WindowCenter, ds.WindowWidth = 40, 400
                write(ds, f"img{i}")
            if key == "mr":
                ko = _base(KO, study, generate_uid(ROOT), generate_uid(ROOT), patient, day, "KO", 1)
                ref = Dataset()
                ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = insts[0].sop_class, insts[0].sop
                ser = Dataset()
                ser.SeriesInstanceUID, ser.ReferencedSOPSequence = series, Sequence([ref])
                ev = Dataset()
                ev.StudyInstanceUID, ev.ReferencedSeriesSequence = study, Sequence([ser])
                ko.CurrentRequestedProcedureEvidenceSequence = Sequence([ev])
                ko.ValueType = "CONTAINER"
                write(ko, "ko")
        elif key == "us":
            ds = _base(US_MULTIFRAME, study, series, generate_uid(ROOT), patient, day, modality, 1)
            _pixels(ds, rng.integers(0, 255, (4, 64, 64), dtype=np.uint8), frames=4)
            ds.FrameTime, ds.CineRate = 33.3, 30
            ds.FrameIncrementPointer = 0x00181063
            write(ds, "cine")
        else:
            ds = _base(TOMO, study, series, generate_uid(ROOT), patient, day, modality, 1)
            _pixels(ds, rng.integers(0, 1000, (3, 16, 16), dtype=np.uint16), frames=3)
            write(ds, "tomo")
        archive.instances[key] = insts
    return archive


def record_migrated(
    dsn: str,
    archive: Archive,
    state: StudyState = StudyState.LOADED,
    changes: dict[str, list[dict]] | None = None,
    skip: set[str] = frozenset(),
) -> None:
    """Write studies / instances rows as the pipeline leaves them after ``loaded``, plus custody.

    ``changes`` maps SOP UID -> recorded transform changes (custody ``transformed`` entries);
    SOP UIDs in ``skip`` get no instances row (an instance the pipeline never saw).
    """
    changes = changes or {}
    with Ledger(dsn) as ledger:
        for key, info in archive.studies.items():
            with ledger.transaction() as cur:
                cur.execute(
                    "INSERT INTO studies (study_instance_uid, patient_id, accession_number, study_date, "
                    "modalities, expected_instances, state) VALUES (%s, %s, %s, %s, %s, %s, 'discovered')",
                    (
                        info["uid"],
                        info["patient"],
                        f"ACC{info['uid'][-6:]}",
                        date(int(info["date"][:4]), int(info["date"][4:6]), int(info["date"][6:])),
                        info["modality"],
                        len(archive.instances[key]),
                    ),
                )
                for inst in archive.instances[key]:
                    if inst.sop in skip:
                        continue
                    h = hash_instance(inst.path)
                    cur.execute(
                        "INSERT INTO instances (study_instance_uid, sop_instance_uid, series_instance_uid, "
                        "sop_class_uid, transfer_syntax_uid, size_bytes, number_of_frames, "
                        "source_pixel_hash, source_raw_hash, source_file_hash, staged_path, target_status, "
                        "target_ack, loaded_at) "
                        "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,'loaded',%s, now())",
                        (
                            inst.study,
                            inst.sop,
                            inst.series,
                            inst.sop_class,
                            h.transfer_syntax_uid,
                            h.size_bytes,
                            h.number_of_frames,
                            h.pixel_hash,
                            h.raw_hash,
                            h.file_hash,
                            str(inst.path),
                            json.dumps({"status": "stored", "detail": "HTTP 200"}),
                        ),
                    )
                    ledger.append_custody(
                        cur, inst.study, "extracted", {"sop_instance_uid": inst.sop, "file_hash": h.file_hash}
                    )
                    if inst.sop in changes:
                        ledger.append_custody(
                            cur,
                            inst.study,
                            "transformed",
                            {"sop_instance_uid": inst.sop, "changes": changes[inst.sop]},
                        )
                    ledger.append_custody(
                        cur, inst.study, "loaded", {"sop_instance_uid": inst.sop, "ack": "stored"}
                    )
            for s in (
                StudyState.QUEUED,
                StudyState.EXTRACTING,
                StudyState.EXTRACTED,
                StudyState.TRANSFORMED,
                StudyState.LOADED,
            ):
                ledger.set_state(info["uid"], s)
                if s == state:
                    break
            if state not in (
                StudyState.QUEUED,
                StudyState.EXTRACTING,
                StudyState.EXTRACTED,
                StudyState.TRANSFORMED,
                StudyState.LOADED,
            ):
                ledger.set_state(info["uid"], state)


def orthanc_id(server_url: str, sop_uid: str) -> str:
    """Orthanc's internal ID of an instance."""
    found = requests.post(f"{server_url}/tools/lookup", data=sop_uid, timeout=10).json()
    return next(f["ID"] for f in found if f["Type"] == "Instance")


def delete_instance(server_url: str, sop_uid: str) -> None:
    requests.delete(
        f"{server_url}/instances/{orthanc_id(server_url, sop_uid)}", timeout=10
    ).raise_for_status()


def replace_instance(server_url: str, sop_uid: str, data: bytes) -> None:
    """Delete the instance and upload other bytes under the same UIDs (how a target is tampered)."""
    delete_instance(server_url, sop_uid)
    requests.post(f"{server_url}/instances", data=data, timeout=30).raise_for_status()


def dataset_bytes(ds: Dataset) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)
