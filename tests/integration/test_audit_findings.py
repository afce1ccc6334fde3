"""Audit findings on the testbed PACS: the generator's planted identity problems and private elements."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pacsmig.audit import pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def audited(loaded_legacy, storage_port, tmp_path_factory):  # noqa: ANN001, ANN201 - (Path, GroundTruth)
    """The whole audit once, from plain Python (the CLI's path), against the shared testbed PACS."""
    from pacsmig.config import DicomNode

    server, truth = loaded_legacy
    node = DicomNode("127.0.0.1", server.dicom_port, server.aet, storage_port=storage_port, timeout=30)
    out = tmp_path_factory.mktemp("audit")
    summary = pipeline.run_audit(
        node,
        out,
        date_from="2004-01-01",
        date_to="2024-12-31",
        samples_per_group=2,
        throughput_images_per_s=0,
        link_mbit_s=100.0,
    )
    return out, truth, summary


def test_id_health_finds_the_generators_issues(audited) -> None:  # noqa: ANN001
    out, truth, _ = audited
    expected = truth.expected_id_issues
    issues = pd.read_csv(out / "patient_id_issues.csv", keep_default_na=False, dtype=str)
    shared = issues[issues.kind == "same_id_different_demographics"]
    assert set(shared.patient_id) == set(expected["same_id_different_demographics"])
    split = issues[issues.kind == "same_demographics_different_ids"]
    found_people = {
        tuple(sorted(zip(g.issuer_of_patient_id, g.patient_id, strict=True)))
        for _, g in split.groupby("related")
    }
    assert found_people == {tuple(map(tuple, ids)) for ids in expected["same_demographics_different_ids"]}
    # the clinic's one hospital-format ID is a format outlier within the clinic's issuer
    outliers = issues[issues.kind == "id_format_outlier"]
    assert (outliers.issuer_of_patient_id == "CLINIC_B").any()


def test_private_tag_audit_finds_the_generators_elements(audited) -> None:  # noqa: ANN001
    out, truth, summary = audited
    tags = pd.read_csv(out / "private_tags.csv", keep_default_na=False)
    found = set(zip(tags.private_creator, tags.group, tags.element_offset, strict=True))
    assert truth.private_elements <= found
    rows = tags.set_index(["private_creator", "group", "element_offset"])
    dap = rows.loc[("SIEMENS DFR.01 ORIGINAL", 0x0017, 0x42)]
    assert dap["name"] == "Dose Area Product" and bool(dap["needs_coercion_rule"])
    assert ";" in rows.loc[("SIEMENS CT VA0  GEN", 0x0019, 0x21)]["slots"]  # seen in more than one slot
    assert summary["samples"]["missing"] == 0


def test_assessment_totals_and_report(audited) -> None:  # noqa: ANN001
    out, truth, _ = audited
    body = json.loads((out / "assessment.json").read_text())
    assert (body["studies"], body["series"], body["instances"]) == (
        truth.n_studies,
        truth.n_series,
        truth.n_instances,
    )
    for modality, counts in truth.by_modality().items():
        assert body["by_modality"][modality]["studies"] == counts["studies"]
    # an estimate from a few samples: right order of magnitude, method stated, measured throughput used
    assert truth.total_bytes / 5 < body["bytes"] < truth.total_bytes * 5
    assert "sampled" in body["bytes_method"]
    assert body["timeline"]["throughput_source"] == "measured while sampling"
    assert body["timeline"]["throughput_images_per_s"] > 0
    assert body["undated_studies"] == sum(s.study_date is None for s in truth.studies)
    html = (out / "assessment.html").read_text()
    assert "Dose Area Product" in html and "data:image/png;base64," in html
    for s in truth.studies:  # no patient names in the CIO report
        assert s.patient_name not in html
