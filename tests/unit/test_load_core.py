"""Load without network: content comparison, STOW/WADO parsing, the filesystem destination, acks."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacsmig.config import ConnectionSpec
from pacsmig.errors import ConfigError
from pacsmig.load import (
    ALREADY_STORED_SAME,
    CONFLICT,
    FAILED,
    STORED,
    MultiDestination,
    StoreAck,
    StoreFailed,
    compare_instances,
    open_destination,
    open_destinations,
)
from pacsmig.load.dicomweb import parse_multipart
from pacsmig.load.filesystem import FilesystemDestination
from pacsmig.load.multi import combine_acks
from pacsmig.verify.hashing import hash_instance


def sample(name: str) -> Path:
    return Path(get_testdata_file(name))


def fs_conn(path: Path, conn_id: str = "edge") -> ConnectionSpec:
    return ConnectionSpec(conn_id, "fs", extra={"path": str(path)})


# --- compare ------------------------------------------------------------------------------------
def test_lossless_variants_of_one_instance_compare_same() -> None:
    ours = sample("MR_small.dcm").read_bytes()
    for variant in ("MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                    "MR_small_jp2klossless.dcm"):
        verdict = compare_instances(ours, sample(variant).read_bytes())
        assert verdict.same, (variant, verdict.detail)
        assert "re-serialised" in verdict.detail


def test_changed_header_or_pixels_is_different(tmp_path: Path) -> None:
    ours = sample("CT_small.dcm").read_bytes()
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.PatientName, ds.PatientID = "Other^Person", "X999"
    ds.save_as(tmp_path / "h.dcm")
    verdict = compare_instances(ours, (tmp_path / "h.dcm").read_bytes())
    assert not verdict.same
    assert "PatientName differs" in verdict.detail and "PatientID differs" in verdict.detail
    assert "Other" not in verdict.detail and "X999" not in verdict.detail  # tags, never values

    ds = pydicom.dcmread(sample("CT_small.dcm"))
    arr = ds.pixel_array.copy()
    arr[10, 10] ^= 1
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "p.dcm")
    verdict = compare_instances(ours, (tmp_path / "p.dcm").read_bytes())
    assert not verdict.same and verdict.detail.endswith("pixel hash differs")


def test_target_bookkeeping_is_tolerated_but_a_dropped_element_is_not(tmp_path: Path) -> None:
    ours = sample("CT_small.dcm").read_bytes()
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.private_block(0x0041, "SOME VNA", create=True).add_new(0x01, "LO", "received")
    ds.file_meta.ImplementationVersionName = "OTHER_IMPL"
    ds.save_as(tmp_path / "vna.dcm")
    assert compare_instances(ours, (tmp_path / "vna.dcm").read_bytes()).same
    del ds.InstitutionName
    ds.save_as(tmp_path / "dropped.dcm")
    verdict = compare_instances(ours, (tmp_path / "dropped.dcm").read_bytes())
    assert not verdict.same and "InstitutionName missing at target" in verdict.detail


def test_other_sop_uid_and_garbage_never_compare_same() -> None:
    ours = sample("MR_small.dcm").read_bytes()
    assert not compare_instances(ours, sample("JPEG2000.dcm").read_bytes()).same
    assert not compare_instances(ours, b"\x00" * 200).same


# --- multipart ----------------------------------------------------------------------------------
def test_parse_multipart_with_and_without_content_length() -> None:
    payload = b"\r\n--b\r\nbinary--b\r\n\r\n"  # boundary-like bytes inside the part
    with_length = (b"--b\r\nContent-Type: application/dicom\r\nContent-Length: " + str(len(payload)).encode()
                   + b"\r\n\r\n" + payload + b"\r\n--b--\r\n")
    content_type = 'multipart/related; type="application/dicom"; boundary=b'
    assert parse_multipart(content_type, with_length) == [payload]
    plain = b"--xyz\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n--xyz\r\n\r\nBB\r\n--xyz--"
    assert parse_multipart('multipart/related; boundary="xyz"', plain) == [b"AAA", b"BB"]
    with pytest.raises(ValueError):
        parse_multipart("multipart/related", plain)


# --- filesystem ---------------------------------------------------------------------------------
def test_filesystem_store_list_fetch_and_rerun(tmp_path: Path) -> None:
    dest = open_destination(fs_conn(tmp_path / "edge"))
    assert isinstance(dest, FilesystemDestination)
    paths = [sample(n) for n in ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm")]
    acks = dest.store(paths)
    assert [a.status for a in acks] == [STORED] * 3
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        stored = tmp_path / "edge" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert stored.read_bytes() == path.read_bytes()
        assert dest.instances(ds.StudyInstanceUID) == {ds.SOPInstanceUID: ds.SeriesInstanceUID}
        assert hash_instance(dest.fetch(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)) \
            == hash_instance(path)
    again = dest.store(paths)
    assert [a.status for a in again] == [ALREADY_STORED_SAME] * 3
    assert not os.listdir(tmp_path / "edge" / ".incoming"), "temporary files left behind"


def test_filesystem_conflict_keeps_the_first_object(tmp_path: Path) -> None:
    dest = open_destination(fs_conn(tmp_path / "edge"))
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.InstitutionName = "changed"
    ds.save_as(tmp_path / "changed.dcm")
    acks = dest.store([sample("CT_small.dcm"), tmp_path / "changed.dcm", sample("CT_small.dcm")])
    assert [a.status for a in acks] == [STORED, CONFLICT, ALREADY_STORED_SAME]
    assert [a.ok for a in acks] == [True, False, True]
    assert "InstitutionName differs" in acks[1].detail
    back = dest.fetch(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert back == sample("CT_small.dcm").read_bytes()


def test_filesystem_unreadable_and_missing_files_are_acked(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"nope")
    dest = open_destination(fs_conn(tmp_path / "edge"))
    acks = dest.store([junk, tmp_path / "absent.dcm", sample("CT_small.dcm")])
    assert [a.status for a in acks] == [FAILED, FAILED, STORED]
    assert acks[0].path == str(junk) and "unreadable" in acks[0].detail


def test_filesystem_one_blocked_instance_fails_alone(tmp_path: Path) -> None:
    dest = FilesystemDestination("edge", tmp_path / "edge")
    ds = pydicom.dcmread(sample("CT_small.dcm"), stop_before_pixels=True)
    (tmp_path / "edge" / ds.StudyInstanceUID).write_text("a file where the study folder should be")
    acks = dest.store([sample("MR_small.dcm"), sample("CT_small.dcm"), sample("rtdose.dcm")])
    assert [a.status for a in acks] == [STORED, FAILED, STORED]
    assert "NotADirectoryError" in acks[1].detail


def test_filesystem_broken_target_raises_with_every_path_acked(tmp_path: Path) -> None:
    dest = FilesystemDestination("edge", tmp_path / "edge", retries=1, backoff=0.01)
    assert dest.store([sample("MR_small.dcm")])[0].status == STORED
    (tmp_path / "edge" / ".incoming").rmdir()
    (tmp_path / "edge" / ".incoming").write_text("staging area replaced by a file")
    paths = [sample("MR_small.dcm"), sample("CT_small.dcm"), sample("rtdose.dcm")]
    with pytest.raises(StoreFailed) as info:
        dest.store(paths)
    assert [a.status for a in info.value.acks] == [ALREADY_STORED_SAME, FAILED, FAILED]
    assert info.value.not_stored == 2 and "edge" in str(info.value) and "after 2 attempts" in str(info.value)


def test_open_destination_rejects_unknown_and_incomplete_connections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        open_destination(ConnectionSpec("t", "ftp", "host"))
    with pytest.raises(ConfigError):
        open_destination(ConnectionSpec("t", "fs"))
    with pytest.raises(ConfigError):
        open_destination(ConnectionSpec("t", "aws", extra={}))
    with pytest.raises(ConfigError):
        open_destinations([])


# --- several destinations -----------------------------------------------------------------------
def test_multi_destination_ok_only_where_every_copy_is_ok(tmp_path: Path) -> None:
    dest = open_destinations([fs_conn(tmp_path / "a", "edge"), fs_conn(tmp_path / "b", "cloud")])
    assert isinstance(dest, MultiDestination) and dest.name == "edge+cloud"
    ct = sample("CT_small.dcm")
    ds = pydicom.dcmread(ct)
    ds.SeriesDescription = "other"
    ds.save_as(tmp_path / "other.dcm")
    FilesystemDestination("pre", tmp_path / "b").store([tmp_path / "other.dcm"])  # cloud holds another object

    acks = dest.store([ct, sample("MR_small.dcm")])
    assert [a.status for a in acks] == [CONFLICT, STORED]
    assert [a.ok for a in acks] == [False, True]
    assert "edge: stored" in acks[0].detail and "cloud: conflict" in acks[0].detail
    assert dest.instances(ds.StudyInstanceUID) == {ds.SOPInstanceUID: ds.SeriesInstanceUID}
    assert dest.fetch(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == ct.read_bytes()
    dest.close()


def test_combine_acks_worst_status_wins() -> None:
    def ack(dest: str, status: str) -> StoreAck:
        return StoreAck("1.2", "1.1", dest, status, status in (STORED, ALREADY_STORED_SAME), status)

    combined = combine_acks("a+b", [[ack("a", STORED), ack("a", ALREADY_STORED_SAME), ack("a", FAILED)],
                                    [ack("b", ALREADY_STORED_SAME), ack("b", ALREADY_STORED_SAME),
                                     ack("b", CONFLICT)]])
    assert [(c.status, c.ok) for c in combined] == [(STORED, True), (ALREADY_STORED_SAME, True),
                                                    (CONFLICT, False)]
