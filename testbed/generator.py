"""A seeded synthetic hospital archive (DICOM Part-10 files) plus the ground truth to check a migration by."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import uuid
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from testbed import privates as pv

#: Dates are spread back from this fixed day so a seed gives the same archive on any day.
ANCHOR_DATE = date(2024, 12, 31)
ARCHIVE_YEARS = 15
HOSPITAL_ISSUER = "HOSP_A"
CLINIC_ISSUER = "CLINIC_B"
#: The clinic was acquired this many days before the anchor; its studies predate that.
CLINIC_ACQUIRED_DAYS_AGO = 6 * 365
#: At ``images_scale=1`` stack series hold this fraction of clinical image counts (CT 2-5 series of
#: 30-300 images), which keeps a 40-study archive near 1000 instances; ``images_scale=5`` is clinical.
CLINICAL_FRACTION = 0.2
#: Real sample files need this many studies before they are mixed in (they take study slots).
REAL_FILES_MIN_STUDIES = 20

CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
MG_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1.2")
BREAST_TOMO = UID("1.2.840.10008.5.1.4.1.1.13.1.3")
US_IMAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
US_MULTIFRAME = UID("1.2.840.10008.5.1.4.1.1.3.1")
XA_IMAGE = UID("1.2.840.10008.5.1.4.1.1.12.1")
NM_IMAGE = UID("1.2.840.10008.5.1.4.1.1.20")

_UID_NAMESPACE = uuid.UUID("5b2c6a8e-3f1d-5e7a-9c40-7d1e2f3a4b5c")

MODALITIES = ("CT", "MR", "CR", "DX", "MG", "US", "XA", "NM")
#: Study mix of a general hospital (plain film dominates, then CT, US, MR).
MODALITY_WEIGHTS = {"CR": 0.20, "DX": 0.16, "CT": 0.17, "MR": 0.12, "US": 0.14, "MG": 0.10,
                    "XA": 0.04, "NM": 0.07}


# --- ground truth ---------------------------------------------------------------------------
@dataclass
class StudyTruth:
    """What one study in the archive is, computed from the files written (or read, for real ones)."""

    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str | None
    patient_name: str
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    accession_number: str | None
    modalities: list[str]
    n_series: int
    n_instances: int
    bytes: int
    manufacturer: str | None
    model: str | None
    complex_kind: str | None
    mpi_patient_id: str | None
    series: list[tuple[str, str, int]]
    instances: list[str]
    #: Paths of the study's files relative to the archive root.
    files: list[str] = field(default_factory=list)
    #: ``"synthetic"`` or the real sample file's name.
    source: str = "synthetic"
    transfer_syntaxes: list[str] = field(default_factory=list)
    #: Bytes per series, in the order of ``series``.
    series_bytes: list[int] = field(default_factory=list)


@dataclass
class GroundTruth:
    """The archive on disk and everything a migration of it must reproduce."""

    root: Path
    files: list[Path]
    crosswalk_path: Path
    studies: list[StudyTruth]
    unmatched_patients: list[tuple[str, str]] = field(default_factory=list)
    private_elements: set[tuple[str, int, int]] = field(default_factory=set)
    seed: int = 0
    params: dict[str, object] = field(default_factory=dict)

    @property
    def n_studies(self) -> int:
        return len(self.studies)

    @property
    def n_series(self) -> int:
        return sum(s.n_series for s in self.studies)

    @property
    def n_instances(self) -> int:
        return sum(s.n_instances for s in self.studies)

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.studies)

    def study(self, study_instance_uid: str) -> StudyTruth:
        """The study with this UID (KeyError if absent)."""
        for s in self.studies:
            if s.study_instance_uid == study_instance_uid:
                return s
        raise KeyError(study_instance_uid)

    def study_files(self, study_instance_uid: str) -> list[Path]:
        """Absolute paths of one study's files."""
        return [self.root / p for p in self.study(study_instance_uid).files]

    def by_modality(self) -> dict[str, dict[str, int]]:
        """Counts per modality; a study counts under each of its modalities, its series/instances
        and bytes under the modality of each series."""
        out: dict[str, dict[str, int]] = {}
        for s in self.studies:
            sizes = s.series_bytes or _series_bytes(self.root, s)
            for mod in s.modalities:
                row = out.setdefault(mod, {"studies": 0, "instances": 0, "series": 0, "bytes": 0})
                row["studies"] += 1
            for (_, mod, n), size in zip(s.series, sizes, strict=True):
                row = out.setdefault(mod, {"studies": 0, "instances": 0, "series": 0, "bytes": 0})
                row["series"] += 1
                row["instances"] += n
                row["bytes"] += size
        return dict(sorted(out.items()))

    @property
    def expected_id_issues(self) -> dict[str, list]:
        """Patient-identity problems an audit must find, derived from the studies' own headers.

        ``same_id_different_demographics``: Patient IDs carried by more than one (name, birth date,
        sex). ``same_demographics_different_ids``: people (same name, birth date and sex) filed
        under more than one (issuer, Patient ID), each as a sorted list of pairs.
        """
        by_id: dict[str, set[tuple]] = defaultdict(set)
        by_person: dict[tuple, set[tuple[str, str]]] = defaultdict(set)
        for s in self.studies:
            demo = (s.patient_name, s.patient_birth_date or "", s.patient_sex or "")
            by_id[s.patient_id].add(demo)
            if s.patient_name:
                by_person[demo].add((s.issuer_of_patient_id or "", s.patient_id))
        return {
            "same_id_different_demographics": sorted(pid for pid, d in by_id.items() if len(d) > 1),
            "same_demographics_different_ids": sorted(sorted(ids) for ids in by_person.values()
                                                      if len(ids) > 1),
        }

    def crosswalk(self) -> dict[tuple[str, str], str]:
        """The MPI crosswalk as written: ``(issuer or "", patient_id) -> mpi_patient_id``."""
        return read_crosswalk(self.crosswalk_path)

    def save(self) -> Path:
        """Write ``ground_truth.json`` under the root (paths relative to it) and return its path."""
        body = {
            "seed": self.seed,
            "params": self.params,
            "anchor_date": ANCHOR_DATE.isoformat(),
            "files": [str(p.relative_to(self.root)) for p in self.files],
            "crosswalk_path": str(self.crosswalk_path.relative_to(self.root)),
            "unmatched_patients": [list(p) for p in self.unmatched_patients],
            "private_elements": sorted([list(p) for p in self.private_elements]),
            "studies": [asdict(s) for s in self.studies],
        }
        path = self.root / "ground_truth.json"
        path.write_text(json.dumps(body, indent=1, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, root: Path | str) -> GroundTruth:
        """Read a ground truth written by :meth:`save` (the archive may have been moved)."""
        root = Path(root)
        body = json.loads((root / "ground_truth.json").read_text(encoding="utf-8"))
        studies = []
        for raw in body["studies"]:
            raw["series"] = [tuple(x) for x in raw["series"]]
            studies.append(StudyTruth(**raw))
        return cls(
            root=root,
            files=[root / p for p in body["files"]],
            crosswalk_path=root / body["crosswalk_path"],
            studies=studies,
            unmatched_patients=[tuple(p) for p in body["unmatched_patients"]],
            private_elements={(c, int(g), int(o)) for c, g, o in body["private_elements"]},
            seed=int(body.get("seed", 0)),
            params=dict(body.get("params", {})),
        )


def _series_bytes(root: Path, s: StudyTruth) -> list[int]:
    """Bytes per series of a study, from the files on disk (the ground truth keeps only study totals)."""
    if len(s.series) == 1:
        return [s.bytes]
    uid_index = {uid: i for i, (uid, _, _) in enumerate(s.series)}
    sizes = [0] * len(s.series)
    for rel in s.files:
        ds = pydicom.dcmread(root / rel, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        sizes[uid_index[str(ds.SeriesInstanceUID)]] += (root / rel).stat().st_size
    return sizes


def read_crosswalk(path: Path) -> dict[tuple[str, str], str]:
    """Read an MPI crosswalk CSV into ``{(issuer or "", patient_id): mpi_patient_id}``."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {(r["issuer_of_patient_id"], r["patient_id"]): r["mpi_patient_id"] for r in csv.DictReader(fh)}


# --- devices --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """One imaging device in the hospital: what it writes in its headers and how it encodes."""

    modality: str
    manufacturer: str
    model: str
    station: str
    software: str
    serial: str
    blocks: tuple[pv.PrivateBlock, ...] = ()
    #: Transfer syntaxes the device (or the PACS, for what it received) stores, with weights.
    syntaxes: tuple[tuple[str, float], ...] = ((ExplicitVRLittleEndian, 0.4), (ImplicitVRLittleEndian, 0.25),
                                               (RLELossless, 0.2), (JPEG2000Lossless, 0.15))


_GRAY_TS = ((ExplicitVRLittleEndian, 0.35), (ImplicitVRLittleEndian, 0.25), (RLELossless, 0.2),
            (JPEG2000Lossless, 0.2))
#: Colour ultrasound stays off JPEG 2000: its lossless colour path rewrites the photometric model.
_COLOR_TS = ((ExplicitVRLittleEndian, 0.45), (ImplicitVRLittleEndian, 0.25), (RLELossless, 0.3))

DEVICES: dict[str, tuple[Device, ...]] = {
    "CT": (Device("CT", "GE MEDICAL SYSTEMS", "LightSpeed VCT", "CTGE01", "07MW18.4", "GE7731", pv.GE_CT,
                  _GRAY_TS),
           Device("CT", "SIEMENS", "SOMATOM Definition AS", "CTSIE02", "syngo CT 2012B", "64021",
                  pv.SIEMENS_CT, _GRAY_TS)),
    "MR": (Device("MR", "SIEMENS", "Avanto", "MRSIE01", "syngo MR B17", "25641", pv.SIEMENS_MR, _GRAY_TS),
           Device("MR", "Philips Medical Systems", "Achieva", "MRPHI02", "5.1.7", "46011", pv.PHILIPS_MR,
                  _GRAY_TS)),
    "CR": (Device("CR", "GE MEDICAL SYSTEMS", "Definium AMX 700", "CRGE01", "dm_Platform_release_AMX",
                  "AMX4410", pv.GE_DX, _GRAY_TS),
           Device("CR", "FUJIFILM Corporation", "FCR PROFECT CS", "CRFUJI02", "A08", "FCR5521", (),
                  _GRAY_TS)),
    "DX": (Device("DX", "GE Healthcare", "Discovery XR656", "DXGE01", "DXR_5.2", "XR6561", pv.GE_DX,
                  _GRAY_TS),
           Device("DX", "Philips Medical Systems", "DigitalDiagnost", "DXPHI02", "4.3.5", "DD9982", (),
                  _GRAY_TS)),
    "MG": (Device("MG", "HOLOGIC, Inc.", "Selenia Dimensions", "MGHOL01", "1.8.4", "SD0411", pv.HOLOGIC_MG,
                  _GRAY_TS),),
    "US": (Device("US", "Philips Medical Systems", "EPIQ 7G", "USPHI01", "5.0.2", "US7G01", pv.PHILIPS_US,
                  _COLOR_TS),
           Device("US", "GE Healthcare", "LOGIQ E9", "USGE02", "R6.1.0", "LE9902", (), _COLOR_TS)),
    "XA": (Device("XA", "SIEMENS", "AXIOM-Artis", "XASIE01", "VC21C", "14402", pv.SIEMENS_XA, _GRAY_TS),),
    "NM": (Device("NM", "SIEMENS", "Symbia T16", "NMSIE01", "syngo MI 32B", "1198", pv.SIEMENS_NM, _GRAY_TS),
           Device("NM", "GE MEDICAL SYSTEMS", "Infinia", "NMGE02", "2.105.030", "INF301", (), _GRAY_TS)),
}

_STUDY_DESCRIPTIONS = {
    "CT": ("CT HEAD W/O CONTRAST", "CT CHEST W CONTRAST", "CT ABDOMEN PELVIS W CONTRAST", "CT ANGIO CHEST",
           "CT LUMBAR SPINE"),
    "MR": ("MR BRAIN W/WO CONTRAST", "MR KNEE RIGHT", "MR LUMBAR SPINE", "MR PROSTATE", "MR SHOULDER LEFT"),
    "CR": ("XR CHEST 2 VIEWS", "XR HAND LEFT", "XR KNEE RIGHT", "XR PELVIS"),
    "DX": ("XR CHEST PA", "XR ANKLE LEFT", "XR SPINE LUMBAR", "XR FOOT RIGHT"),
    "MG": ("MG SCREENING BILATERAL", "MG DIAGNOSTIC BILATERAL"),
    "US": ("US ABDOMEN COMPLETE", "US THYROID", "US OB 2ND TRIMESTER", "US RENAL", "ECHO TTE"),
    "XA": ("XA CORONARY ANGIOGRAPHY", "XA CEREBRAL ANGIOGRAPHY", "XA PERIPHERAL ANGIO"),
    "NM": ("NM BONE SCAN WHOLE BODY", "NM MYOCARDIAL PERFUSION", "NM THYROID SCAN"),
}
_MR_SERIES = ("T1 SE SAG", "T2 TSE AX", "FLAIR AX", "DWI b1000", "ADC", "T1 MPRAGE", "T2 FS COR", "SWI",
              "T1 POST GD AX", "PD FS SAG")
_BODY_PART = {"CT": "CHEST", "MR": "BRAIN", "CR": "CHEST", "DX": "CHEST", "MG": "BREAST", "US": "ABDOMEN",
              "XA": "HEART", "NM": "WHOLEBODY"}

_FAMILY = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
           "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
           "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez",
           "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen",
           "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell",
           "Carter", "Roberts", "Okafor", "Kowalski", "Schmidt", "Rossi", "Novak", "Jensen", "Silva", "Kim")
_GIVEN = {"M": ("James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas",
                "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Paul", "Steven", "Andrew", "Kenneth",
                "Joshua", "Kevin", "Brian", "George", "Edward", "Ronald", "Timothy", "Jason", "Samuel"),
          "F": ("Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
                "Karen", "Nancy", "Lisa", "Betty", "Margaret", "Sandra", "Ashley", "Emily", "Donna",
                "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca", "Laura",
                "Helen")}
#: Names that need a character set: (family^given, sex, SpecificCharacterSet).
_NON_ASCII = (("Müller^Jürgen", "M", "ISO_IR 100"), ("Lefèvre^Hélène", "F", "ISO_IR 100"),
              ("Dvořák^Zdeněk", "M", "ISO_IR 192"), ("Peña^José", "M", "ISO_IR 100"),
              ("Wiśniewska^Małgorzata", "F", "ISO_IR 192"), ("Øster^Søren", "M", "ISO_IR 100"),
              ("Kovačević^Đorđe", "M", "ISO_IR 192"), ("Björk^Åsa", "F", "ISO_IR 100"))


# --- planning (main process) ------------------------------------------------------------------
@dataclass
class _Person:
    name: str
    birth_date: str
    sex: str
    charset: str | None
    mpi: str


@dataclass
class _Identity:
    person: _Person
    issuer: str
    patient_id: str
    in_crosswalk: bool = True


@dataclass
class _StudyPlan:
    index: int
    seed: int
    identity: _Identity
    modality: str
    device: Device
    complex_kind: str | None
    study_date: str | None
    study_time: str
    content_date: str
    #: None = absent; "" = present but empty; otherwise the number.
    accession: str | None
    institution: str
    uid: str


def _uid(seed: int, *parts: object) -> str:
    """A UID deterministic in the seed and the object's position: ``2.25.`` + a name-based UUID.

    (``generate_uid(prefix=None, ...)`` ignores its entropy sources and returns a random UUID.)
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(map(str, (seed, *parts)))).int}"


