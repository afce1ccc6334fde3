"""Read-back checks and header diff on real DICOM bytes, without network: what is a match, what is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, RLELossless
from validate_arrange import dataset_bytes, make_archive, read

from pacsmig.verify.hashing import hash_instance
from pacsmig.verify.headerdiff import header_diff, parse_tag
from pacsmig.verify.readback import NO_STAGED_SOURCE, InstanceTask, check_instance
from pacsmig.verify.sample import _largest_remainder, primary_modality


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return make_archive(tmp_path_factory.mktemp("unit_archive"))


def _task(path: Path, changes: tuple = (), staged: bool = True) -> InstanceTask:
    h = hash_instance(path)
    return InstanceTask(
        h.study_instance_uid,
        h.series_instance_uid,
        h.sop_instance_uid,
        h.pixel_hash,
        h.raw_hash,
        h.number_of_frames,
        h.transfer_syntax_uid,
        str(path) if staged else None,
        changes,
    )


def test_identical_bytes_verify(archive) -> None:  # noqa: ANN001
    path = archive.instances["ct"][0].path
    result = check_instance(_task(path), path.read_bytes())
    assert (result.status, result.detail) == ("verified", "")
    assert result.target_pixel_hash == result.source_pixel_hash


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_lossless_transcode_is_a_match(archive, syntax) -> None:  # noqa: ANN001
    path = archive.instances["us"][0].path
    ds = read(path)
    ds.compress(syntax, generate_instance_uid=False)
    result = check_instance(_task(path), dataset_bytes(ds))
    assert result.status == "verified", result.detail
    assert result.target_transfer_syntax == syntax and result.target_raw_hash != result.source_raw_hash
    assert result.target_frames == 4


def test_pixel_off_by_one_is_a_mismatch(archive) -> None:  # noqa: ANN001
    path = archive.instances["ct"][1].path
    ds = read(path)
    arr = ds.pixel_array.copy()
    arr[0, 0] = arr[0, 0] + 1 if arr[0, 0] < 4000 else arr[0, 0] - 1
    ds.PixelData = arr.tobytes()
    result = check_instance(_task(path), dataset_bytes(ds))
    assert result.status == "pixel_mismatch"
    assert "pixel hash differs" in result.detail and "raw PixelData differs" in result.detail


def test_lossy_looking_transcode_is_a_mismatch(archive) -> None:  # noqa: ANN001
    """A lossy codec changes values: simulated by quantising, then encoding losslessly."""
    path = archive.instances["us"][0].path
    ds = read(path)
    ds.PixelData = ((ds.pixel_array // 4) * 4).astype(np.uint8).tobytes()
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    assert check_instance(_task(path), dataset_bytes(ds)).status == "pixel_mismatch"


def test_lost_frame_is_a_mismatch(archive) -> None:  # noqa: ANN001
    path = archive.instances["tomo"][0].path
    ds = read(path)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData[: 2 * 16 * 16 * 2]
    result = check_instance(_task(path), dataset_bytes(ds))
    assert result.status == "pixel_mismatch" and "frame count 2 != source 3" in result.detail


def test_other_sop_uid_and_garbage_are_mismatches(archive) -> None:  # noqa: ANN001
    ct = archive.instances["ct"]
    assert (
        check_instance(_task(ct[0].path), ct[1].path.read_bytes()).detail
        == "target returned another SOP Instance UID"
    )
    assert check_instance(_task(ct[0].path), b"not dicom at all").status == "pixel_mismatch"


def test_header_change_beyond_the_recorded_ones(archive) -> None:  # noqa: ANN001
    path = archive.instances["mr"][0].path
    ds = read(path)
    ds.PatientID = "MPI-1"
    ds.StudyDescription = "CHANGED"
    recorded = ({"tag": "(0010,0020)", "keyword": "PatientID", "action": "replace", "new": "MPI-1"},)
    result = check_instance(_task(path, recorded), dataset_bytes(ds))
    assert (result.status, result.detail) == ("header_mismatch", "StudyDescription differs")
    del ds.StudyDescription
    assert (
        check_instance(_task(path, recorded), dataset_bytes(ds)).detail
        == "StudyDescription missing at target"
    )


def test_recorded_change_not_applied_as_recorded(archive) -> None:  # noqa: ANN001
    path = archive.instances["mr"][0].path
    ds = read(path)
    ds.PatientID = "MPI-OTHER"
    recorded = ({"tag": "00100020", "action": "replace", "new": "MPI-1"},)
    assert (
        check_instance(_task(path, recorded), dataset_bytes(ds)).detail
        == "PatientID differs from the recorded new value"
    )


def test_original_attributes_sequence_explains_its_changes() -> None:
    src, tgt = Dataset(), Dataset()
    src.PatientID, src.AccessionNumber, src.Modality = "X", "A1", "CT"
    tgt.PatientID, tgt.AccessionNumber, tgt.Modality = "MPI", "A1", "CT"
    old = Dataset()
    old.PatientID = "X"
    item = Dataset()
    item.ModifiedAttributesSequence = Sequence([old])
    tgt.OriginalAttributesSequence = Sequence([item])
    assert header_diff(src, tgt) == []
    tgt.Modality = "MR"
    assert header_diff(src, tgt) == ["Modality differs"]
    bare = Dataset()
    bare.OriginalAttributesSequence = Sequence([Dataset()])
    assert header_diff(Dataset(), bare) == ["OriginalAttributesSequence changed with no change recorded"]


def test_file_meta_and_group_length_are_ignored(archive) -> None:  # noqa: ANN001
    path = archive.instances["ct"][2].path
    ds = read(path)
    ds.file_meta.ImplementationVersionName = "OTHER_ARCHIVE"
    ds.file_meta.SourceApplicationEntityTitle = "VNA"
    assert check_instance(_task(path), dataset_bytes(ds)).status == "verified"


def test_missing_staged_source_is_noted_not_hidden(archive) -> None:  # noqa: ANN001
    path = archive.instances["ct"][0].path
    result = check_instance(_task(path, staged=False), path.read_bytes())
    assert (result.status, result.detail) == ("verified", NO_STAGED_SOURCE)


def test_parse_tag_forms() -> None:
    assert (
        parse_tag("(0010,0020)") == parse_tag("0010,0020") == parse_tag("00100020") == parse_tag("PatientID")
    )
    assert parse_tag(0x00100020) == 0x00100020 and parse_tag("nonsense") is None and parse_tag("") is None


def test_sample_helpers() -> None:
    assert (
        primary_modality("SR\\CT") == "CT"
        and primary_modality("KO") == "KO"
        and primary_modality(None) == "UNKNOWN"
    )
    assert _largest_remainder({"a": 24, "b": 12, "c": 4}, 4) == {"a": 2, "b": 1, "c": 1}
    assert sum(_largest_remainder({"a": 1, "b": 1, "c": 1}, 2).values()) == 2
