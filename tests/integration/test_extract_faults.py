"""Extract under faults: a real pynetdicom Q/R SCP that aborts, refuses, skips, lies and sends junk."""

from __future__ import annotations

from pathlib import Path

import pytest
from extract_fakepacs import fake_pacs, make_instance, make_study, truncate_copy

from pacsmig.config import DicomNode
from pacsmig.dicom.retrieve import retrieve
from pacsmig.dicom.staging import STATUS_CANNOT_UNDERSTAND, _meta_end, file_sha256
from pacsmig.ledger import Reason
from testbed.orthanc import free_port

pytestmark = pytest.mark.integration


def _node(pacs_port: int, storage_port: int, timeout: float = 10) -> DicomNode:
    return DicomNode(host="127.0.0.1", port=pacs_port, ae_title="FAKEPACS", storage_port=storage_port,
                     timeout=timeout)


@pytest.fixture
def study(tmp_path: Path) -> tuple[str, list[dict[str, str]]]:
    return make_study(tmp_path / "source", n_series=2, per_series=6)


def _run(tmp_path: Path, index: list[dict[str, str]], study_uid: str, faults: dict, timeout: float = 10,
         **kwargs: object):
    port = free_port()
    with fake_pacs(tmp_path / "pacs", index, {"PACSMIG": ("127.0.0.1", port)}, faults=faults) as pacs:
        result = retrieve(_node(pacs.port, port, timeout), tmp_path / "staging", study_instance_uid=study_uid,
                          quarantine_root=tmp_path / "quarantine", backoff_s=0.01, **kwargs)
        return result, pacs.requests()


def _assert_all_arrived(result, entries: list[dict[str, str]]) -> None:
    assert set(result.received) == {e["sop"] for e in entries}
    assert result.missing == {}
    for e in entries:  # byte for byte: the dataset after our file meta is the source file's dataset
        staged = result.received[e["sop"]].path.read_bytes()
        source = Path(e["path"]).read_bytes()
        assert staged[_meta_end(staged):] == source[_meta_end(source):]
    assert result.complete


def test_abort_mid_move_is_re_pulled(tmp_path: Path, study) -> None:
    study_uid, entries = study
    # The aborted move leaves its sub-association idle; a short network timeout closes it.
    result, requests = _run(tmp_path, entries, study_uid, {"abort_after": {"k": 4, "times": 1}}, timeout=3)
    assert result.attempts[0]["error"] and result.attempts[0]["status"] is None
    assert len(requests) >= 2
    _assert_all_arrived(result, entries)


def test_a702_is_re_pulled_at_series_level(tmp_path: Path, study) -> None:
    study_uid, entries = study
    result, requests = _run(tmp_path, entries, study_uid, {"a702_after": {"k": 3, "times": 1}})
    assert result.attempts[0]["status"] == 0xA702
    assert [r["level"] for r in requests][0] == "STUDY"
    assert "SERIES" in [r["level"] for r in requests[1:]]
    _assert_all_arrived(result, entries)


def test_b000_failed_sub_operations_are_re_pulled(tmp_path: Path, study) -> None:
    study_uid, entries = study
    flaky = [entries[1]["sop"], entries[7]["sop"]]
    result, _ = _run(tmp_path, entries, study_uid, {"fail": {"sops": flaky, "times": 1}})
    first = result.attempts[0]
    assert first["status"] == 0xB000 and first["failed"] == 2
    assert set(first["failed_sop_uids"]) == set(flaky)
    _assert_all_arrived(result, entries)


def test_silently_skipped_instances_are_detected_and_re_pulled(tmp_path: Path, study) -> None:
    study_uid, entries = study
    skipped = [entries[0]["sop"], entries[9]["sop"]]
    result, requests = _run(tmp_path, entries, study_uid, {"skip": {"sops": skipped, "levels": ["STUDY"]}})
    assert result.attempts[0]["status"] == 0x0000 and result.attempts[0]["completed"] == len(entries) - 2
    assert {r["level"] for r in requests[1:]} == {"SERIES"}
    _assert_all_arrived(result, entries)


def test_instances_the_source_never_sends_are_reported_missing(tmp_path: Path, study) -> None:
    study_uid, entries = study
    skipped = entries[2]["sop"]
    faults = {"skip": {"sops": [skipped], "levels": ["STUDY", "SERIES", "IMAGE"]}}
    result, requests = _run(tmp_path, entries, study_uid, faults, max_rounds=3)
    assert result.missing == {entries[2]["series"]: {skipped}}
    assert not result.complete
    assert len(result.received) == len(entries) - 1
    assert [r["level"] for r in requests] == ["STUDY", "SERIES", "IMAGE"]


def test_two_objects_with_one_sop_uid_are_both_kept(tmp_path: Path, study) -> None:
    study_uid, entries = study
    twin = make_instance(tmp_path / "source" / "twin.dcm", study_uid, entries[0]["series"],
                         sop=entries[0]["sop"], value=200)
    index = entries + [twin]
    result, _ = _run(tmp_path, index, study_uid, {})
    assert len(result.conflicts) == 1
    conflict = result.conflicts[0]
    assert conflict.reason == Reason.UID_CONFLICT and conflict.sop_instance_uid == twin["sop"]
    source_hashes = {file_sha256(Path(entries[0]["path"])), file_sha256(Path(twin["path"]))}
    assert len(conflict.versions) == 2 and all(p.exists() for p in conflict.versions.values())
    assert {file_sha256(p) for p in conflict.versions.values()} == set(conflict.versions)
    # The first arrival stays staged, untouched; both versions differ and neither was overwritten.
    staged = result.received[twin["sop"]]
    assert staged.file_hash in conflict.versions and file_sha256(staged.path) == staged.file_hash
    assert len(source_hashes) == 2
    # Re-delivery of the same two objects adds nothing.
    again, _ = _run(tmp_path, index, study_uid, {})
    assert len(again.conflicts) == 1 and len(again.conflicts[0].versions) == 2
    assert len(list((tmp_path / "quarantine" / study_uid).glob("*.dcm"))) == 2


def test_malformed_instance_is_quarantined_and_the_rest_arrives(tmp_path: Path, study) -> None:
    study_uid, entries = study
    broken = truncate_copy(entries[3], tmp_path / "source" / "broken.dcm")
    index = [e for e in entries if e is not entries[3]] + [broken]
    result, _ = _run(tmp_path, index, study_uid, {}, max_rounds=2)
    assert len(result.malformed) == 1
    bad = result.malformed[0]
    assert bad.sop_instance_uid == entries[3]["sop"] and bad.reason == Reason.MALFORMED_INSTANCE
    assert bad.status == STATUS_CANNOT_UNDERSTAND and "truncated" in bad.detail
    assert bad.path.read_bytes().endswith(Path(broken["path"]).read_bytes()[-200:])
    assert entries[3]["sop"] in result.attempts[0]["failed_sop_uids"]  # our failure status reached the source
    assert set(result.received) == {e["sop"] for e in entries} - {entries[3]["sop"]}
    assert result.missing == {}  # accounted for: in quarantine, with its reason
