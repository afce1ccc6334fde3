"""C-STORE destination against a real Orthanc: store as stored, C-FIND listing, C-GET read-back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pacsmig.config import ConnectionSpec
from pacsmig.load import (
    ALREADY_STORED_SAME,
    CONFLICT,
    FAILED,
    STORED,
    DestinationUnavailable,
    StoreFailed,
    open_destination,
)
from pacsmig.load.compare import compare_instances
from pacsmig.load.cstore import CStoreDestination
from pacsmig.verify.hashing import hash_instance
from testbed.orthanc import OrthancServer, free_port

SAMPLES = ["CT_small.dcm", "MR_small_implicit.dcm", "rtdose.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm"]


def sample(name: str) -> Path:
    return Path(get_testdata_file(name))


def copies(tmp_path: Path, name: str, n: int) -> list[Path]:
    """``n`` instances of one new study/series made from a sample (new SOP UIDs)."""
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = pydicom.dcmread(sample(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / f"{name}.{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def conn_for(server: OrthancServer, **extra: object) -> ConnectionSpec:
    return ConnectionSpec("target_archive", "dicom", "127.0.0.1", server.dicom_port,
                          extra={"ae_title": server.aet, "calling_ae_title": "PACSMIG", "timeout": 10,
                                 **extra})


@pytest.fixture
def vna(tmp_path: Path) -> Iterator[OrthancServer]:
    """A C-STORE target that knows our AE (Orthanc aborts C-FIND/C-GET from unknown AEs)."""
    with OrthancServer(tmp_path / "vna", name="VNA", aet="VNA",
                       modalities={"pacsmig": ("PACSMIG", "127.0.0.1", free_port())}) as server:
        yield server


def test_cstore_roundtrip_sends_files_as_stored(vna: OrthancServer) -> None:
    dest = open_destination(conn_for(vna))
    assert isinstance(dest, CStoreDestination)
    paths = [sample(n) for n in SAMPLES]
    acks = dest.store(paths)
    assert [a.status for a in acks] == [STORED] * len(paths), [a.detail for a in acks]
    assert all("C-STORE status 0x0000" in a.detail for a in acks)
    # rtdose.dcm's File Meta names another SOP Instance UID than its dataset.
    assert "File Meta corrected" in acks[SAMPLES.index("rtdose.dcm")].detail
    assert vna.count() == len(paths)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert dest.instances(ds.StudyInstanceUID)[ds.SOPInstanceUID] == ds.SeriesInstanceUID
        back = dest.fetch(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        # Orthanc (DCMTK) re-serialises what it receives by DIMSE: its own File Meta group, no
        # Data Set Trailing Padding (CT_small has some), its own item encoding. So the read-back
        # is judged by content: same transfer syntax, same PixelData bytes (JPEG 2000 and RLE
        # were not transcoded), same decoded pixels, every data element equal.
        sent, kept = hash_instance(path), hash_instance(back)
        assert kept.transfer_syntax_uid == sent.transfer_syntax_uid, path.name
        assert (kept.raw_hash, kept.pixel_hash) == (sent.raw_hash, sent.pixel_hash), path.name
        assert hash_instance(back).pixel_hash == hash_instance(path).pixel_hash
        assert compare_instances(path.read_bytes(), back).same


def test_cstore_rerun_and_conflict(vna: OrthancServer, tmp_path: Path) -> None:
    dest = open_destination(conn_for(vna, batch_size=2))
    paths = [sample(n) for n in SAMPLES[:3]]
    dest.store(paths)
    again = dest.store(paths)
    assert [a.status for a in again] == [ALREADY_STORED_SAME] * 3
    assert all("re-serialised by target, same content" in a.detail for a in again)
    ds = pydicom.dcmread(paths[0])
    ds.InstitutionName = "elsewhere"
    ds.save_as(tmp_path / "other.dcm")
    ack = dest.store([tmp_path / "other.dcm"])[0]
    assert ack.status == CONFLICT and not ack.ok and "InstitutionName differs" in ack.detail
    assert vna.count() == 3


def test_cstore_never_re_encodes_a_rejected_transfer_syntax(tmp_path: Path) -> None:
    uncompressed_only = {"AcceptedTransferSyntaxes": ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]}
    with OrthancServer(tmp_path / "strict", name="STRICT", aet="STRICT", extra_config=uncompressed_only,
                       modalities={"pacsmig": ("PACSMIG", "127.0.0.1", free_port())}) as server:
        acks = open_destination(conn_for(server)).store([sample("CT_small.dcm"), sample("JPEG2000.dcm")])
        assert [a.status for a in acks] == [STORED, FAILED]
        assert "presentation context rejected" in acks[1].detail
        assert "1.2.840.10008.1.2.4.91" in acks[1].detail
        assert server.count() == 1


def test_cstore_capped_listing_is_an_error_not_a_short_answer(tmp_path: Path) -> None:
    """A target that truncates C-FIND answers must not make stored instances look absent."""
    paths = copies(tmp_path, "CT_small.dcm", 5)
    with OrthancServer(tmp_path / "capped", name="CAPPED", aet="CAPPED", limit_find_results=2,
                       modalities={"pacsmig": ("PACSMIG", "127.0.0.1", free_port())}) as server:
        dest = open_destination(conn_for(server, retries=0))
        assert all(a.status == STORED for a in dest.store(paths[:3]))
        with pytest.raises(StoreFailed) as info:
            dest.store(paths)
        assert "truncated" in str(info.value) and info.value.not_stored == 5
        with pytest.raises(DestinationUnavailable):
            dest.instances(pydicom.dcmread(paths[0]).StudyInstanceUID)


def test_cstore_target_down_retries_then_load_error() -> None:
    # Nothing listens on the port: the peer is down (as a stopped Orthanc is, without its
    # seconds-long shutdown).
    conn = ConnectionSpec("target_archive", "dicom", "127.0.0.1", free_port(),
                          extra={"ae_title": "DOWN", "retries": 2, "backoff": 0.01})
    paths = [sample(n) for n in SAMPLES[:2]]
    with pytest.raises(StoreFailed) as info:
        open_destination(conn).store(paths)
    assert info.value.not_stored == 2 and [a.status for a in info.value.acks] == [FAILED, FAILED]
    assert "after 3 attempts" in str(info.value) and "target_archive" in str(info.value)
