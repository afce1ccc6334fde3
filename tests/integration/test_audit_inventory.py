"""The C-FIND inventory against real Q/R SCPs (Orthanc, capped Orthanc, dcmqrscp) vs ground truth."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from pacsmig.audit.pipeline import merge, plan_windows, run_window
from pacsmig.config import DicomNode
from testbed.orthanc import OrthancServer, free_port

pytestmark = pytest.mark.integration

DATE_FROM, DATE_TO = "2004-01-01", "2024-12-31"


def inventory(node: DicomNode, out: Path) -> tuple[pd.DataFrame, list[dict]]:
    windows = [run_window(node, label, out) for label in plan_windows(DATE_FROM, DATE_TO, "year")]
    merge(windows, out)
    return pd.read_parquet(out / "inventory.parquet"), windows


def assert_matches_truth(inv: pd.DataFrame, truth, *, demographics: bool = True) -> None:  # noqa: ANN001
    assert inv["study_instance_uid"].is_unique
    assert set(inv["study_instance_uid"]) == {s.study_instance_uid for s in truth.studies}
    rows = inv.set_index("study_instance_uid")
    for s in truth.studies:
        row = rows.loc[s.study_instance_uid]
        assert (row.n_series, row.n_instances) == (s.n_series, s.n_instances), s.study_instance_uid
        assert row.modalities == "\\".join(sorted(s.modalities))
        assert row.patient_id == (s.patient_id or None)
        if s.study_date is None:
            assert pd.isna(row.study_date) and row.study_date_status == "missing" and row.window == "undated"
        else:
            assert row.study_date.strftime("%Y%m%d") == s.study_date
        if demographics and _latin1(s.patient_name):
            # decoded with the answer's character set; Orthanc answers in Latin-1 (its DefaultEncoding),
            # so names outside Latin-1 ("Dvořák") arrive without those letters: a source limit
            assert row.patient_name == s.patient_name
        if demographics:
            assert (
                row.issuer_of_patient_id if pd.notna(row.issuer_of_patient_id) else None
            ) == s.issuer_of_patient_id


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def test_inventory_of_the_testbed_pacs_matches_ground_truth(loaded_legacy, legacy_node, tmp_path) -> None:  # noqa: ANN001
    _, truth = loaded_legacy
    inv, windows = inventory(legacy_node, tmp_path)
    assert_matches_truth(inv, truth)
    assert any(s.study_date is None for s in truth.studies)  # the null-date study exists ...
    assert (inv["window"] == "undated").sum() == sum(
        s.study_date is None for s in truth.studies
    )  # ... and is found
    assert sum(w["walked_studies"] for w in windows) == 0  # Orthanc returns the study-level counts
    assert {"CT", "MR", "US"} <= set(inv["primary_modality"])


def test_a_capped_source_is_split_until_every_study_is_found(
    synthetic_archive, storage_port, tmp_path
) -> None:  # noqa: ANN001
    truth = synthetic_archive
    keep = truth.studies[:24]
    files = [f for s in keep for f in truth.study_files(s.study_instance_uid)]
    with OrthancServer(
        tmp_path / "capped",
        name="CAPPED",
        aet="CAPPED",
        limit_find_results=5,
        modalities={"pacsmig": ("PACSMIG", "127.0.0.1", storage_port)},
    ) as server:
        assert server.upload_files(files) == len(files)
        node = DicomNode(
            "127.0.0.1", server.dicom_port, "CAPPED", storage_port=storage_port, find_cap=5, timeout=30
        )
        inv, windows = inventory(node, tmp_path / "audit")

    class Part:  # the ground truth restricted to what was loaded
        studies = keep

    assert_matches_truth(inv, Part)
    assert sum(w["splits"] for w in windows) > 0


def test_a_peer_that_aborts_is_an_error_not_a_truncation(synthetic_archive, tmp_path) -> None:  # noqa: ANN001
    from pacsmig.errors import DicomError

    with OrthancServer(tmp_path / "strict", name="STRICT", aet="STRICT") as server:  # does not know PACSMIG
        node = DicomNode("127.0.0.1", server.dicom_port, "STRICT", find_cap=5, timeout=30)
        with pytest.raises(DicomError, match="aborted|rejected"):
            run_window(node, "2015-01-01..2015-12-31", tmp_path)


@pytest.fixture
def dcmqrscp(synthetic_archive, tmp_path) -> Iterator[tuple[int, str]]:  # noqa: ANN001
    """dcmtk's Q/R SCP (returns only the keys it must) loaded with the archive by storescu."""
    if not shutil.which("dcmqrscp") or not shutil.which("storescu"):
        pytest.skip("dcmtk is not installed")
    db = tmp_path / "db"
    db.mkdir()
    port = free_port()
    cfg = tmp_path / "dcmqrscp.cfg"
    cfg.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQR {db} RW (400, 2048mb) ANY\nAETable END\n"
    )
    # dcmqrscp stores what it negotiates: hand it uncompressed files (the Q/R index is what is tested)
    plain = tmp_path / "plain"
    plain.mkdir()
    for k, path in enumerate(synthetic_archive.files):
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.save_as(plain / f"{k:05d}.dcm", enforce_file_format=True)
    log = open(tmp_path / "dcmqrscp.log", "wb")  # noqa: SIM115 - closed in teardown
    env = dict(os.environ, TCP_NODELAY="1")  # Debian's dcmtk leaves Nagle on: 16 images/s instead of 1000+
    proc = subprocess.Popen(
        ["dcmqrscp", "-c", str(cfg), str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        store = subprocess.run(
            ["storescu", "-R", "-aec", "DCMQR", "+sd", "+r", "127.0.0.1", str(port), str(plain)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert store.returncode == 0, store.stderr[-2000:]
        yield port, "DCMQR"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_inventory_through_dcmqrscp_walks_series_and_images(dcmqrscp, synthetic_archive, tmp_path) -> None:  # noqa: ANN001
    port, aet = dcmqrscp
    node = DicomNode("127.0.0.1", port, aet, find_cap=1000, timeout=30)
    inv, windows = inventory(node, tmp_path / "audit")
    # dcmqrscp keeps no IssuerOfPatientID and answers without a character set: identities are compared by ID
    assert_matches_truth(inv, synthetic_archive, demographics=False)
    assert sum(w["walked_studies"] for w in windows) == synthetic_archive.n_studies
    assert set(inv["counts_source"]) == {"image"}
