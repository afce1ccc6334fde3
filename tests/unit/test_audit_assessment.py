"""Assessment maths: timeline and seeding advice, bytes estimate, per-modality/year totals, report, suite."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from pydicom.dataset import Dataset

from pacsmig.audit.assessment import SEEDING_THRESHOLD_BYTES, build_assessment, by_modality, timeline
from pacsmig.audit.inventory import needs_walk, parse_study_date, study_record
from pacsmig.audit.profile import bytes_method_text, estimate_bytes, primary_modality, size_profile
from pacsmig.audit.report import human_bytes, render


def test_timeline_takes_the_slower_of_rate_and_link() -> None:
    t = timeline(3_600_000, 10**12, 100.0, 10_000.0)
    assert t["bottleneck"] == "throughput" and t["hours"] == pytest.approx(10.0)
    t = timeline(1000, 10**12, 1000.0, 100.0)  # 1 TB at 100 Mbit/s: 80 000 s
    assert t["bottleneck"] == "link" and t["seconds"] == pytest.approx(80_000)
    assert not t["physical_seeding_advised"]


def test_physical_seeding_above_50_tb() -> None:
    below = timeline(10**8, SEEDING_THRESHOLD_BYTES, 500.0, 10_000.0)
    above = timeline(10**8, 51 * 10**12, 500.0, 10_000.0)
    assert not below["physical_seeding_advised"] and above["physical_seeding_advised"]
    assert "seed" in above["advice"] and "51.0 TB" in above["advice"]


def _inventory() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "study_instance_uid": ["1.1", "1.2", "1.3", "1.4"],
            "modalities": ["CT\\SR", "CT", "MR", "CR"],
            "primary_modality": ["CT", "CT", "MR", "CR"],
            "n_series": [3, 2, 5, 1],
            "n_instances": [301, 100, 200, 2],
            "study_date": [date(2015, 3, 1), date(2016, 1, 1), date(2016, 5, 5), None],
            "study_date_status": ["ok", "ok", "ok", "missing"],
            "est_bytes": [None] * 4,
        }
    )


def test_bytes_estimate_weights_series_and_falls_back_to_nominal() -> None:
    samples = pd.DataFrame(
        {
            "modality": ["CT", "CT", "MR"],
            "size_bytes": [1000, 3000, 500],
            "series_instance_uid": ["s1", "s2", "s3"],
            "series_instances": [300, 100, 10],
        }
    )
    profile = size_profile(samples)
    assert profile.loc["CT", "mean_bytes"] == pytest.approx((300 * 1000 + 100 * 3000) / 400)
    inv = _inventory()
    est, provenance = estimate_bytes(inv, samples)
    assert est.tolist()[:3] == [round(301 * 1500.0), round(100 * 1500.0), 200 * 500]
    assert (
        provenance["CR"]["method"] == "nominal" and est.iloc[3] == 2 * provenance["CR"]["bytes_per_instance"]
    )
    assert "CR" in bytes_method_text(provenance) and "sampled" in bytes_method_text(provenance)


def test_totals_by_modality_and_year_add_up() -> None:
    inv = _inventory()
    inv["est_bytes"] = [10, 20, 30, 40]
    body = build_assessment(
        inv, provenance={}, bytes_method="m", throughput_images_per_s=10.0, link_mbit_s=1.0
    )
    assert (body["studies"], body["series"], body["instances"], body["bytes"]) == (4, 11, 603, 100)
    mods = by_modality(inv)
    assert mods["CT"] == {"studies": 2, "series": 5, "instances": 401, "bytes": 30}
    assert mods["SR"] == {"studies": 1, "series": 0, "instances": 0, "bytes": 0}
    assert sum(v["instances"] for v in mods.values()) == body["instances"]
    assert body["by_year"]["2016"]["studies"] == 2 and body["by_year"]["undated"]["bytes"] == 40
    assert body["undated_studies"] == 1
    schedule = body["timeline"]["by_year_newest_first"]
    assert [r["year"] for r in schedule] == ["2016", "2015", "undated"]
    assert schedule[-1]["cumulative_days"] == pytest.approx(body["timeline"]["days"])
    html = render(body, pd.DataFrame(columns=["private_creator", "needs_coercion_rule"]))
    assert html.count("data:image/png;base64,") == 2 and "603" in html


def test_study_answers_parse_with_their_character_set() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID, ds.StudyDate = "1.2.3", "20150102"
    ds.PatientName = "Müller^Jürgen"
    ds.ModalitiesInStudy = ["SR", "CT"]
    ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances = "2", ""
    row = study_record(ds, "w")
    assert row["patient_name"] == "Müller^Jürgen" and row["modalities"] == "CT\\SR"
    assert row["primary_modality"] == "CT" and row["n_series"] == 2 and row["n_instances"] is None
    assert needs_walk(row) and row["study_date"] == date(2015, 1, 2)
    assert parse_study_date("20151301") == (None, "malformed") and primary_modality(["PR", "KO"]) == "KO"
    assert human_bytes(999) == "999 B"


def test_years_are_the_same_from_dates_text_and_timestamps() -> None:
    from pacsmig.audit.assessment import by_year

    inv = _inventory()
    inv["est_bytes"] = [10, 20, 30, 40]
    from_dates = by_year(inv)
    assert set(from_dates) == {"2015", "2016", "undated"} and from_dates["2016"]["instances"] == 300
    as_text = inv.assign(study_date=["2015-03-01", "2016-01-01", "2016-05-05", None])
    as_timestamps = inv.assign(study_date=pd.to_datetime(as_text["study_date"]))
    assert by_year(as_text) == from_dates == by_year(as_timestamps)


def test_missing_and_empty_modalities_are_counted_not_dropped() -> None:
    inv = _inventory()
    inv["est_bytes"] = [10, 20, 30, 40]
    inv["modalities"] = ["CT\\SR", None, "MR", ""]
    inv["primary_modality"] = ["CT", None, "MR", ""]
    mods = by_modality(inv)
    assert mods["?"] == {"studies": 1, "series": 2, "instances": 100, "bytes": 20}
    assert mods[""]["studies"] == 1 and mods["SR"]["studies"] == 1
    est, provenance = estimate_bytes(inv, pd.DataFrame(columns=["modality", "size_bytes"]))
    # a missing and an empty primary modality are one unknown modality at the default size
    assert provenance["?"] == {"method": "nominal", "instances_sampled": 0, "bytes_per_instance": 1_000_000}
    assert (est.iloc[1], est.iloc[3]) == (100 * 1_000_000, 2 * 1_000_000)
