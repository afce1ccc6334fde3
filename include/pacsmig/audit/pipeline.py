"""The audit's steps over files in the audit folder: each is one DAG task and one CLI stage.

Every step reads and writes paths under ``audit_dir`` (``$PACSMIG_DATA_DIR/audit`` by default) and
returns a small dict of paths and counts (what XCom carries). Re-running a step replaces its
outputs atomically; nothing is appended.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import date
from pathlib import Path
from typing import Any

from pacsmig.audit import assessment as assess_mod
from pacsmig.audit.idhealth import write_issues
from pacsmig.audit.inventory import (
    ASSESSMENT_COLUMNS,
    ID_HEALTH_COLUMNS,
    inventory_window,
    merge_parts,
    read_inventory,
    set_est_bytes,
    write_part,
)
from pacsmig.audit.privatetags import write_private_tags
from pacsmig.audit.profile import bytes_method_text, estimate_bytes
from pacsmig.audit.report import write_report
from pacsmig.audit.sampling import read_samples, sample
from pacsmig.audit.windows import window_labels
from pacsmig.config import DicomNode, sub_dir
from pacsmig.dicom.find import FindClient

logger = logging.getLogger(__name__)

INVENTORY = "inventory.parquet"
ASSESSMENT = "assessment.json"
ID_ISSUES = "patient_id_issues.csv"
PRIVATE_TAGS = "private_tags.csv"
REPORT = "assessment.html"
SAMPLES = "samples.parquet"
STATS = "inventory_stats.json"


def audit_dir(out: Path | str | None = None) -> Path:
    """``out`` (created) or ``$PACSMIG_DATA_DIR/audit``."""
    if out is None:
        return sub_dir("audit")
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def plan_windows(date_from: str, date_to: str | date, window: str = "year") -> list[str]:
    """The labels to map over: date windows, then ``undated``."""
    return window_labels(date_from, date_to, window)


def with_cap(node: DicomNode, find_cap: int | None) -> DicomNode:
    """The node with a find_cap override (0/None keeps the connection's)."""
    return dataclasses.replace(node, find_cap=int(find_cap)) if find_cap else node


def run_window(node: DicomNode, label: str, out: Path) -> dict[str, Any]:
    """Inventory one window into ``parts/<label>.parquet``."""
    with FindClient(node) as client:
        records, stats = inventory_window(client, label, node.find_cap)
    stats.path = str(write_part(records, out / "parts", label))
    return stats.to_dict()


def merge(window_results: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Merge the parts the windows wrote (only those: stale parts of other runs are ignored)."""
    summary = merge_parts([Path(r["path"]) for r in window_results], out / INVENTORY)
    stats = {
        "windows": len(window_results),
        "queries": sum(r.get("queries", 0) for r in window_results),
        "splits": sum(r.get("splits", 0) for r in window_results),
        "walked_studies": sum(r.get("walked_studies", 0) for r in window_results),
        "modality_split_days": sorted(d for r in window_results for d in r.get("modality_split_days", [])),
        "duplicates": summary["duplicates"],
        "uid_conflicts": summary["uid_conflicts"],
    }
    assess_mod.write_json(stats, out / STATS)
    return summary


def validate(out: Path) -> dict[str, Any]:
    """Great Expectations suite on the inventory; raises when it fails. Data Docs in ``data_docs/``."""
    from pacsmig.quality.inventory_suite import validate_inventory

    result = validate_inventory(read_inventory(out / INVENTORY), out / "data_docs")
    return result.to_dict()


def id_health(out: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    table = pq.read_table(out / INVENTORY, columns=list(ID_HEALTH_COLUMNS))
    return write_issues(table, out / ID_ISSUES)


def take_samples(
    node: DicomNode, out: Path, samples_per_group: int = 3, candidates_per_modality: int = 10
) -> dict[str, Any]:
    return sample(
        node,
        read_inventory(out / INVENTORY),
        out / "samples",
        out / SAMPLES,
        samples_per_group=samples_per_group,
        candidates_per_modality=candidates_per_modality,
    )


def private_tags(out: Path) -> dict[str, int]:
    samples = read_samples(out / SAMPLES)
    return write_private_tags([Path(p) for p in samples["path"]], out / PRIVATE_TAGS)


def assess(
    out: Path,
    *,
    throughput_images_per_s: float = 150.0,
    link_mbit_s: float = 1000.0,
    measured_images_per_s: float | None = None,
) -> dict[str, Any]:
    """Fill ``est_bytes`` in the inventory and write ``assessment.json``.

    ``throughput_images_per_s <= 0`` uses the rate measured while retrieving the samples.
    """
    inventory = read_inventory(out / INVENTORY, ASSESSMENT_COLUMNS)
    samples = read_samples(out / SAMPLES)
    est, provenance = estimate_bytes(inventory, samples)
    inventory["est_bytes"] = est.to_numpy()
    set_est_bytes(out / INVENTORY, inventory["est_bytes"].to_numpy())
    source = "configured"
    if throughput_images_per_s <= 0:
        throughput_images_per_s = float(measured_images_per_s or 0.0)
        source = "measured while sampling"
    id_counts = _issue_counts(out / ID_ISSUES)
    tag_summary = _tag_summary(out / PRIVATE_TAGS)
    stats = json.loads((out / STATS).read_text()) if (out / STATS).exists() else {}
    body = assess_mod.build_assessment(
        inventory,
        provenance=provenance,
        bytes_method=bytes_method_text(provenance),
        throughput_images_per_s=throughput_images_per_s,
        link_mbit_s=link_mbit_s,
        throughput_source=source,
        id_issues=id_counts,
        private_tags=tag_summary,
        inventory_stats=stats,
    )
    body["samples"] = {
        "instances": len(samples),
        "groups": int(samples.groupby(["modality", "manufacturer", "model"]).ngroups) if len(samples) else 0,
    }
    assess_mod.write_json(body, out / ASSESSMENT)
    return {
        "path": str(out / ASSESSMENT),
        "studies": body["studies"],
        "instances": body["instances"],
        "bytes": body["bytes"],
        "days": body["timeline"]["days"],
    }


def _issue_counts(path: Path) -> dict[str, int]:
    import pandas as pd

    if not path.exists():
        return {}
    issues = pd.read_csv(path, usecols=["kind"])
    return {str(k): int(v) for k, v in issues.groupby("kind").size().items()}


def _tag_summary(path: Path) -> dict[str, int]:
    import pandas as pd

    if not path.exists():
        return {}
    tags = pd.read_csv(path)
    return {
        "elements": len(tags),
        "creators": int(tags["private_creator"].nunique()),
        "needs_coercion_rule": int(tags["needs_coercion_rule"].astype(bool).sum()),
    }


def report(out: Path) -> str:
    import pandas as pd

    body = json.loads((out / ASSESSMENT).read_text(encoding="utf-8"))
    tags = (
        pd.read_csv(out / PRIVATE_TAGS, keep_default_na=False)
        if (out / PRIVATE_TAGS).exists()
        else pd.DataFrame()
    )
    docs = "data_docs/index.html" if (out / "data_docs" / "index.html").exists() else None
    return str(write_report(body, tags, out / REPORT, docs))


def run_audit(
    node: DicomNode,
    out: Path | None = None,
    *,
    date_from: str = "1990-01-01",
    date_to: str | date | None = None,
    window: str = "year",
    samples_per_group: int = 3,
    candidates_per_modality: int = 10,
    throughput_images_per_s: float = 150.0,
    link_mbit_s: float = 1000.0,
    find_cap: int | None = None,
) -> dict[str, Any]:
    """The whole audit in one process (the CLI's path; the DAG runs the same steps as tasks)."""
    folder = audit_dir(out)
    node = with_cap(node, find_cap)
    labels = plan_windows(date_from, date_to or date.today(), window)
    windows = [run_window(node, label, folder) for label in labels]
    summary = {"inventory": merge(windows, folder)}
    summary["quality"] = validate(folder)
    summary["patient_id_issues"] = id_health(folder)
    summary["samples"] = take_samples(node, folder, samples_per_group, candidates_per_modality)
    summary["private_tags"] = private_tags(folder)
    summary["assessment"] = assess(
        folder,
        throughput_images_per_s=throughput_images_per_s,
        link_mbit_s=link_mbit_s,
        measured_images_per_s=summary["samples"].get("images_per_s"),
    )
    summary["report"] = report(folder)
    return summary
