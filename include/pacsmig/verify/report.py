"""Validation outputs: the per-instance hash report, the summary, and the study-level report (CSV + HTML)."""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Columns of ``hash_report.parquet``, in order (the first five are the DESIGN interface).
HASH_REPORT_COLUMNS = [
    "study_instance_uid", "sop_instance_uid", "source_pixel_hash", "target_pixel_hash", "match",
    "source_raw_hash", "target_raw_hash", "source_frames", "target_frames",
    "source_transfer_syntax", "target_transfer_syntax", "status", "detail", "method",
]
STUDY_REPORT_COLUMNS = [
    "study_instance_uid", "accession_number", "study_date", "modalities", "state", "result",
    "instances_source", "verified", "pixel_mismatch", "header_mismatch", "missing_at_target",
    "quarantined", "held", "detail",
]


def write_hash_report(rows: list[dict[str, Any]], path: Path) -> Path:
    """One row per source instance, as Parquet (typed columns, written atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("study_instance_uid", pa.string()), ("sop_instance_uid", pa.string()),
        ("source_pixel_hash", pa.string()), ("target_pixel_hash", pa.string()), ("match", pa.bool_()),
        ("source_raw_hash", pa.string()), ("target_raw_hash", pa.string()),
        ("source_frames", pa.int32()), ("target_frames", pa.int32()),
        ("source_transfer_syntax", pa.string()), ("target_transfer_syntax", pa.string()),
        ("status", pa.string()), ("detail", pa.string()), ("method", pa.string()),
    ])
    table = pa.Table.from_pylist([{c: r.get(c) for c in HASH_REPORT_COLUMNS} for r in rows], schema=schema)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def write_json(obj: Any, path: Path) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def summarise(rows: Iterable[dict[str, Any]], studies: int, scope: dict[str, Any],
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The counts of ``summary.json`` (the first four keys are the DESIGN interface)."""
    counts = Counter(r["status"] for r in rows)
    total = sum(counts.values())
    return {
        "instances_source": total,
        "instances_verified": counts["verified"],
        "instances_mismatched": counts["pixel_mismatch"] + counts["header_mismatch"],
        "instances_missing": counts["missing_at_target"],
        "instances_pixel_mismatch": counts["pixel_mismatch"],
        "instances_header_mismatch": counts["header_mismatch"],
        "instances_quarantined": counts["quarantined"],
        "instances_held": counts["held"],
        "studies": studies,
        "range": scope,
        **(extra or {}),
    }


def write_study_report(studies: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """``studies.csv`` and ``studies.html``: one line per study, problems first."""
    import csv

    ordered = sorted(studies, key=lambda s: (s["result"] == "verified", s["study_instance_uid"]))
    csv_path = out_dir / "studies.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=STUDY_REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in ordered:
            writer.writerow({k: row.get(k, "") for k in STUDY_REPORT_COLUMNS})
    html_path = out_dir / "studies.html"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in STUDY_REPORT_COLUMNS)
    body = []
    for row in ordered:
        css = "ok" if row["result"] == "verified" else "bad"
        cells = "".join(f"<td>{html.escape(str(row.get(c, '') or ''))}</td>" for c in STUDY_REPORT_COLUMNS)
        body.append(f'<tr class="{css}">{cells}</tr>')
    review = sum(1 for s in studies if s["result"] != "verified")
    html_path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>pacsmig validation: studies</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 6px;font-size:12px}tr.bad{background:#fdd}tr.ok{background:#efe}</style></head><body>"
        f"<h1>Validation by study</h1><p>{len(studies)} studies, {review} for manual examination.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></body></html>\n")
    return csv_path, html_path
