"""The read-back's cheap paths must prove exactly what the full ones prove: pixel identity by raw bytes,
header diff without parsing identical elements, streamed multipart parsing."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian, RLELossless
from validate_arrange import dataset_bytes, make_archive, read

from pacsmig.load.dicomweb import iter_multipart, parse_multipart
from pacsmig.verify import readback
from pacsmig.verify.hashing import hash_instance
from pacsmig.verify.headerdiff import header_diff
from pacsmig.verify.readback import DECODED, RAW_IDENTICAL, InstanceTask, check_instance, header_findings


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return make_archive(tmp_path_factory.mktemp("shortcut_archive"))


def _task(path: Path, staged: bool = True) -> InstanceTask:
    h = hash_instance(path)
    return InstanceTask(h.study_instance_uid, h.series_instance_uid, h.sop_instance_uid, h.pixel_hash,
                        h.raw_hash, h.number_of_frames, h.transfer_syntax_uid, str(path) if staged else None)


def _no_decode(ds: Dataset) -> str:
    raise AssertionError("pixels decoded although the raw bytes prove them")


def test_identical_pixels_are_proven_without_decoding(archive, monkeypatch) -> None:  # noqa: ANN001
    for inst in archive.all():
        task = _task(inst.path)
        expected = hash_instance(inst.path).pixel_hash
        with monkeypatch.context() as m:
            if expected != "no-pixel-data":
                m.setattr(readback, "pixel_hash", _no_decode)
            result = check_instance(task, inst.path.read_bytes())
        assert result.status == "verified", result.detail
        assert result.target_pixel_hash == expected
        if expected != "no-pixel-data":
            assert result.method == RAW_IDENTICAL


@pytest.mark.parametrize("key", ["ct", "us", "tomo"])
def test_one_byte_of_pixel_data_changed_is_never_a_match(archive, key) -> None:  # noqa: ANN001
    """Same syntax, same decode inputs, one PixelData byte different: the raw path must not take it."""
    path = archive.instances[key][0].path
    ds = read(path)
    data = bytearray(ds.PixelData)
    data[len(data) // 2] ^= 0x01
    ds.PixelData = bytes(data)
    result = check_instance(_task(path), dataset_bytes(ds))
    assert result.status == "pixel_mismatch"
    assert result.method == DECODED
    assert result.target_raw_hash != result.source_raw_hash
    assert result.target_pixel_hash != result.source_pixel_hash
    assert "raw PixelData differs" in result.detail


def test_same_bytes_read_differently_are_decoded(archive) -> None:  # noqa: ANN001
    """PixelRepresentation flipped at the target: same bytes, other pixels (signed): decoded, mismatch."""
    path = archive.instances["ct"][1].path
    ds = read(path)
    ds.PixelRepresentation = 1
    result = check_instance(_task(path), dataset_bytes(ds))
    assert result.target_raw_hash == result.source_raw_hash
    assert (result.status, result.method) == ("pixel_mismatch", DECODED)
    assert "pixel hash differs" in result.detail


def test_other_syntax_or_no_staged_source_is_decoded(archive) -> None:  # noqa: ANN001
    path = archive.instances["ct"][0].path
    ds = read(path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # native bytes unchanged, syntax not
    result = check_instance(_task(path), dataset_bytes(ds))
    assert (result.status, result.method) == ("verified", DECODED), result.detail
    rle = read(path)
    rle.compress(RLELossless, generate_instance_uid=False)
    result = check_instance(_task(path), dataset_bytes(rle))
    assert (result.status, result.method) == ("verified", DECODED), result.detail
    result = check_instance(_task(path, staged=False), path.read_bytes())
    assert (result.status, result.method) == ("verified", DECODED)


def test_staged_header_names_the_pixel_element(archive, tmp_path: Path) -> None:  # noqa: ANN001
    _, keyword = readback.read_staged_header(str(archive.instances["ct"][0].path))
    assert keyword == "PixelData"
    ko = next(i for i in archive.instances["mr"] if i.path.name.endswith("ko.dcm"))
    assert readback.read_staged_header(str(ko.path))[1] is None
    ds = read(archive.instances["ct"][0].path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "implicit.dcm"
    path.write_bytes(dataset_bytes(ds))
    assert readback.read_staged_header(str(path))[1] == "PixelData"


def _tampered(base: Dataset) -> list[tuple[str, Dataset, tuple[dict, ...]]]:
    cases: list[tuple[str, Dataset, tuple[dict, ...]]] = []

    def case(name: str, changes: tuple[dict, ...] = ()):  # noqa: ANN202
        ds = pydicom.dcmread(BytesIO(dataset_bytes(base)))
        cases.append((name, ds, changes))
        return ds

    case("identical")
    case("description").StudyDescription = "CHANGED"
    del case("removed").InstanceNumber
    case("added").ImageComments = "NEW"
    ds = case("recorded but unchanged", ({"tag": "(0010,0020)", "action": "replace", "new": "MPI-9"},))
    ds.StudyID = "other"
    ds = case("recorded and applied", ({"tag": "(0010,0020)", "action": "replace", "new": "MPI-9"},))
    ds.PatientID = "MPI-9"
    case("charset").SpecificCharacterSet = "ISO_IR 100"
    ds = case("private")
    ds.private_block(0x0011, "PACSMIG TEST", create=True).add_new(0x01, "LO", "private value")
    ds = case("sequence item")
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "1", "DCM", "x"
    ds.ProcedureCodeSequence = Sequence([item])
    ds = case("padding only")
    ds.StudyDescription = str(base.get("StudyDescription", "")) + " "
    return cases


def test_header_findings_equal_header_diff(archive) -> None:  # noqa: ANN001
    base = read(archive.instances["mr"][0].path)
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "0", "DCM", "y"
    base.ProcedureCodeSequence = Sequence([item])
    base.SpecificCharacterSet = "ISO_IR 192"
    base.StudyDescription = "Études"
    source_bytes = dataset_bytes(base)
    seen = set()
    for name, target, changes in _tampered(base):
        fast = header_findings(pydicom.dcmread(BytesIO(source_bytes)), target, changes)
        target_again = pydicom.dcmread(BytesIO(dataset_bytes(target)))
        full = header_diff(pydicom.dcmread(BytesIO(source_bytes)), target_again, changes)
        assert fast == full, name
        seen.add(bool(full))
    assert seen == {True, False}


def _multipart(parts: list[bytes], lengths: bool, boundary: str = "b0und") -> bytes:
    out = b""
    for p in parts:
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n"
        if lengths:
            head += f"Content-Length: {len(p)}\r\n"
        out += head.encode() + b"\r\n" + p + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("lengths", [True, False])
@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_streamed_multipart_equals_whole_body(lengths: bool, chunk: int) -> None:
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (0, 1, 500, 37)]
    parts.append(b"--b0un\r\n--b0u")  # delimiter-like bytes inside a part
    body = _multipart(parts, lengths)
    ctype = 'multipart/related; type="application/dicom"; boundary=b0und'
    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)]
    assert list(iter_multipart(ctype, pieces)) == parts == parse_multipart(ctype, body)


def test_streamed_multipart_drops_a_cut_part() -> None:
    parts = [b"A" * 100, b"B" * 100]
    ctype = "multipart/related; boundary=b0und"
    for lengths in (True, False):
        body = _multipart(parts, lengths)
        cut = body[: body.index(b"B" * 100) + 50]
        assert list(iter_multipart(ctype, [cut])) == parts[:1]
    with pytest.raises(ValueError):
        list(iter_multipart("multipart/related", [b""]))
