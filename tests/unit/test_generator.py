"""The synthetic archive generator: deterministic, small by default, every dirty-data case in the files."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom._private_dict import private_dictionaries
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from pacsmig.verify.hashing import hash_instance
from testbed import generator as g
from testbed.generator import GroundTruth, archive_digest, generate, read_crosswalk


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> GroundTruth:
    """The archive tests/conftest.py builds for everyone: 40 studies, seed 11."""
    return generate(tmp_path_factory.mktemp("gen40"), studies=40, seed=11)


@pytest.fixture(scope="module")
def headers(archive: GroundTruth) -> dict[Path, pydicom.Dataset]:
    return {p: pydicom.dcmread(p, stop_before_pixels=True) for p in archive.files}


def _by_study(headers: dict[Path, pydicom.Dataset]) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for ds in headers.values():
        out[str(ds.StudyInstanceUID)].append(ds)
    return out


def test_same_seed_same_archive_any_workers_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", studies=24, seed=5)
    b = generate(tmp_path / "b", studies=24, seed=5, workers=2)
    c = generate(tmp_path / "c", studies=24, seed=6)
    for name in ("ground_truth.json", "mpi_crosswalk.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert archive_digest(a) == archive_digest(b)
    assert archive_digest(a) != archive_digest(c)
    synthetic_a = {s.study_instance_uid for s in a.studies if s.source == "synthetic"}
    synthetic_c = {s.study_instance_uid for s in c.studies if s.source == "synthetic"}
    assert synthetic_a and not synthetic_a & synthetic_c
    assert [s.study_date for s in a.studies] != [s.study_date for s in c.studies]


def test_forty_studies_is_a_small_archive(archive: GroundTruth) -> None:
    assert archive.n_studies == 40
    assert 600 <= archive.n_instances <= 1500
    assert len(archive.files) == archive.n_instances == len(set(archive.files))
    assert archive.total_bytes == sum(p.stat().st_size for p in archive.files)
    assert all(p.is_relative_to(archive.root / "files") for p in archive.files)


def test_every_file_decodes_and_matches_the_ground_truth(archive: GroundTruth) -> None:
    per_series: dict[str, int] = defaultdict(int)
    per_study_bytes: dict[str, int] = defaultdict(int)
    sops, syntaxes = [], set()
    for path in archive.files:
        h = hash_instance(path)  # raises if any plugin cannot decode the pixels
        assert h.number_of_frames >= 1
        per_series[h.series_instance_uid] += 1
        per_study_bytes[h.study_instance_uid] += h.size_bytes
        sops.append(h.sop_instance_uid)
        syntaxes.add(h.transfer_syntax_uid)
    assert len(sops) == len(set(sops)), "SOP Instance UIDs must be unique across the archive"
    assert set(sops) == {u for s in archive.studies for u in s.instances}
    for s in archive.studies:
        assert per_study_bytes[s.study_instance_uid] == s.bytes
        assert s.n_series == len(s.series) and s.n_instances == len(s.instances)
        for uid, _mod, n in s.series:
            assert per_series[uid] == n >= 1
    assert {ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless} <= syntaxes


def test_modalities_mix_and_by_modality(archive: GroundTruth, headers: dict) -> None:
    by_mod = archive.by_modality()
    assert set(g.MODALITIES) <= set(by_mod)
    assert sum(row["instances"] for row in by_mod.values()) == archive.n_instances
    assert sum(row["series"] for row in by_mod.values()) == archive.n_series
    assert sum(row["bytes"] for row in by_mod.values()) == archive.total_bytes
    read = defaultdict(set)
    for ds in headers.values():
        read[str(ds.StudyInstanceUID)].add(str(ds.Modality))
    for s in archive.studies:
        assert s.modalities == sorted(read[s.study_instance_uid])
    ct_series = [n for s in archive.studies if s.source == "synthetic" for _, m, n in s.series if m == "CT"]
    assert max(ct_series) >= 20 and min(ct_series) >= 1
    cr = [s for s in archive.studies if s.modalities == ["CR"] and s.source == "synthetic"]
    assert cr and all(1 <= s.n_series <= 3 and s.n_instances == s.n_series for s in cr)


def test_dates_spread_over_fifteen_years_and_exactly_one_missing(archive: GroundTruth, headers: dict) -> None:
    missing = [s for s in archive.studies if s.study_date is None]
    assert len(missing) == 1
    for ds in _by_study(headers)[missing[0].study_instance_uid]:
        assert not ds.get("StudyDate")
    dates = [date(int(d[:4]), int(d[4:6]), int(d[6:])) for s in archive.studies if s.source == "synthetic"
             if (d := s.study_date)]
    lo = g.ANCHOR_DATE - timedelta(days=365 * g.ARCHIVE_YEARS)
    assert all(lo <= d <= g.ANCHOR_DATE for d in dates)
    assert max(dates).year - min(dates).year >= 8
    for s in archive.studies:
        if s.study_date:
            assert {ds.StudyDate for ds in _by_study(headers)[s.study_instance_uid]} == {s.study_date}


def test_patient_identity_dirty_data_is_in_the_files(archive: GroundTruth, headers: dict) -> None:
    # Recompute the identity problems from the headers alone, not from the ground truth.
    by_id: dict[str, set] = defaultdict(set)
    by_person: dict[tuple, set] = defaultdict(set)
    issuers_of: dict[str, set] = defaultdict(set)
    for ds in headers.values():
        demo = (str(ds.PatientName), ds.get("PatientBirthDate", ""), ds.get("PatientSex", ""))
        issuer = ds.get("IssuerOfPatientID", "") or ""
        by_id[ds.PatientID].add(demo)
        by_person[demo].add((issuer, ds.PatientID))
        issuers_of[ds.PatientID].add(issuer)
    shared = sorted(pid for pid, d in by_id.items() if len(d) > 1)
    two_ids = sorted(sorted(ids) for ids in by_person.values() if len(ids) > 1)
    issues = archive.expected_id_issues
    assert shared == issues["same_id_different_demographics"] and len(shared) >= 1
    assert two_ids == issues["same_demographics_different_ids"] and len(two_ids) >= 1
    # The two people sharing an ID come from different issuers: that is how the crosswalk tells them apart.
    assert all(len(issuers_of[pid]) == 2 for pid in shared)

    crosswalk = read_crosswalk(archive.crosswalk_path)
    for pid in shared:
        mpis = {crosswalk.get((iss, pid)) for iss in issuers_of[pid]} - {None}
        assert len(mpis) == 2, "two people under one Patient ID must get two MPI ids"
    for ids in two_ids:
        mapped = {crosswalk[tuple(i)] for i in ids if tuple(i) in crosswalk}
        assert len(mapped) == 1, "one person under two IDs must get one MPI id"

    # Acquired clinic: its own ID format and issuer (the one shared hospital-format ID excepted).
    formats = {g.HOSPITAL_ISSUER: re.compile(r"^MRN\d{8}$"), g.CLINIC_ISSUER: re.compile(r"^CB-\d{5}$")}
    seen_issuers = set()
    for ds in headers.values():
        issuer = ds.get("IssuerOfPatientID")
        if issuer in formats:
            seen_issuers.add(issuer)
            assert formats[issuer].match(ds.PatientID) or ds.PatientID in shared
    assert seen_issuers == set(formats)


def test_crosswalk_covers_everyone_but_the_unmatched(archive: GroundTruth, headers: dict) -> None:
    first = archive.crosswalk_path.read_text(encoding="utf-8").splitlines()[0]
    assert first == "issuer_of_patient_id,patient_id,mpi_patient_id"
    crosswalk = read_crosswalk(archive.crosswalk_path)
    in_files = {(ds.get("IssuerOfPatientID", "") or "", str(ds.PatientID)) for ds in headers.values()}
    unmatched = set(archive.unmatched_patients)
    assert 1 <= len(unmatched) <= 2 and unmatched <= in_files
    assert not unmatched & set(crosswalk)
    assert in_files - unmatched == set(crosswalk)
    for s in archive.studies:
        key = (s.issuer_of_patient_id or "", s.patient_id)
        assert s.mpi_patient_id == crosswalk.get(key)


def test_missing_accessions_and_non_ascii_names(archive: GroundTruth, headers: dict) -> None:
    by_study = _by_study(headers)
    no_acc = [s for s in archive.studies if s.source == "synthetic" and s.accession_number is None]
    assert len(no_acc) >= 3
    for s in no_acc:
        assert all(not ds.get("AccessionNumber") for ds in by_study[s.study_instance_uid])
    absent = sum("AccessionNumber" not in by_study[s.study_instance_uid][0] for s in no_acc)
    assert 0 < absent < len(no_acc), "both absent and empty AccessionNumber must occur"
    accented = [s for s in archive.studies if any(ord(c) > 127 for c in s.patient_name)]
    assert len(accented) >= 3
    charsets = set()
    for s in accented:
        for ds in by_study[s.study_instance_uid]:
            assert str(ds.PatientName) == s.patient_name
            charsets.add(ds.SpecificCharacterSet)
    assert charsets == {"ISO_IR 100", "ISO_IR 192"}


def test_tomosynthesis_and_cine_multiframe(archive: GroundTruth, headers: dict) -> None:
    tomo = [(p, ds) for p, ds in headers.items() if ds.SOPClassUID == g.BREAST_TOMO]
    cine = [(p, ds) for p, ds in headers.items() if ds.SOPClassUID == g.US_MULTIFRAME
            and archive.study(ds.StudyInstanceUID).source == "synthetic"]
    assert tomo and cine
    for path, ds in tomo:
        assert ds.Modality == "MG" and 10 <= ds.NumberOfFrames <= 30
        assert len(ds.PerFrameFunctionalGroupsSequence) == ds.NumberOfFrames
        assert archive.study(ds.StudyInstanceUID).complex_kind == "tomosynthesis"
        assert pydicom.dcmread(path).pixel_array.shape[0] == ds.NumberOfFrames
    for path, ds in cine:
        assert ds.Modality == "US" and ds.NumberOfFrames >= 10
        assert float(ds.FrameTime) == pytest.approx(1000 / ds.CineRate, rel=1e-3)
        assert Tag(ds.FrameIncrementPointer) == Tag("FrameTime")
        assert archive.study(ds.StudyInstanceUID).complex_kind == "cine"
        assert pydicom.dcmread(path).pixel_array.shape[0] == ds.NumberOfFrames
    assert any(s.complex_kind == "large_series" for s in archive.studies)


REQUIRED_PRIVATES = [
    ("GEMS_GDXE_FALCON_04", 0x0011, 0x33, "GE"),
    ("SIEMENS DFR.01 ORIGINAL", 0x0017, 0x42, "SIEMENS"),
    ("SIEMENS CT VA0  GEN", 0x0019, 0x21, "SIEMENS"),
    ("Philips Imaging DD 001", 0x2001, 0x0B, "Philips"),
    ("Philips MR Imaging DD 001", 0x2005, 0x0F, "Philips"),
]


@pytest.mark.parametrize(("creator", "group", "offset", "vendor"), REQUIRED_PRIVATES)
def test_private_blocks_in_varying_slots(archive: GroundTruth, headers: dict, creator: str, group: int,
                                         offset: int, vendor: str) -> None:
    slots, manufacturers = set(), set()
    for ds in headers.values():
        for slot in range(0x10, 0x100):
            tag = Tag(group, slot)
            if tag in ds and ds[tag].value == creator:
                elem = ds.private_block(group, creator)[offset]
                expected_vr = private_dictionaries[creator][f"{group:04X}xx{offset:02X}"][0]
                assert elem.VR == expected_vr and elem.value not in (None, "")
                slots.add(slot)
                manufacturers.add(ds.Manufacturer)
    assert len(slots) >= 2, f"{creator} must appear in at least two different slots"
    assert all(vendor.lower() in m.lower() for m in manufacturers)
    assert (creator, group, offset) in archive.private_elements


def test_private_elements_truth_matches_the_files(archive: GroundTruth, headers: dict) -> None:
    found = set()
    for ds in headers.values():
        for elem in ds:
            t = elem.tag
            if t.is_private and t.element >= 0x1000:
                found.add((str(ds[Tag(t.group, t.element >> 8)].value).strip(), t.group, t.element & 0xFF))
    assert found == archive.private_elements


def test_real_files_are_copied_verbatim_and_described_from_their_headers(archive: GroundTruth) -> None:
    real = [s for s in archive.studies if s.source != "synthetic"]
    assert len(real) >= 5
    originals = {p.name: p for p in g.real_sample_paths()}
    assert {"CT_small.dcm", "US1_J2KR.dcm"} <= set(originals)
    for s in real:
        (path,) = archive.study_files(s.study_instance_uid)
        src = originals[s.source]
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (s.patient_id, s.study_date, s.instances) == (ds.PatientID, ds.StudyDate, [ds.SOPInstanceUID])
        assert "ImageStorage" in ds.SOPClassUID.keyword or "Image" in ds.SOPClassUID.name


def test_ground_truth_round_trip(archive: GroundTruth) -> None:
    loaded = GroundTruth.load(archive.root)
    assert loaded == archive
    assert loaded.expected_id_issues == archive.expected_id_issues


def test_options_floor_matrix_and_cli(tmp_path: Path) -> None:
    gt = generate(tmp_path / "bench", studies=12, seed=3, matrix=32, min_images_ct_mr=40,
                  include_real_files=False)
    assert all(s.source == "synthetic" for s in gt.studies) and gt.n_studies == 12
    stacks = [s for s in gt.studies if s.modalities in (["CT"], ["MR"])]
    assert stacks and all(s.n_instances >= 40 for s in stacks)
    ds = pydicom.dcmread(gt.files[0], stop_before_pixels=True)
    assert (ds.Rows, ds.Columns) == (32, 32)
    assert g.main(["--out", str(tmp_path / "cli"), "--studies", "5", "--seed", "2",
                   "--images-scale", "0.5"]) == 0
    assert GroundTruth.load(tmp_path / "cli").n_studies == 5
