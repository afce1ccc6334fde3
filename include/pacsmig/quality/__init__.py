"""Great Expectations helpers: run a suite on a DataFrame in an ephemeral context, write Data Docs.

Great Expectations is imported inside the functions (it takes ~2 s), so importing this package is
cheap and DAG files that reference it parse quickly.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pacsmig.errors import PacsmigError

logger = logging.getLogger(__name__)

#: An expectation: a Great Expectations object, or ``("ExpectColumnValuesToBeUnique", {kwargs})``
#: so callers need not import Great Expectations themselves.
ExpectationSpec = Any


class ExpectationsFailed(PacsmigError):
    """A data-quality suite failed; the message carries the result summary."""

    def __init__(self, result: SuiteResult) -> None:
        super().__init__(result.summary())
        self.result = result


@dataclass
class SuiteResult:
    """The outcome of :func:`run_suite`, without Great Expectations types."""

    name: str
    success: bool
    evaluated: int
    successful: int
    #: One dict per failed expectation: type, column, kwargs, unexpected_count, examples.
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: ``index.html`` of the Data Docs site, if written.
    docs_index: Path | None = None
    #: The validation result as Great Expectations serialises it.
    raw: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """Multi-line text for the task log (no values beyond GE's partial lists of UIDs/codes)."""
        head = (
            f"suite {self.name}: {'passed' if self.success else 'FAILED'} "
            f"({self.successful}/{self.evaluated} expectations met)"
        )
        lines = [head]
        for f in self.failures:
            lines.append(
                f"  - {f['type']}({f.get('column') or ''}): unexpected {f.get('unexpected_count')}"
                f" {f.get('examples') or ''}".rstrip()
            )
        if self.docs_index:
            lines.append(f"  data docs: {self.docs_index}")
        return "\n".join(lines)

    def raise_for_failures(self) -> SuiteResult:
        """Raise :class:`ExpectationsFailed` if any expectation failed, else return self."""
        if not self.success:
            raise ExpectationsFailed(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "success": self.success,
            "evaluated": self.evaluated,
            "successful": self.successful,
            "failures": self.failures,
            "docs_index": str(self.docs_index) if self.docs_index else None,
        }


def _build(spec: ExpectationSpec) -> Any:
    import great_expectations.expectations as gxe

    if isinstance(spec, tuple):
        name, kwargs = spec
        return getattr(gxe, name)(**kwargs)
    return spec


def run_suite(
    df: pd.DataFrame, name: str, expectations: Iterable[ExpectationSpec], docs_dir: Path | None = None
) -> SuiteResult:
    """Validate ``df`` against ``expectations`` in an ephemeral Great Expectations context.

    Parameters
    ----------
    df
        The data (one batch: the whole frame).
    name
        Suite name (also the Data Docs page name).
    expectations
        Great Expectations expectation objects or ``(class_name, kwargs)`` tuples.
    docs_dir
        If given, a Data Docs site is (re)built there; ``index.html`` opens it.

    Returns
    -------
    SuiteResult
        Call :meth:`SuiteResult.raise_for_failures` to fail a task on a failed expectation.

    Examples
    --------
    >>> r = run_suite(pd.DataFrame({"a": [1, 2]}), "demo",
    ...               [("ExpectColumnValuesToBeUnique", {"column": "a"})])  # doctest: +SKIP
    >>> r.success  # doctest: +SKIP
    True
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no phoning home from a hospital network
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    ctx = gx.get_context(mode="ephemeral")
    tag = uuid.uuid4().hex[:8]
    batch = (
        ctx.data_sources.add_pandas(f"{name}_source_{tag}")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name=name))
    for spec in expectations:
        suite.add_expectation(_build(spec))
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_{tag}", data=batch, suite=suite)
    )
    actions = []
    if docs_dir is not None:
        docs_dir = Path(docs_dir)
        docs_dir.mkdir(parents=True, exist_ok=True)
        ctx.add_data_docs_site(
            site_name="pacsmig",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(UpdateDataDocsAction(name="data_docs", site_names=["pacsmig"]))
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name=f"{name}_checkpoint_{tag}",
            validation_definitions=[definition],
            actions=actions,
            result_format="SUMMARY",
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": df})
    validation = next(iter(outcome.run_results.values()))
    raw = json.loads(json.dumps(validation.to_json_dict(), default=str))
    failures = []
    for item in raw.get("results", []):
        if item.get("success"):
            continue
        config = item.get("expectation_config", {})
        kwargs = {k: v for k, v in config.get("kwargs", {}).items() if k != "batch_id"}
        result = item.get("result", {}) or {}
        failures.append(
            {
                "type": config.get("type"),
                "column": kwargs.get("column"),
                "kwargs": kwargs,
                "unexpected_count": result.get("unexpected_count"),
                "examples": result.get("partial_unexpected_list", [])[:5],
                "exception": (item.get("exception_info") or {}).get("exception_message"),
            }
        )
    stats = raw.get("statistics", {})
    docs_index = (
        docs_dir / "index.html" if docs_dir is not None and (docs_dir / "index.html").exists() else None
    )
    res = SuiteResult(
        name=name,
        success=bool(outcome.success),
        evaluated=int(stats.get("evaluated_expectations", 0)),
        successful=int(stats.get("successful_expectations", 0)),
        failures=failures,
        docs_index=docs_index,
        raw=raw,
    )
    (logger.info if res.success else logger.error)("%s", res.summary())
    return res
