"""The Great Expectations suite that the inventory manifest must pass before anything is planned."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from pacsmig.audit.profile import KNOWN_MODALITIES
from pacsmig.quality import ExpectationSpec, SuiteResult, run_suite

SUITE_NAME = "inventory"


def modalities_regex(known: Iterable[str]) -> str:
    """A regex accepting a ``\\``-separated list of known modality codes (``CT\\SR``)."""
    alternatives = "|".join(sorted((re.escape(m) for m in known), key=len, reverse=True))
    return rf"^(?:{alternatives})(?:\\(?:{alternatives}))*$"


def inventory_expectations(extra_modalities: Iterable[str] = ()) -> list[ExpectationSpec]:
    """What a usable inventory looks like (see ``pacsmig.audit.inventory.SCHEMA``)."""
    known = set(KNOWN_MODALITIES) | {m.upper() for m in extra_modalities}
    dated = {"row_condition": 'study_date_status=="ok"', "condition_parser": "pandas"}
    return [
        ("ExpectColumnValuesToNotBeNull", {"column": "study_instance_uid"}),
        ("ExpectColumnValuesToBeUnique", {"column": "study_instance_uid"}),
        (
            "ExpectColumnValuesToMatchRegex",
            {"column": "study_instance_uid", "regex": r"^[0-9]+(?:\.[0-9]+)*$"},
        ),
        ("ExpectColumnValuesToNotBeNull", {"column": "n_series"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "n_instances"}),
        ("ExpectColumnValuesToBeBetween", {"column": "n_series", "min_value": 1}),
        ("ExpectColumnValuesToBeBetween", {"column": "n_instances", "min_value": 1}),
        ("ExpectColumnValuesToNotBeNull", {"column": "modalities"}),
        ("ExpectColumnValuesToMatchRegex", {"column": "modalities", "regex": modalities_regex(known)}),
        (
            "ExpectColumnValuesToBeInSet",
            {"column": "study_date_status", "value_set": ["ok", "missing", "malformed"]},
        ),
        # study_date may be null only for the studies flagged as undated
        ("ExpectColumnValuesToNotBeNull", {"column": "study_date", **dated}),
        (
            "ExpectColumnValuesToMatchStrftimeFormat",
            {"column": "study_date_raw", "strftime_format": "%Y%m%d", **dated},
        ),
        (
            "ExpectColumnValuesToBeNull",
            {
                "column": "study_date",
                "row_condition": 'study_date_status!="ok"',
                "condition_parser": "pandas",
            },
        ),
    ]


def validate_inventory(
    inventory: pd.DataFrame, docs_dir: Path | None = None, *, extra_modalities: Iterable[str] = ()
) -> SuiteResult:
    """Run the inventory suite; raises :class:`pacsmig.quality.ExpectationsFailed` when it fails."""
    frame = inventory.copy()
    # GE's pandas engine compares dates as strings/objects; give it ISO text, keep nulls
    frame["study_date"] = frame["study_date"].astype(object).where(frame["study_date"].notna(), None)
    result = run_suite(frame, SUITE_NAME, inventory_expectations(extra_modalities), docs_dir)
    return result.raise_for_failures()
