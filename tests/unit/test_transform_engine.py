"""Unit tests of transform_instance, dry_run and the ``pacsmig rules`` command on files on disk."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from transform_testkit import make_dataset, private_values, write

from pacsmig.errors import TransformError
from pacsmig.transform import RuleSet, default_rules_path, dry_run, transform_instance
from pacsmig.transform.cli import main as rules_cli
from pacsmig.transform.mpi import Crosswalk
from pacsmig.verify.hashing import hash_instance

WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
SIE_GEN = "SIEMENS CT VA0  GEN"


@pytest.fixture(scope="module")
def default_rules() -> RuleSet:
    return RuleSet.from_yaml(default_rules_path())


def siemens_ct(tmp_path: Path, name: str = "in.dcm", **attrs: object) -> Path:
    ds = make_dataset(blocks=[(0x0019, 0x11, "SIEMENS CT VA0  COAD", [(0x54, "DS", "0.5")]),
                              (0x0019, 0x12, SIE_GEN, [(0x21, "IS", 250), (0x26, "DS", "120")])],
                      **{"PatientID": "12345", "IssuerOfPatientID": "HOSP_A", **attrs})
    return write(ds, tmp_path / name)


def test_transform_applies_rules_and_mpi_and_keeps_pixels(tmp_path: Path, default_rules: RuleSet) -> None:
    src = siemens_ct(tmp_path, StudyDate="2020-01-31")
    result = transform_instance(src, tmp_path / "out" / "x.dcm", rules=default_rules, mpi_patient_id="MPI-1",
                                mpi_issuer="HOSPITAL_MPI", when=WHEN)
    before, after = pydicom.dcmread(src), pydicom.dcmread(result.path)
    assert result.sop_instance_uid == before.SOPInstanceUID
    assert after.XRayTubeCurrent == 250 and str(after.KVP) == "120" and after.RevolutionTime == 0.5
    assert after.StudyDate == "20200131"
    assert (after.PatientID, after.IssuerOfPatientID) == ("MPI-1", "HOSPITAL_MPI")
    reasons = {i.ReasonForTheAttributeModification for i in after.OriginalAttributesSequence}
    assert reasons == {"COERCE", "CORRECT"}
    h0, h1 = hash_instance(src), hash_instance(result.path)
    assert h0.raw_hash == h1.raw_hash and h0.pixel_hash == h1.pixel_hash
    assert result.file_hash == h1.file_hash
    assert after.file_meta == before.file_meta
    assert private_values(after) == private_values(before)
    assert {c.rule_id for c in result.changes} >= {"siemens-ct-tube-current", "fix-invalid-datetime", "mpi"}


def test_deterministic_bytes(tmp_path: Path, default_rules: RuleSet) -> None:
    src = siemens_ct(tmp_path)
    kw = {"rules": default_rules, "mpi_patient_id": "MPI-1", "mpi_issuer": "HOSPITAL_MPI", "when": WHEN}
    a = transform_instance(src, tmp_path / "a.dcm", **kw)
    b = transform_instance(src, tmp_path / "b.dcm", **kw)
    assert a.file_hash == b.file_hash
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()
    # re-running into the same destination replaces it with the same bytes
    c = transform_instance(src, tmp_path / "a.dcm", **kw)
    assert c.file_hash == a.file_hash
    assert not list(tmp_path.glob(".*.tmp"))


def test_nothing_to_do_copies_bytes_exactly(tmp_path: Path, default_rules: RuleSet) -> None:
    ds = make_dataset(PatientID="MPI-1", IssuerOfPatientID="HOSPITAL_MPI")
    src = write(ds, tmp_path / "in.dcm")
    result = transform_instance(src, tmp_path / "out.dcm", rules=default_rules, mpi_patient_id="MPI-1",
                                mpi_issuer="HOSPITAL_MPI", when=WHEN)
    assert result.changes == []
    assert result.path.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "image_dfl.dcm", "CT_small.dcm"])
def test_transfer_syntax_and_pixel_bytes_kept(tmp_path: Path, default_rules: RuleSet, name: str) -> None:
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.Modality = "CT"
    block = ds.private_block(0x0019, SIE_GEN, create=True)
    block.add_new(0x21, "IS", 321)
    if "XRayTubeCurrent" in ds:
        del ds.XRayTubeCurrent
    src = tmp_path / name
    ds.save_as(src, enforce_file_format=False)
    result = transform_instance(src, tmp_path / f"out-{name}", rules=default_rules, mpi_patient_id="MPI-9",
                                mpi_issuer="HOSPITAL_MPI", when=WHEN)
    before, after = pydicom.dcmread(src), pydicom.dcmread(result.path)
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert after.file_meta.MediaStorageSOPInstanceUID == before.file_meta.MediaStorageSOPInstanceUID
    assert after.XRayTubeCurrent == 321 and after.PatientID == "MPI-9"
    h0, h1 = hash_instance(src), hash_instance(result.path)
    assert (h0.raw_hash, h0.pixel_hash) == (h1.raw_hash, h1.pixel_hash)
    assert private_values(after) == private_values(before)


def test_unreadable_file_is_a_transform_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(TransformError, match="bad.dcm"):
        transform_instance(bad, tmp_path / "o.dcm", rules=None, mpi_patient_id=None, mpi_issuer="M")
    assert not (tmp_path / "o.dcm").exists()


def test_failing_rule_writes_nothing(tmp_path: Path) -> None:
    src = siemens_ct(tmp_path)
    rs = RuleSet.from_dict({"rules": [{"id": "frac", "op": "copy", "to": "XRayTubeCurrent",
                                       "from": {"group": 0x0019, "creator": "SIEMENS CT VA0  COAD",
                                                "offset": 0x54}}]})
    with pytest.raises(TransformError, match="rule frac"):
        transform_instance(src, tmp_path / "o.dcm", rules=rs, mpi_patient_id=None, mpi_issuer="M")
    assert not (tmp_path / "o.dcm").exists()


def test_dry_run_reports_and_writes_nothing(tmp_path: Path, default_rules: RuleSet) -> None:
    siemens_ct(tmp_path, "a.dcm")
    siemens_ct(tmp_path, "b.dcm", PatientID="404")
    (tmp_path / "junk.dcm").write_bytes(b"junk")
    cw_path = tmp_path / "cw.csv"
    cw_path.write_text("issuer_of_patient_id,patient_id,mpi_patient_id\nHOSP_A,12345,MPI-1\n")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}
    report = dry_run([tmp_path], default_rules, Crosswalk.from_csv(cw_path))
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()} == before
    assert list(report.columns)[:4] == ["path", "sop_instance_uid", "rule_id", "action"]
    a = report[report.path.str.endswith("a.dcm")]
    b = report[report.path.str.endswith("b.dcm")]
    assert {"siemens-ct-tube-current", "siemens-ct-kvp", "mpi"} <= set(a.rule_id)
    assert a[a.keyword == "PatientID"].new.tolist() == ["MPI-1"]
    assert b[b.rule_id == "mpi"].action.tolist() == ["no_mpi_match"]
    assert report[report.path.str.endswith("junk.dcm")].action.tolist() == ["error"]


def test_cli_check_and_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rules_cli(["check"]) == 0
    assert "rules OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {id: oops, op: explode}\n")
    assert rules_cli(["check", str(bad)]) == 2
    assert "rule oops: unknown op" in capsys.readouterr().err
    src = siemens_ct(tmp_path)
    out = tmp_path / "report.csv"
    assert rules_cli(["dry-run", "--rules", str(default_rules_path()), "-o", str(out), str(src)]) == 0
    report = pd.read_csv(out)
    assert "siemens-ct-tube-current" in set(report.rule_id)
    assert pydicom.dcmread(src).get("XRayTubeCurrent") is None  # nothing written to the file


# --- the header-only path: parse up to the pixels, splice the source's pixel bytes back on ---------
def full_parse_bytes(src: Path, rules: RuleSet, mpi_id: str) -> bytes:
    """What transform_instance wrote before it spliced: full parse, apply, re-encode everything."""
    import copy
    from io import BytesIO

    from pacsmig.transform.engine import apply_all
    from pacsmig.transform.provenance import record_original_attributes

    ds = pydicom.dcmread(src)
    issuer = copy.deepcopy(ds[0x00100021]) if 0x00100021 in ds else None
    changes = apply_all(ds, rules, mpi_id, "HOSPITAL_MPI")
    record_original_attributes(ds, changes, WHEN, original_issuer=issuer)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def with_trailing_padding(src: Path, dst: Path) -> Path:
    ds = pydicom.dcmread(src)
    ds.DataSetTrailingPadding = b"\x00" * 8
    ds.save_as(dst, enforce_file_format=False)
    return dst


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm",
                                  "MR_small_bigendian.dcm", "image_dfl.dcm", "CT_small.dcm",
                                  "SC_rgb_rle_2frame.dcm", "rtplan.dcm", "padded"])
def test_output_is_what_a_full_parse_and_re_encode_gives(tmp_path: Path, default_rules: RuleSet,
                                                         name: str) -> None:
    src = (with_trailing_padding(Path(get_testdata_file("CT_small.dcm")), tmp_path / "padded.dcm")
           if name == "padded" else Path(get_testdata_file(name)))
    result = transform_instance(src, tmp_path / "out.dcm", rules=default_rules, mpi_patient_id="MPI-7",
                                mpi_issuer="HOSPITAL_MPI", when=WHEN)
    data = result.path.read_bytes()
    assert data == full_parse_bytes(src, default_rules, "MPI-7")
    assert result.file_hash == hash_instance(result.path).file_hash


def test_a_rule_on_an_element_after_the_pixels_still_applies(tmp_path: Path) -> None:
    src = with_trailing_padding(Path(get_testdata_file("CT_small.dcm")), tmp_path / "in.dcm")
    rs = RuleSet.from_dict({"rules": [{"id": "nopad", "op": "delete", "element": "DataSetTrailingPadding"}]})
    result = transform_instance(src, tmp_path / "out.dcm", rules=rs, mpi_patient_id=None, mpi_issuer="M",
                                when=WHEN)
    assert [c.keyword for c in result.changes] == ["DataSetTrailingPadding"]
    after = pydicom.dcmread(result.path)
    assert "DataSetTrailingPadding" not in after
    assert hash_instance(result.path).raw_hash == hash_instance(src).raw_hash


def test_a_given_header_is_used_and_a_stale_one_re_read(tmp_path: Path, default_rules: RuleSet,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from pacsmig.transform import engine

    src = siemens_ct(tmp_path)
    header = engine.read_header(src)
    kw = {"rules": default_rules, "mpi_patient_id": "MPI-1", "mpi_issuer": "HOSPITAL_MPI", "when": WHEN}
    with monkeypatch.context() as m:
        m.setattr(engine.pydicom, "dcmread", lambda *a, **k: pytest.fail("the header was parsed again"))
        a = transform_instance(src, tmp_path / "a.dcm", header=header, **kw)
    assert a.path.read_bytes() == full_parse_bytes(src, default_rules, "MPI-1")
    stale = engine.read_header(src)
    siemens_ct(tmp_path, PatientID="other-id")  # the staged file is rewritten after its header was read
    b = transform_instance(src, tmp_path / "b.dcm", header=stale, **kw)
    assert b.path.read_bytes() == full_parse_bytes(src, default_rules, "MPI-1")
    assert any(c.keyword == "PatientID" and c.old == "other-id" for c in b.changes)


@pytest.mark.parametrize("implicit", [False, True])
def test_values_left_undecoded_are_still_checked(tmp_path: Path, implicit: bool) -> None:
    """Truncation and date fixes skip decoding values that fit; the ones that do not are fixed."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = make_dataset(InstitutionName="I" * 64, StationName="S" * 17, StudyDate="20200131",
                      SeriesDate="2020-02-01", AcquisitionDate="20201341",
                      transfer_syntax=ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    src = write(ds, tmp_path / "in.dcm")
    rs = RuleSet.from_yaml(default_rules_path())
    result = transform_instance(src, tmp_path / "out.dcm", rules=rs, mpi_patient_id=None, mpi_issuer="M",
                                when=WHEN)
    by_keyword = {c.keyword: c for c in result.changes}
    assert set(by_keyword) == {"StationName", "SeriesDate", "AcquisitionDate"}
    assert by_keyword["StationName"].new == "S" * 16
    assert by_keyword["SeriesDate"].new == "20200201"
    assert by_keyword["AcquisitionDate"].action == "empty-invalid"
    assert result.path.read_bytes() == full_parse_bytes(src, rs, "")


def test_rule_file_is_parsed_again_when_edited(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n- {id: a, op: delete, element: InstitutionName}\n")
    first = RuleSet.from_yaml(path)
    assert RuleSet.from_yaml(path) is first
    path.write_text("rules:\n- {id: b, op: delete, element: StationName}\n")
    assert [r.id for r in RuleSet.from_yaml(path)] == ["b"]
