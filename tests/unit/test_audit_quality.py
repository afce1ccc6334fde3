"""The inventory's Great Expectations suite: a good manifest passes, each kind of bad one fails loudly."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from pacsmig.audit.inventory import SCHEMA
from pacsmig.quality import ExpectationsFailed, run_suite
from pacsmig.quality.inventory_suite import validate_inventory


def _good() -> pd.DataFrame:
    frame = pd.DataFrame({name: [None, None, None] for name in SCHEMA.names})
    frame["study_instance_uid"] = ["1.2.1", "1.2.2", "1.2.3"]
    frame["modalities"] = ["CT", "CT\\SR", "MR"]
    frame["n_series"], frame["n_instances"] = [1, 2, 3], [10, 20, 30]
    frame["study_date"] = [date(2015, 1, 1), date(2016, 2, 2), None]
    frame["study_date_raw"] = ["20150101", "20160202", None]
    frame["study_date_status"] = ["ok", "ok", "missing"]
    return frame


def test_good_inventory_passes_and_writes_data_docs(tmp_path: Path) -> None:
    result = validate_inventory(_good(), tmp_path / "docs")
    assert result.success and result.evaluated >= 10
    assert (tmp_path / "docs" / "index.html").exists()


@pytest.mark.parametrize(
    "column, value, expected",
    [
        ("study_instance_uid", "1.2.1", "expect_column_values_to_be_unique"),
        ("n_instances", 0, "expect_column_values_to_be_between"),
        ("modalities", "CT\\XYZ", "expect_column_values_to_match_regex"),
        ("study_date", None, "expect_column_values_to_not_be_null"),
    ],
)
def test_bad_inventory_fails_with_a_summary(column: str, value: object, expected: str) -> None:
    frame = _good()
    frame.loc[1, column] = value
    with pytest.raises(ExpectationsFailed) as info:
        validate_inventory(frame)
    assert expected in str(info.value) and "FAILED" in str(info.value)
    assert any(f["type"] == expected for f in info.value.result.failures)


def test_run_suite_is_reusable() -> None:
    result = run_suite(
        pd.DataFrame({"a": [1, 1]}), "reuse", [("ExpectColumnValuesToBeUnique", {"column": "a"})]
    )
    assert not result.success and result.failures[0]["unexpected_count"] == 2
