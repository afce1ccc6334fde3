"""The benchmark's archive: a generated hospital archive in a legacy Orthanc with inventory and crosswalk."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.generator import GroundTruth, generate
from testbed.orthanc import OrthancServer

#: Sizes per profile: studies, images_scale, matrix (px), min images per CT/MR study.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"studies": 12, "images_scale": 0.5, "matrix": 128, "min_images_ct_mr": 50},
    "default": {"studies": 40, "images_scale": 2.0, "matrix": 256, "min_images_ct_mr": 50},
}


@dataclass
class BenchArchive:
    """The generated archive and where it lives."""

    truth: GroundTruth
    root: Path
    inventory_path: Path
    crosswalk_path: Path
    files: list[Path]
    generate_s: float
    upload_s: float

    @property
    def n_instances(self) -> int:
        return self.truth.n_instances

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def build_archive(
    root: Path,
    *,
    studies: int,
    images_scale: float,
    matrix: int,
    min_images_ct_mr: int,
    seed: int = 42,
    workers: int = 2,
) -> BenchArchive:
    """Generate the archive (no real sample files: every path must move exactly the same objects).

    The real sample files share SOP Instance UIDs across transfer-syntax variants; the engine
    quarantines those as conflicts while dcmtk and Orthanc overwrite or skip them, so they would
    make the paths move different sets.
    """
    t0 = time.perf_counter()
    truth = generate(
        root / "archive",
        studies=studies,
        seed=seed,
        images_scale=images_scale,
        matrix=matrix,
        min_images_ct_mr=min_images_ct_mr,
        include_real_files=False,
        workers=workers,
    )
    generate_s = time.perf_counter() - t0
    files = sorted(Path(p) for p in truth.files)
    inventory = write_inventory(truth, root / "audit" / "inventory.parquet")
    crosswalk = write_full_crosswalk(truth, root / "mpi_crosswalk.csv")
    return BenchArchive(truth, root, inventory, crosswalk, files, generate_s, 0.0)


def upload(archive: BenchArchive, legacy: OrthancServer) -> None:
    """Store the archive in the legacy PACS (REST), checking that every file was accepted."""
    t0 = time.perf_counter()
    accepted = legacy.upload_files(archive.files, threads=4)
    archive.upload_s = time.perf_counter() - t0
    if accepted != len(archive.files) or legacy.count() != archive.n_instances:
        raise RuntimeError(
            f"legacy PACS accepted {accepted} of {len(archive.files)} files "
            f"({legacy.count()} instances held, {archive.n_instances} expected)"
        )


def write_inventory(truth: GroundTruth, path: Path) -> Path:
    """The inventory ``pacs_audit`` would write, from the ground truth (the audit is not benchmarked here)."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        [
            {
                "study_instance_uid": s.study_instance_uid,
                "patient_id": s.patient_id,
                "issuer_of_patient_id": s.issuer_of_patient_id,
                "patient_name": s.patient_name,
                "patient_birth_date": s.patient_birth_date,
                "study_date": pd.Timestamp(s.study_date).date() if s.study_date else None,
                "accession_number": s.accession_number,
                "modalities": "\\".join(s.modalities),
                "n_series": s.n_series,
                "n_instances": s.n_instances,
            }
            for s in truth.studies
        ]
    ).to_parquet(path)
    return path


def write_full_crosswalk(truth: GroundTruth, path: Path) -> Path:
    """A crosswalk that maps every identity, so no study is held and all paths move every study.

    The generator leaves some patients out of its crosswalk on purpose (to exercise ``held``);
    those get a synthetic MPI id here.
    """
    rows: dict[tuple[str, str], str] = {}
    for n, s in enumerate(truth.studies):
        key = (s.issuer_of_patient_id or "", s.patient_id)
        rows.setdefault(key, s.mpi_patient_id or f"MPIBENCH{n:06d}")
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["issuer_of_patient_id", "patient_id", "mpi_patient_id"])
        writer.writerows([issuer, pid, mpi] for (issuer, pid), mpi in sorted(rows.items()))
    return path