def _pick(rng: np.random.Generator, weighted: tuple[tuple[str, float], ...] | dict[str, float]) -> str:
    items = list(weighted.items()) if isinstance(weighted, dict) else list(weighted)
    p = np.array([w for _, w in items], dtype=float)
    return items[int(rng.choice(len(items), p=p / p.sum()))][0]


class _Registry:
    """Issues unique people, IDs and MPI ids so that no identity problem arises by accident."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.people: set[tuple[str, date, str]] = set()
        self.ids: set[tuple[str, str]] = set()
        self.mpis: set[str] = set()

    def person(self, name: str | None = None, sex: str | None = None, charset: str | None = None) -> _Person:
        rng = self.rng
        sex = sex or str(rng.choice(["M", "F"]))
        fixed = name
        while True:
            # Common names repeat across people (as in any hospital); name + birth date + sex never does.
            if fixed is None:
                name = f"{rng.choice(_FAMILY)}^{rng.choice(_GIVEN[sex])}"
                if rng.random() < 0.3:  # middle initial, as registration desks often record one
                    name += f"^{chr(65 + int(rng.integers(0, 26)))}"
            birth = date(1930, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 88)))
            key = (str(name), birth, sex)
            if key not in self.people:
                break
        self.people.add(key)
        mpi = ""
        while not mpi or mpi in self.mpis:
            mpi = f"MPI{int(rng.integers(0, 10**7)):07d}"
        self.mpis.add(mpi)
        return _Person(str(name), birth.strftime("%Y%m%d"), sex, charset, mpi)

    def identity(self, person: _Person, issuer: str, patient_id: str | None = None) -> _Identity:
        while patient_id is None or (issuer, patient_id) in self.ids:
            if issuer == HOSPITAL_ISSUER:
                patient_id = f"MRN{int(self.rng.integers(0, 10**8)):08d}"
            else:
                patient_id = f"CB-{int(self.rng.integers(0, 10**5)):05d}"
        self.ids.add((issuer, patient_id))
        return _Identity(person, issuer, patient_id)


def _plan(n: int, seed: int) -> tuple[list[_StudyPlan], list[_Identity]]:
    """Decide every synthetic study's patient, modality, device, date and dirty-data role."""
    rng = np.random.default_rng([seed, 0x5EED])
    reg = _Registry(rng)
    identities: list[_Identity] = []
    slots: list[_Identity] = []  # one entry per study

    def add(identity: _Identity, n_studies: int) -> None:
        identities.append(identity)
        slots.extend([identity] * n_studies)

    # Dirty data first, in priority order, so even a small archive carries the main cases.
    if n >= 2:  # one Patient ID on two people, told apart only by the issuer
        a = reg.identity(reg.person(), HOSPITAL_ISSUER)
        add(a, 2 if n >= 12 else 1)
        add(reg.identity(reg.person(), CLINIC_ISSUER, a.patient_id), 1)
    if n >= 4:  # one person under two IDs and issuers: one MPI id
        p = reg.person()
        add(reg.identity(p, HOSPITAL_ISSUER), 1)
        add(reg.identity(p, CLINIC_ISSUER), 1)
    for k in range(2 if n >= 12 else (1 if n >= 5 else 0)):  # deliberately absent from the crosswalk
        ident = reg.identity(reg.person(), CLINIC_ISSUER if k == 0 else HOSPITAL_ISSUER)
        ident.in_crosswalk = False
        add(ident, 1)
    n_non_ascii = min(len(_NON_ASCII), max(3, n // 12)) if n >= 8 else 0
    for name, sex, charset in _NON_ASCII[:n_non_ascii]:
        add(reg.identity(reg.person(name, sex, charset), HOSPITAL_ISSUER if rng.random() < 0.7
                         else CLINIC_ISSUER), 1)
    while len(slots) < n:
        issuer = CLINIC_ISSUER if rng.random() < 0.2 else HOSPITAL_ISSUER
        k = min(int(rng.geometric(0.55)), 4, n - len(slots))
        add(reg.identity(reg.person(), issuer), k)
    slots = slots[:n]

    # Each modality once, then the hospital's mix.
    modalities = list(MODALITIES[:n]) + [_pick(rng, MODALITY_WEIGHTS)
                                         for _ in range(max(0, n - len(MODALITIES)))]
    modalities = [modalities[i] for i in rng.permutation(n)]
    forced: set[str] = set()  # the first MG/US/CT get the complex shapes the tests rely on
    no_accession = (set(rng.choice(n, size=min(n, max(3, n // 12)), replace=False).tolist())
                    if n >= 6 else set())
    no_date = int(rng.integers(0, n)) if n >= 3 else -1

    plans = []
    span = ARCHIVE_YEARS * 365
    per_modality: dict[str, int] = defaultdict(int)
    missing_so_far = 0
    for i, (ident, mod) in enumerate(zip(slots, modalities, strict=True)):
        srng = np.random.default_rng([seed, 1, i])
        clinic = ident.issuer == CLINIC_ISSUER
        # Archives grow: recent years hold more studies (density falls linearly with age).
        lo = CLINIC_ACQUIRED_DAYS_AGO if clinic else 0
        days_ago = lo + int((span - lo) * (1 - np.sqrt(srng.random())))
        day = ANCHOR_DATE - timedelta(days=days_ago)
        kind: str | None = None
        if mod == "MG" and ("MG" not in forced or srng.random() < 0.3):
            kind = "tomosynthesis"
        elif mod == "US" and ("US" not in forced or srng.random() < 0.4):
            kind = "cine"
        elif mod == "XA":
            kind = "cine"
        elif mod in ("CT", "MR") and ("CT" not in forced and mod == "CT" or srng.random() < 0.08):
            kind = "large_series"
        forced.add(mod)
        devices = DEVICES[mod]
        # Every device of a modality shows up once before chance takes over, so each vendor's
        # private blocks are in even a small archive.
        seen = per_modality[mod]
        per_modality[mod] += 1
        device = devices[seen] if seen < len(devices) else devices[int(srng.integers(0, len(devices)))]
        if i in no_accession:
            # Alternate between absent and present-but-empty: both occur in real archives.
            accession = None if missing_so_far % 2 == 0 else ""
            missing_so_far += 1
        else:
            accession = (f"CB{int(srng.integers(0, 10**6)):06d}" if clinic
                         else f"A{int(srng.integers(0, 10**8)):08d}")
        plans.append(_StudyPlan(
            index=i, seed=seed, identity=ident, modality=mod, device=device, complex_kind=kind,
            study_date=None if i == no_date else day.strftime("%Y%m%d"),
            study_time=f"{int(srng.integers(7, 20)):02d}{int(srng.integers(0, 60)):02d}"
                       f"{int(srng.integers(0, 60)):02d}",
            content_date=day.strftime("%Y%m%d"),
            accession=accession,
            institution="Clinic B Imaging Center" if clinic else "Hospital A",
            uid=_uid(seed, "study", i),
        ))
    return plans, identities


# --- writing (worker processes) ---------------------------------------------------------------
@dataclass
class _SeriesPlan:
    modality: str
    description: str
    n_instances: int
    frames: int
    sop_class: str
    shape: str  # "image" | "tomo" | "cine" | "xa" | "nm"


def _count(rng: np.random.Generator, lo: int, hi: int, scale: float) -> int:
    return max(1, round(int(rng.integers(lo, hi + 1)) * scale))


def _plan_series(p: _StudyPlan, rng: np.random.Generator, images_scale: float,
                 min_images_ct_mr: int) -> list[_SeriesPlan]:
    """The series of one study: clinical series structure, image counts scaled for tests."""
    f = CLINICAL_FRACTION * images_scale
    mod, out = p.modality, []
    if mod == "CT":
        out.append(_SeriesPlan("CT", "Topogram", int(rng.integers(1, 3)), 1, CT_IMAGE, "image"))
        for k in range(int(rng.integers(1, 5))):
            out.append(_SeriesPlan("CT", ("Axial 5mm", "Axial 2.5mm", "Coronal MPR", "Sagittal MPR")[k],
                                   _count(rng, 30, 300, f), 1, CT_IMAGE, "image"))
        if p.complex_kind == "large_series":
            out.append(_SeriesPlan("CT", "Thin 0.625mm", _count(rng, 400, 600, f), 1, CT_IMAGE, "image"))
    elif mod == "MR":
        names = [_MR_SERIES[i] for i in rng.permutation(len(_MR_SERIES))[: int(rng.integers(4, 11))]]
        out.extend(_SeriesPlan("MR", n, _count(rng, 20, 60, f), 1, MR_IMAGE, "image") for n in names)
        if p.complex_kind == "large_series":
            out.append(_SeriesPlan("MR", "3D T1 ISO", _count(rng, 160, 240, f), 1, MR_IMAGE, "image"))
    elif mod in ("CR", "DX"):
        views = ("PA", "LAT", "OBL")[: int(rng.integers(1, 4))]
        out.extend(_SeriesPlan(mod, v, 1, 1, CR_IMAGE if mod == "CR" else DX_IMAGE, "image") for v in views)
    elif mod == "MG":
        out.append(_SeriesPlan("MG", "Screening 2D", 4, 1, MG_IMAGE, "image"))
        if p.complex_kind == "tomosynthesis":
            for side in ("R", "L")[: int(rng.integers(1, 3))]:
                out.append(_SeriesPlan("MG", f"Tomo {side}", 1, int(rng.integers(10, 31)), BREAST_TOMO,
                                       "tomo"))
    elif mod == "US":
        out.append(_SeriesPlan("US", "Images", _count(rng, 3, 10, images_scale), 1, US_IMAGE, "image"))
        if p.complex_kind == "cine":
            out.append(_SeriesPlan("US", "Cine loops", int(rng.integers(1, 3)), int(rng.integers(10, 41)),
                                   US_MULTIFRAME, "cine"))
    elif mod == "XA":
        for k in range(int(rng.integers(1, 5))):
            out.append(_SeriesPlan("XA", f"Run {k + 1}", 1, _count(rng, 8, 24, images_scale), XA_IMAGE, "xa"))
    elif mod == "NM":
        for k in range(int(rng.integers(1, 3))):
            out.append(_SeriesPlan("NM", ("Whole body", "Static")[k], 1, 2 * _count(rng, 4, 8, images_scale),
                                   NM_IMAGE, "nm"))
        if rng.random() < 0.35:  # SPECT/CT: the attenuation-correction CT in the same study
            out.append(_SeriesPlan("CT", "CTAC", _count(rng, 30, 120, f), 1, CT_IMAGE, "image"))
    if mod in ("CT", "MR") and min_images_ct_mr:
        missing = min_images_ct_mr - sum(s.n_instances for s in out)
        stacks = [s for s in out if s.n_instances > 2] or out
        for k in range(max(0, missing)):
            stacks[k % len(stacks)].n_instances += 1
    return out


def _matrix(mod: str, shape: str, matrix: int | None) -> tuple[int, int]:
    if matrix:
        return matrix, matrix
    return {"US": (48, 64), "NM": (32, 32), "XA": (64, 64), "MG": (64, 48)}.get(mod, (64, 64))


def _pixels(rng: np.random.Generator, rows: int, cols: int, frames: int, rgb: bool, bits: int,
            phase: int) -> np.ndarray:
    """A smooth phantom with noise: compressible like anatomy, distinct for every instance."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    top = (1 << bits) - 1
    out = []
    for fr in range(frames):
        cy = rows * (0.5 + 0.15 * np.sin(0.3 * (phase + fr)))
        cx = cols * (0.5 + 0.15 * np.cos(0.2 * (phase + fr)))
        body = np.exp(-(((y - cy) / (rows * 0.35)) ** 2 + ((x - cx) / (cols * 0.3)) ** 2))
        img = body * top * 0.7 + rng.normal(0, top * 0.02, (rows, cols))
        out.append(np.clip(img, 0, top))
    arr = np.stack(out)
    if rgb:
        arr = np.stack([arr, arr * 0.8, arr * 0.6], axis=-1)
    arr = arr.astype(np.uint8 if bits <= 8 else np.uint16)
    return arr if frames > 1 else arr[0]


def _base(p: _StudyPlan, s: _SeriesPlan, series_no: int, series_uid: str) -> Dataset:
    """Patient, study, series and equipment modules shared by a series' instances."""
    ident, person, dev = p.identity, p.identity.person, p.device
    ds = Dataset()
    if person.charset:
        ds.SpecificCharacterSet = person.charset
    if s.description == "Topogram":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    elif "MPR" in s.description:
        ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
    elif s.modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = s.sop_class
    ds.StudyDate = p.study_date or ""
    ds.SeriesDate = p.study_date or ""
    ds.ContentDate = p.content_date
    ds.StudyTime = p.study_time
    ds.SeriesTime = p.study_time
    if p.accession is not None:
        ds.AccessionNumber = p.accession
    ds.Modality = s.modality
    ds.Manufacturer = dev.manufacturer
    ds.InstitutionName = p.institution
    ds.ReferringPhysicianName = "Referring^Doctor"
    ds.StationName = dev.station
    ds.StudyDescription = _STUDY_DESCRIPTIONS[p.modality][p.index % len(_STUDY_DESCRIPTIONS[p.modality])]
    ds.SeriesDescription = s.description
    ds.ManufacturerModelName = dev.model
    ds.PatientName = person.name
    ds.PatientID = ident.patient_id
    ds.IssuerOfPatientID = ident.issuer
    ds.PatientBirthDate = person.birth_date
    ds.PatientSex = person.sex
    ds.BodyPartExamined = _BODY_PART[p.modality]
    ds.DeviceSerialNumber = dev.serial
    ds.SoftwareVersions = dev.software
    ds.StudyInstanceUID = p.uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(p.index + 1)
    ds.SeriesNumber = series_no
    return ds


def _pixel_module(ds: Dataset, s: _SeriesPlan, rows: int, cols: int) -> tuple[bool, int]:
    """Set the image pixel description for the series; returns (rgb, bits stored)."""
    rgb = s.modality == "US"
    bits = 8 if s.modality in ("US", "XA") else (16 if s.modality == "NM" else 12)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return rgb, bits


def _modality_attrs(ds: Dataset, p: _StudyPlan, s: _SeriesPlan, inst: int, n_frames: int,
                    rng: np.random.Generator) -> None:
    """The modality-specific attributes a viewer and the migration rules look at."""
    mod = s.modality
    if mod in ("CT", "MR"):
        ds.SliceThickness = "5.0" if mod == "CT" else "4.0"
        ds.PixelSpacing = ["0.7", "0.7"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-112.0, -112.0, round(-inst * 5.0, 2)]
        ds.SliceLocation = round(-inst * 5.0, 2)
        ds.WindowCenter, ds.WindowWidth = ("40", "400") if mod == "CT" else ("600", "1200")
    if mod == "CT":
        ds.KVP = "120"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    elif mod == "MR":
        ds.MagneticFieldStrength = "1.5" if p.device.manufacturer == "SIEMENS" else "3"
        ds.RepetitionTime, ds.EchoTime = "500", "15"
        ds.ScanningSequence, ds.SequenceVariant = "SE", "NONE"
    elif mod in ("CR", "DX"):
        ds.ViewPosition = s.description if s.description in ("PA", "LAT") else ""
        ds.ImagerPixelSpacing = ["0.15", "0.15"]
        ds.KVP = str(int(rng.integers(60, 125)))
        if mod == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"
    elif mod == "MG":
        ds.PresentationIntentType = "FOR PRESENTATION"
        if s.shape == "image":
            view = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))[(inst - 1) % 4]
        else:
            view = (s.description[-1], "CC")
        ds.ImageLaterality, ds.ViewPosition = view
        ds.KVP = "29"
    elif mod in ("US", "XA") and n_frames > 1:
        rate = 30 if mod == "US" else 15
        ds.CineRate = rate
        ds.RecommendedDisplayFrameRate = rate
        ds.FrameTime = f"{1000 / rate:.2f}"
        ds.FrameIncrementPointer = Tag("FrameTime")
    if mod == "XA":
        ds.PositionerPrimaryAngle = f"{rng.uniform(-40, 40):.1f}"
        ds.PositionerSecondaryAngle = f"{rng.uniform(-30, 30):.1f}"
        ds.KVP = "80"
    elif mod == "NM":
        half = n_frames // 2
        ds.FrameIncrementPointer = [Tag("EnergyWindowVector"), Tag("DetectorVector")]
        ds.NumberOfEnergyWindows = 1
        ds.EnergyWindowVector = [1] * n_frames
        ds.NumberOfDetectors = 2
        ds.DetectorVector = [1] * half + [2] * (n_frames - half)
    if n_frames > 1 or s.shape in ("nm", "tomo"):
        ds.NumberOfFrames = n_frames


def _tomo_groups(ds: Dataset, n_frames: int) -> None:
    """Enhanced-IOD functional groups of a tomosynthesis volume (shared pixel measures, per-frame planes)."""
    measures = Dataset()
    measures.PixelSpacing = ["0.1", "0.1"]
    measures.SliceThickness = "1.0"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in range(n_frames):
        content = Dataset()
        content.InStackPositionNumber = k + 1
        content.StackID = "1"
        content.DimensionIndexValues = [1, k + 1]
        plane = Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, float(k)]
        item = Dataset()
        item.FrameContentSequence = Sequence([content])
        item.PlanePositionSequence = Sequence([plane])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "TOMOSYNTHESIS", "NONE"]
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"


def _write_study(p: _StudyPlan, out_dir: Path, images_scale: float, matrix: int | None,
                 min_images_ct_mr: int) -> tuple[StudyTruth, set[tuple[str, int, int]]]:
    """Write one synthetic study's files; returns its ground truth and the private elements used."""
    rng = np.random.default_rng([p.seed, 2, p.index])
    series_plans = _plan_series(p, rng, images_scale, min_images_ct_mr)
    study_dir = out_dir / "files" / f"{p.index:05d}"
    study_dir.mkdir(parents=True, exist_ok=True)
    written: set[tuple[str, int, int]] = set()
    series_truth, instances, files, sizes, syntaxes = [], [], [], 0, set()
    series_sizes: list[int] = []
    for sno, s in enumerate(series_plans, start=1):
        series_uid = _uid(p.seed, "series", p.index, sno)
        rows, cols = _matrix(s.modality, s.shape, matrix)
        ts = UID(_pick(rng, p.device.syntaxes if s.modality == p.modality else _GRAY_TS))
        layout_seed = [p.seed, 3, p.index, sno]
        for inst in range(1, s.n_instances + 1):
            ds = _base(p, s, sno, series_uid)
            sop_uid = _uid(p.seed, "sop", p.index, sno, inst)
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = inst
            ds.AcquisitionNumber = 1
            ds.ContentTime = p.study_time
            rgb, bits = _pixel_module(ds, s, rows, cols)
            _modality_attrs(ds, p, s, inst, s.frames, rng)
            if s.shape == "tomo":
                _tomo_groups(ds, s.frames)
            if s.modality == p.modality and p.device.blocks:
                # Same layout for every file of a series, as a device writes it; differs between series.
                pv.add_private_blocks(ds, p.device.blocks, np.random.default_rng(layout_seed), written)
            arr = _pixels(rng, rows, cols, s.frames, rgb, bits, phase=inst + 7 * sno)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = s.sop_class
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PixelData = arr.tobytes()
            ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
            if ts.is_compressed:
                ds.compress(ts, arr, generate_instance_uid=False)
            else:
                ds.file_meta.TransferSyntaxUID = ts
            path = study_dir / f"{sno:02d}_{inst:04d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            size = path.stat().st_size
            sizes += size
            instances.append(sop_uid)
            files.append(str(path.relative_to(out_dir)))
            syntaxes.add(str(ts))
        series_truth.append((series_uid, s.modality, s.n_instances))
        series_sizes.append(sizes - sum(series_sizes))
    ident = p.identity
    truth = StudyTruth(
        study_instance_uid=p.uid, patient_id=ident.patient_id, issuer_of_patient_id=ident.issuer,
        patient_name=ident.person.name, patient_birth_date=ident.person.birth_date,
        patient_sex=ident.person.sex, study_date=p.study_date, accession_number=p.accession or None,
        modalities=sorted({m for _, m, _ in series_truth}), n_series=len(series_truth),
        n_instances=len(instances), bytes=sizes, manufacturer=p.device.manufacturer, model=p.device.model,
        complex_kind=p.complex_kind, mpi_patient_id=ident.person.mpi if ident.in_crosswalk else None,
        series=series_truth, instances=instances, files=files, transfer_syntaxes=sorted(syntaxes),
        series_bytes=series_sizes,
    )
    return truth, written


def _write_study_args(args: tuple) -> tuple[StudyTruth, set[tuple[str, int, int]]]:
    return _write_study(*args)


# --- real sample files ----------------------------------------------------------------------
#: Bundled with pydicom (explicit names: ``get_testdata_files("*")`` would try to download).
REAL_PYDICOM = ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm")
#: From the pydicom-data wheel (package ``data_store``): GE US, Philips US cine, Siemens MR,
#: enhanced CT, Fuji CR.
REAL_PYDICOM_DATA = ("US1_J2KR.dcm", "OBXXXX1A_rle_2frame.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
                     "eCT_Supplemental.dcm", "RG3_J2KR.dcm")


def real_sample_paths() -> list[Path]:
    """The real sample files that are present in this environment, in a fixed order."""
    out = []
    pyd = Path(pydicom.__file__).parent / "data" / "test_files"
    out.extend(pyd / n for n in REAL_PYDICOM if (pyd / n).is_file())
    import importlib.util

    spec = importlib.util.find_spec("data_store")
    if spec and spec.submodule_search_locations:
        store = Path(next(iter(spec.submodule_search_locations))) / "data"
        out.extend(store / n for n in REAL_PYDICOM_DATA if (store / n).is_file())
    # Sample sets reuse SOP and study UIDs across transfer-syntax variants; each file here becomes
    # its own study, so a later file repeating an earlier one's UIDs is left out.
    seen: set[str] = set()
    unique = []
    for path in out:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
        uids = {str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)}
        if not uids & seen:
            seen |= uids
            unique.append(path)
    return unique


def _real_private_elements(ds: Dataset) -> set[tuple[str, int, int]]:
    """(creator, group, offset) of the top-level private elements of a dataset."""
    found = set()
    for elem in ds:
        tag = elem.tag
        if tag.is_private and 0x1000 <= tag.element <= 0xFFFF:
            creator_tag = Tag(tag.group, tag.element >> 8)
            if creator_tag in ds:
                found.add((str(ds[creator_tag].value).strip(), tag.group, tag.element & 0xFF))
    return found


def _copy_real(src: Path, index: int, out_dir: Path, reg_mpis: set[str],
               rng: np.random.Generator) -> tuple[StudyTruth, set[tuple[str, int, int]]]:
    """Copy one real sample byte for byte into the archive and describe it from its own header."""
    study_dir = out_dir / "files" / f"{index:05d}"
    study_dir.mkdir(parents=True, exist_ok=True)
    dest = study_dir / f"real_{src.name}"
    shutil.copyfile(src, dest)
    ds = pydicom.dcmread(dest, stop_before_pixels=True)
    mpi = ""
    while not mpi or mpi in reg_mpis:
        mpi = f"MPI{int(rng.integers(0, 10**7)):07d}"
    reg_mpis.add(mpi)

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value) if value not in (None, "") else None

    modality = str(ds.Modality)
    truth = StudyTruth(
        study_instance_uid=str(ds.StudyInstanceUID), patient_id=str(ds.get("PatientID", "")),
        issuer_of_patient_id=text("IssuerOfPatientID"), patient_name=str(ds.get("PatientName", "")),
        patient_birth_date=text("PatientBirthDate"), patient_sex=text("PatientSex"),
        study_date=text("StudyDate"), accession_number=text("AccessionNumber"), modalities=[modality],
        n_series=1, n_instances=1, bytes=dest.stat().st_size, manufacturer=text("Manufacturer"),
        model=text("ManufacturerModelName"), complex_kind=None, mpi_patient_id=mpi,
        series=[(str(ds.SeriesInstanceUID), modality, 1)], instances=[str(ds.SOPInstanceUID)],
        files=[str(dest.relative_to(out_dir))], source=src.name,
        transfer_syntaxes=[str(ds.file_meta.TransferSyntaxUID)], series_bytes=[dest.stat().st_size],
    )
    return truth, _real_private_elements(ds)


