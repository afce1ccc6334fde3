"""The Great Expectations suite over ``hash_report.parquet``: 100 % match, no nulls, every source instance present.

Great Expectations takes seconds to import, so it is imported inside the functions only. The
shared runner ``pacsmig.quality.run_suite`` is used when the quality package provides it;
otherwise :func:`run_local_suite` here does the same (ephemeral context, Data Docs on disk).
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


def run_local_suite(df: Any, name: str, items: list[Any], docs_dir: Path) -> dict[str, Any]:
    """Validate ``df`` against ``items`` in an ephemeral context; Data Docs into ``docs_dir``."""
    import great_expectations as gx

    docs_dir.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="ephemeral")
    ctx.add_data_docs_site(site_name="pacsmig", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
    batch = ctx.data_sources.add_pandas(name).add_dataframe_asset("report") \
        .add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name=name))
    for item in items:
        suite.add_expectation(item)
    definition = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(
        name=f"{name}_checkpoint", validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")]))
    result = checkpoint.run(batch_parameters={"dataframe": df})
    failed = []
    for run in result.run_results.values():
        for r in run.results:
            if not r.success:
                column = r.expectation_config.kwargs.get("column", "")
                failed.append(f"{r.expectation_config.type}({column}): "
                              f"{r.result.get('unexpected_count', r.result.get('observed_value'))}")
    return {"success": bool(result.success), "failed": failed,
            "docs": str(docs_dir / "index.html")}


def run_hash_suite(hash_report: Path, instances_source: int, out_dir: Path) -> dict[str, Any]:
    """Run the suite on ``hash_report``; Data Docs under ``out_dir/data_docs``. Returns a summary dict.

    A failing expectation is a finding reported in the summary, not an exception.
    """
    import pandas as pd

    df = pd.read_parquet(hash_report)
    items = expectations(instances_source)
    docs_dir = out_dir / "data_docs"
    try:
        from pacsmig.quality import run_suite  # type: ignore[attr-defined]
    except ImportError:
        run_suite = None
    if run_suite is not None:
        result = run_suite(df, SUITE_NAME, items, docs_dir)
        outcome = result if isinstance(result, dict) else {"success": bool(getattr(result, "success", result))}
    else:
        outcome = run_local_suite(df, SUITE_NAME, items, docs_dir)
    logger.info("hash suite over %d rows: %s", len(df), "passed" if outcome.get("success") else "failed")
    return outcome
