"""DICOMweb destination against a real Orthanc (DICOMweb plugin 1.7) and a real failing HTTP server.

Findings pinned here: Orthanc returns the stored file byte for byte through WADO-RS with
``transfer-syntax=*`` (every sample, Explicit VR Big Endian, RLE and JPEG 2000 included), so
read-back compares whole-file sha256; its STOW-RS answers success, with no warning, for a
different object under a known SOP Instance UID, which is why ``store`` checks presence and
compares content.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
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
    StoreFailed,
    compare_instances,
    open_destination,
    open_destinations,
)
from pacsmig.load.dicomweb import DicomWebDestination
from pacsmig.verify.hashing import hash_instance
from testbed.orthanc import OrthancServer, free_port

SAMPLES = ["CT_small.dcm", "MR_small_bigendian.dcm", "rtdose.dcm", "SC_rgb_rle.dcm",
           "emri_small_jpeg_2k_lossless.dcm"]


def sample(name: str) -> Path:
    return Path(get_testdata_file(name))


def conn_for(server: OrthancServer, **extra: object) -> ConnectionSpec:
    return ConnectionSpec("target_archive", "http", "127.0.0.1", server.http_port, schema="http",
                          extra={"dicomweb_path": "/dicom-web", **extra})


def copies(tmp_path: Path, name: str, n: int) -> list[Path]:
    """``n`` instances of one new study/series made from a sample (new SOP UIDs)."""
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = pydicom.dcmread(sample(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        path = tmp_path / f"{name}.{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


@pytest.fixture
def target(target_archive: OrthancServer) -> Iterator[OrthancServer]:
    target_archive.reset()
    yield target_archive


def test_store_list_fetch_returns_the_stored_bytes(target: OrthancServer) -> None:
    dest = open_destination(conn_for(target))
    paths = [sample(n) for n in SAMPLES]
    acks = dest.store(paths)
    assert [a.status for a in acks] == [STORED] * len(paths), [a.detail for a in acks]
    assert all(a.ok and a.destination == "target_archive" and "HTTP 200" in a.detail for a in acks)
    assert target.count() == len(paths)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        listed = dest.instances(ds.StudyInstanceUID)
        assert listed[ds.SOPInstanceUID] == ds.SeriesInstanceUID
        back = dest.fetch(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert hashlib.sha256(back).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest(), path.name
        assert hash_instance(back).pixel_hash == hash_instance(path).pixel_hash
    dest.close()


def test_restore_is_idempotent_and_verified(target: OrthancServer) -> None:
    dest = open_destination(conn_for(target))
    paths = [sample(n) for n in SAMPLES[:3]]
    dest.store(paths)
    again = dest.store(paths)
    assert [a.status for a in again] == [ALREADY_STORED_SAME] * 3
    assert all(a.ok and "identical bytes" in a.detail for a in again)
    assert target.count() == 3


def test_different_object_under_known_sop_uid_is_a_conflict(target: OrthancServer, tmp_path: Path) -> None:
    original = sample("CT_small.dcm")
    changed_header = tmp_path / "header.dcm"
    ds = pydicom.dcmread(original)
    ds.PatientName = "Someone^Else"
    ds.save_as(changed_header)
    changed_pixels = tmp_path / "pixels.dcm"
    ds = pydicom.dcmread(original)
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.tobytes()
    ds.save_as(changed_pixels)

    dest = open_destination(conn_for(target))
    assert dest.store([original])[0].status == STORED
    acks = dest.store([changed_header, changed_pixels])
    assert [a.status for a in acks] == [CONFLICT, CONFLICT]
    assert not any(a.ok for a in acks)
    assert "PatientName differs" in acks[0].detail and "Someone" not in acks[0].detail
    assert "pixel hash differs" in acks[1].detail
    ds = pydicom.dcmread(original, stop_before_pixels=True)
    kept = dest.fetch(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert kept == original.read_bytes(), "the target's object must be left as it was"


def test_same_uid_twice_in_one_call_lossless_variant_is_same(target: OrthancServer) -> None:
    """MR_small* share one SOP UID: the big-endian file, then a lossless RLE encoding of it."""
    big, rle = sample("MR_small_bigendian.dcm"), sample("MR_small_RLE.dcm")
    dest = open_destination(conn_for(target))
    acks = dest.store([big, rle])
    assert [a.status for a in acks] == [STORED, ALREADY_STORED_SAME], [a.detail for a in acks]
    assert "re-serialised by target, same content" in acks[1].detail
    ds = pydicom.dcmread(big, stop_before_pixels=True)
    back = dest.fetch(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert back == big.read_bytes()  # kept as received, even the retired transfer syntax
    assert compare_instances(rle.read_bytes(), back).same
    assert target.count() == 1


def test_batches_paging_and_an_unreadable_file(target: OrthancServer, tmp_path: Path) -> None:
    paths = copies(tmp_path, "CT_small.dcm", 7)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom" * 20)
    dest = open_destination(conn_for(target, batch_size=3, page_size=2))
    acks = dest.store([*paths[:3], junk, *paths[3:]])
    assert [a.status for a in acks] == [STORED] * 3 + [FAILED] + [STORED] * 4
    assert acks[3].path == str(junk) and "unreadable" in acks[3].detail
    study = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    assert len(dest.instances(study)) == 7  # four pages of two
    assert target.count() == 7


def test_target_down_retries_then_load_error(tmp_path: Path) -> None:
    server = OrthancServer(tmp_path / "down", name="DOWN", aet="DOWN", dicomweb=True).start()
    conn = conn_for(server, retries=2, backoff=0.01)
    server.stop()
    paths = [sample(n) for n in SAMPLES[:3]]
    with pytest.raises(StoreFailed) as info:
        open_destination(conn).store(paths)
    err = info.value
    assert err.destination == "target_archive" and err.not_stored == 3
    assert [a.path for a in err.acks] == [str(p) for p in paths]
    assert all(a.status == FAILED for a in err.acks)
    assert "3 of 3 instances not stored" in str(err) and "after 3 attempts" in str(err)


class _Handler(http.server.BaseHTTPRequestHandler):
    """QIDO answers "no instances"; STOW answers 503, as an overloaded archive does."""

    calls: list[str]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.calls.append("GET")
        body = json.dumps([]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.calls.append("POST")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_http_503_retries_then_load_error() -> None:
    calls: list[str] = []
    handler = type("H", (_Handler,), {"calls": calls})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        dest = DicomWebDestination("busy_vna", f"http://127.0.0.1:{httpd.server_port}/dicom-web",
                                   retries=3, backoff=0.01)
        paths = [sample(n) for n in SAMPLES]
        with pytest.raises(StoreFailed) as info:
            dest.store(paths)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert calls.count("POST") == 4  # first try + 3 retries, then give up
    assert info.value.not_stored == len(paths) and "HTTP 503" in str(info.value)
    assert "busy_vna" in str(info.value)


def test_synthetic_archive_into_dicomweb_and_a_folder(target: OrthancServer, synthetic_archive,  # noqa: ANN001
                                                      tmp_path: Path) -> None:
    """Edge folder + VNA at once: every file acked ok at both, listed by both, no duplicates on re-run."""
    files = synthetic_archive.files[:120]  # a few studies: the re-run reads every one back
    dest = open_destinations([conn_for(target), ConnectionSpec("edge", "fs", extra={"path": str(tmp_path)})])
    acks = dest.store(files)
    assert len(acks) == len(files) and all(a.ok for a in acks), {a.status for a in acks}
    by_study: dict[str, set[str]] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_study.setdefault(ds.StudyInstanceUID, set()).add(ds.SOPInstanceUID)
    for study, sops in by_study.items():
        assert set(dest.instances(study)) == sops
    assert target.count() == sum(len(s) for s in by_study.values())
    again = dest.store(files)
    assert {a.status for a in again} == {ALREADY_STORED_SAME}
    assert target.count() == sum(len(s) for s in by_study.values())