# --- entry point ----------------------------------------------------------------------------
def generate(out_dir: Path, studies: int = 300, seed: int = 7, *, images_scale: float = 1.0,
             matrix: int | None = None, min_images_ct_mr: int = 0, include_real_files: bool = True,
             workers: int = 1) -> GroundTruth:
    """Write a synthetic hospital archive of ``studies`` studies under ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        Created if missing; ``files/<n>/*.dcm``, ``ground_truth.json`` and ``mpi_crosswalk.csv``
        are written into it (an existing ``files/`` tree is replaced).
    studies : int
        Total studies, real sample files included (they are mixed in from 20 studies up).
    seed : int
        Same seed, same archive: byte-identical files and ground truth.
    images_scale : float
        Multiplies image counts of stack series (CT/MR/US/XA/NM); plain-film and mammography
        views are fixed. Every series keeps at least one instance.
    matrix : int, optional
        Rows and columns of every synthetic image (default 32-64 px per modality).
    min_images_ct_mr : int
        Floor of images per CT/MR study (benchmarks).
    include_real_files : bool
        Mix in pydicom's and pydicom-data's real sample files.
    workers : int
        Processes writing studies; the output does not depend on it.

    Returns
    -------
    GroundTruth
        Also saved as ``out_dir/ground_truth.json``.

    Notes
    -----
    The archive imitates a hospital's 15-year PACS: eight modalities with clinical series
    structure, mixed transfer syntaxes, multi-frame objects (breast tomosynthesis, US cine, XA
    runs, NM), vendor private blocks in varying slots, an acquired clinic with its own Patient ID
    format and issuer, and deliberate dirty data: a Patient ID shared by two people, one person
    under two IDs, missing accession numbers (absent and empty), exactly one study without a
    StudyDate, non-ASCII names (ISO_IR 100 and ISO_IR 192), patients missing from the crosswalk.

    Determinism: dates count back from :data:`ANCHOR_DATE` (never today), UIDs are name-based
    UUIDs of the seed and the object's position, and each study draws from its own random stream.

    Identity disambiguation: the Patient ID shared by two people comes from two issuers, the
    hospital (``HOSP_A``) and the acquired clinic (``CLINIC_B``, whose desk keyed a hospital-format
    MRN as the clinic's own ID for one patient). The crosswalk is keyed by ``(issuer, patient_id)``,
    so it maps them to two MPI ids; a matcher that ignores the issuer cannot tell them apart.

    Examples
    --------
    >>> gt = generate(Path("/tmp/archive"), studies=40, seed=11)  # doctest: +SKIP
    >>> gt.n_studies, gt.expected_id_issues["same_id_different_demographics"]  # doctest: +SKIP
    (40, ['MRN69006458'])
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "files").exists():
        shutil.rmtree(out_dir / "files")
    reals = real_sample_paths() if include_real_files and studies >= REAL_FILES_MIN_STUDIES else []
    plans, identities = _plan(studies - len(reals), seed)

    args = [(p, out_dir, images_scale, matrix, min_images_ct_mr) for p in plans]
    if workers > 1 and len(plans) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_write_study_args, args, chunksize=max(1, len(args) // (workers * 8))))
    else:
        results = [_write_study(*a) for a in args]

    study_truths = [t for t, _ in results]
    private_elements: set[tuple[str, int, int]] = set().union(*(w for _, w in results)) if results else set()
    rng = np.random.default_rng([seed, 4])
    mpis = {i.person.mpi for i in identities}
    for k, src in enumerate(reals):
        truth, found = _copy_real(src, len(plans) + k, out_dir, mpis, rng)
        study_truths.append(truth)
        private_elements |= found

    crosswalk = out_dir / "mpi_crosswalk.csv"
    rows = sorted({(i.issuer, i.patient_id, i.person.mpi) for i in identities if i.in_crosswalk}
                  | {(t.issuer_of_patient_id or "", t.patient_id, t.mpi_patient_id or "")
                     for t in study_truths if t.source != "synthetic"})
    with open(crosswalk, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["issuer_of_patient_id", "patient_id", "mpi_patient_id"])
        writer.writerows(rows)

    gt = GroundTruth(
        root=out_dir,
        files=[out_dir / f for t in study_truths for f in t.files],
        crosswalk_path=crosswalk,
        studies=study_truths,
        unmatched_patients=sorted((i.issuer, i.patient_id) for i in identities if not i.in_crosswalk),
        private_elements=private_elements,
        seed=seed,
        params={"studies": studies, "images_scale": images_scale, "matrix": matrix,
                "min_images_ct_mr": min_images_ct_mr, "include_real_files": include_real_files},
    )
    gt.save()
    return gt


def archive_digest(gt: GroundTruth) -> str:
    """sha256 over every file's bytes in ground-truth order (equal digests = identical archives)."""
    h = hashlib.sha256()
    for path in gt.files:
        h.update(str(path.relative_to(gt.root)).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.generator --out DIR --studies N --seed S [--images-scale F] [--matrix M]``."""
    ap = argparse.ArgumentParser(prog="python -m testbed.generator", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--studies", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--images-scale", type=float, default=1.0)
    ap.add_argument("--matrix", type=int, default=None)
    ap.add_argument("--min-images-ct-mr", type=int, default=0)
    ap.add_argument("--no-real-files", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    gt = generate(a.out, a.studies, a.seed, images_scale=a.images_scale, matrix=a.matrix,
                  min_images_ct_mr=a.min_images_ct_mr, include_real_files=not a.no_real_files,
                  workers=a.workers)
    print(json.dumps({"root": str(gt.root), "studies": gt.n_studies, "series": gt.n_series,
                      "instances": gt.n_instances, "bytes": gt.total_bytes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
