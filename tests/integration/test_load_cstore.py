"""C-STORE destination against a real Orthanc: store as stored, C-FIND listing, C-GET read-back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pacsmig.config import ConnectionSpec
from pacsmig.load import ALREADY_STORED_SAME, CONFLICT, FAILED, STORED, StoreFailed, open_destination
from pacsmig.load.compare import compare_instances
from pacsmig.load.cstore import CStoreDestination
from pacsmig.verify.hashing import hash_instance
from pydicom.data import get_testdata_file
from pynetdicom.dsutils import split_dataset

from testbed.orthanc import OrthancServer, free_port

SAMPLES = ["CT_small.dcm", "MR_small_implicit.dcm", "rtdose.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm"]


def sample(name: str) -> Path:
    return Path(get_testdata_file(name))


def conn_for(server: OrthancServer, **extra: object) -> ConnectionSpec:
    return ConnectionSpec("target_archive", "dicom", "127.0.0.1", server.dicom_port,
                          extra={"ae_title": server.aet, "calling_ae_title": "PACSMIG", "timeout": 10,
                                 **extra})


def _dataset_bytes(data: bytes, tmp_path: Path) -> bytes:
    """The encoded dataset after the File Meta group (what goes over the wire)."""
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    _meta, offset = split_dataset(path)
    return data[offset:]


@pytest.fixture
def vna(tmp_path: Path) -> Iterator[OrthancServer]:
    """A C-STORE target that knows our AE (Orthanc aborts C-FIND/C-GET from unknown AEs)."""
    with OrthancServer(tmp_path / "vna", name="VNA", aet="VNA",
                       modalities={"pacsmig": ("PACSMIG", "127.0.0.1", free_port())}) as server:
        yield server


def test_cstore_roundtrip_sends_files_as_stored(vna: OrthancServer, tmp_path: Path) -> None:
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
        # Orthanc writes its own File Meta group; the dataset itself comes back byte for byte,
        # in the transfer syntax it was sent in (JPEG 2000 and RLE were not transcoded).
        assert _dataset_bytes(back, tmp_path) == _dataset_bytes(path.read_bytes(), tmp_path), path.name
        assert pydicom.dcmread(back).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
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


def test_cstore_target_down_retries_then_load_error(tmp_path: Path) -> None:
    server = OrthancServer(tmp_path / "down", name="DOWN", aet="DOWN").start()
    conn = conn_for(server, retries=2, backoff=0.01)
    server.stop()
    paths = [sample(n) for n in SAMPLES[:2]]
    with pytest.raises(StoreFailed) as info:
        open_destination(conn).store(paths)
    assert info.value.not_stored == 2 and [a.status for a in info.value.acks] == [FAILED, FAILED]
    assert "after 3 attempts" in str(info.value) and "target_archive" in str(info.value)
