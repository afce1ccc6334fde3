"""The default rules and MPI reconciliation over the whole synthetic archive: fire where they should,
keep every pixel and every private element."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from transform_testkit import private_values

from pacsmig.transform import Crosswalk, RuleSet, default_rules_path, transform_instance
from pacsmig.transform.rules import PrivateRef
from pacsmig.verify.hashing import hash_instance

pytestmark = pytest.mark.integration

WHEN = datetime(2025, 1, 1, tzinfo=UTC)
MPI_ISSUER = "HOSPITAL_MPI"


@pytest.fixture(scope="module")
def transformed(synthetic_archive, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """Every archive file transformed once: [(src, result, mpi_id)]."""
    rules = RuleSet.from_yaml(default_rules_path())
    crosswalk = Crosswalk.from_csv(synthetic_archive.crosswalk_path)
    out = tmp_path_factory.mktemp("transformed")
    results = []
    for i, src in enumerate(synthetic_archive.files):
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        mpi_id = crosswalk.lookup(str(ds.get("IssuerOfPatientID", "") or ""), str(ds.get("PatientID", "")))
        result = transform_instance(Path(src), out / f"{i}.dcm", rules=rules, mpi_patient_id=mpi_id,
                                    mpi_issuer=MPI_ISSUER, when=WHEN)
        results.append((Path(src), result, mpi_id))
    return results


def test_pixels_and_private_elements_kept(transformed) -> None:  # noqa: ANN001
    for src, result, _ in transformed:
        h0, h1 = hash_instance(src), hash_instance(result.path)
        assert (h1.raw_hash, h1.pixel_hash, h1.transfer_syntax_uid) == (
            h0.raw_hash, h0.pixel_hash, h0.transfer_syntax_uid), src
        before = pydicom.dcmread(src, stop_before_pixels=True)
        after = pydicom.dcmread(result.path, stop_before_pixels=True)
        assert private_values(after) == private_values(before), src
        assert after.file_meta.MediaStorageSOPInstanceUID == before.file_meta.MediaStorageSOPInstanceUID


def test_default_vendor_rules_fire_with_the_private_value(transformed, synthetic_archive) -> None:  # noqa: ANN001
    rules = {r.id: r for r in RuleSet.from_yaml(default_rules_path()) if r.op == "copy"}
    fired: Counter[str] = Counter()
    for src, result, _ in transformed:
        before = pydicom.dcmread(src, stop_before_pixels=True)
        after = pydicom.dcmread(result.path, stop_before_pixels=True)
        for rule_id, rule in rules.items():
            source: PrivateRef = rule.params["from"]
            target = rule.params["to"].keyword
            src_tag = source.find(before)
            if src_tag is None or not rule.when.holds(before):
                continue
            fired[rule_id] += 1
            assert float(getattr(after, target)) == pytest.approx(float(before[src_tag].value), rel=1e-6)
            assert any(c.rule_id == rule_id for c in result.changes)
        if "XRayTubeCurrent" in before:  # never overwritten by the vendor value
            assert after.XRayTubeCurrent == before.XRayTubeCurrent
    for rule_id in ("ge-dx-detected-exposure-index", "siemens-dfr-dose-area-product",
                    "siemens-ct-tube-current", "philips-mr-diffusion-b-value"):
        assert fired[rule_id] > 0, f"{rule_id} never fired on the archive ({dict(fired)})"


def test_mpi_reconciled_or_unmatched(transformed, synthetic_archive) -> None:  # noqa: ANN001
    unmatched = set(synthetic_archive.unmatched_patients)
    for src, result, mpi_id in transformed:
        before = pydicom.dcmread(src, stop_before_pixels=True)
        after = pydicom.dcmread(result.path, stop_before_pixels=True)
        key = (str(before.get("IssuerOfPatientID", "") or ""), str(before.PatientID))
        if mpi_id is None:
            assert key in unmatched, "a patient the crosswalk does not know must be a known unmatched one"
            assert after.PatientID == before.PatientID
            continue
        assert (after.PatientID, after.IssuerOfPatientID) == (mpi_id, MPI_ISSUER)
        others = {(str(i.PatientID), str(i.get("IssuerOfPatientID", "")))
                  for i in after.OtherPatientIDsSequence}
        assert (key[1], key[0]) in others
        coerce = [i for i in after.OriginalAttributesSequence
                  if i.ReasonForTheAttributeModification == "COERCE"]
        assert len(coerce) == 1
        assert coerce[0].ModifiedAttributesSequence[0].PatientID == before.PatientID
    truth = {s.study_instance_uid: s.mpi_patient_id for s in synthetic_archive.studies}
    for src, _, mpi_id in transformed:
        study = str(pydicom.dcmread(src, stop_before_pixels=True).StudyInstanceUID)
        if study in truth and mpi_id is not None:
            assert mpi_id == truth[study]
