"""The Great Expectations suite over ``hash_report.parquet``: 100 % match, no nulls, all instances present.

Great Expectations takes seconds to import, so it is imported inside the functions only; the
suite runs through the shared runner :func:`pacsmig.quality.run_suite` (Data Docs on disk).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SUITE_NAME = "pacsmig_hash_report"
#: Columns that must never be null: every row is one source instance with its source hashes.
NOT_NULL = ("study_instance_uid", "sop_instance_uid", "source_pixel_hash", "target_pixel_hash", "status")


def expectations(instances_source: int) -> list[Any]:
    """The suite's expectations (Great Expectations objects)."""
    import great_expectations.expectations as gxe

    items: list[Any] = [gxe.ExpectTableRowCountToEqual(value=int(instances_source))]
    items += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in NOT_NULL]
    items += [
        gxe.ExpectColumnValuesToBeInSet(column="match", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["verified"]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["study_instance_uid", "sop_instance_uid"]),
    ]
    return items


def run_hash_suite(hash_report: Path, instances_source: int, out_dir: Path) -> dict[str, Any]:
    """Run the suite on ``hash_report``; Data Docs under ``out_dir/data_docs``. Returns a summary dict.

    A failing expectation is a finding reported in the summary, not an exception.
    """
    import pandas as pd

    df = pd.read_parquet(hash_report)
    items = expectations(instances_source)
    from pacsmig.quality import run_suite

    result = run_suite(df, SUITE_NAME, items, out_dir / "data_docs")
    outcome = {"success": bool(result.success), "evaluated": result.evaluated,
               "failed": [f"{f['type']}({f.get('column') or ''}): {f.get('unexpected_count')}"
                          for f in result.failures],
               "docs": str(result.docs_index or "")}
    logger.info("hash suite over %d rows: %s", len(df), "passed" if outcome.get("success") else "failed")
    return outcome
