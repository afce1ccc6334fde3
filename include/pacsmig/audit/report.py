"""``assessment.html``: the audit written for a CIO (volumes, identity issues, private tags, timeline)."""

from __future__ import annotations

import base64
import html
import io
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd


def human_bytes(n: float) -> str:
    """Decimal units, as storage is sold.

    Examples
    --------
    >>> human_bytes(1_234_000), human_bytes(52 * 10**12)
    ('1.2 MB', '52.0 TB')
    """
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def charts(assessment: dict[str, Any]) -> dict[str, str]:
    """Embedded PNG charts: per modality (images, bytes) and per year (studies, bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    mods = assessment["by_modality"]
    names = list(mods)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    axes[0].bar(names, [mods[m]["instances"] for m in names], color="#3b6ea5")
    axes[0].set_title("Images per modality")
    axes[1].bar(names, [mods[m]["bytes"] / 1e9 for m in names], color="#a53b5b")
    axes[1].set_title("Estimated GB per modality")
    out["modality"] = _png(fig)
    years = assessment["by_year"]
    labels = list(years)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    axes[0].bar(labels, [years[y]["studies"] for y in labels], color="#3b6ea5")
    axes[0].set_title("Studies per year")
    axes[1].bar(labels, [years[y]["bytes"] / 1e9 for y in labels], color="#a53b5b")
    axes[1].set_title("Estimated GB per year")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=60)
    out["year"] = _png(fig)
    return out


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _volume_rows(section: dict[str, dict[str, int]], key: str) -> list[dict[str, Any]]:
    return [
        {
            key: k,
            "studies": f"{v['studies']:,}",
            "series": f"{v['series']:,}",
            "images": f"{v['instances']:,}",
            "bytes": human_bytes(v["bytes"]),
            "average study": human_bytes(v["bytes"] / v["studies"]) if v["studies"] else "-",
        }
        for k, v in section.items()
    ]


def render(assessment: dict[str, Any], private_tags: pd.DataFrame, data_docs: str | None = None) -> str:
    """The HTML page (self-contained: charts are inline PNGs)."""
    tl = assessment["timeline"]
    pictures = charts(assessment)
    issue_rows = [
        {"kind": k, "flagged": f"{v:,}"} for k, v in sorted(assessment.get("patient_id_issues", {}).items())
    ]
    rule_rows = (
        private_tags[private_tags["needs_coercion_rule"].astype(bool)] if len(private_tags) else private_tags
    )
    tag_rows = [
        {
            "creator": r.private_creator,
            "element": r.tag_mask,
            "VR": r.vr,
            "name": r.name,
            "seen in": r.groups_seen,
            "instances": r.instances,
            "slots": r.slots,
        }
        for r in rule_rows.itertuples()
    ]
    schedule = [
        {
            "year": r["year"],
            "images": f"{r['instances']:,}",
            "bytes": human_bytes(r["bytes"]),
            "days": f"{r['days']:.2f}",
            "cumulative days": f"{r['cumulative_days']:.2f}",
        }
        for r in tl.get("by_year_newest_first", [])
    ]
    creators = int(private_tags["private_creator"].nunique()) if len(private_tags) else 0
    template = Template(
        resources.files("pacsmig.audit").joinpath("templates/assessment.html").read_text("utf-8")
    )
    return template.substitute(
        studies=f"{assessment['studies']:,}",
        series=f"{assessment['series']:,}",
        instances=f"{assessment['instances']:,}",
        bytes=human_bytes(assessment["bytes"]),
        average_study=human_bytes(assessment["average_study_bytes"]),
        undated=f"{assessment['undated_studies']:,}",
        bytes_method=html.escape(assessment["bytes_method"]),
        modality_chart=pictures["modality"],
        year_chart=pictures["year"],
        modality_table=_table(
            _volume_rows(assessment["by_modality"], "modality"),
            ["modality", "studies", "series", "images", "bytes", "average study"],
        ),
        year_table=_table(
            _volume_rows(assessment["by_year"], "year"),
            ["year", "studies", "series", "images", "bytes", "average study"],
        ),
        issues_table=_table(issue_rows, ["kind", "flagged"])
        if issue_rows
        else "<p>No patient-ID issues found.</p>",
        private_elements=f"{len(private_tags):,}",
        private_creators=f"{creators:,}",
        private_rules=f"{len(tag_rows):,}",
        private_table=_table(tag_rows, ["creator", "element", "VR", "name", "seen in", "instances", "slots"])
        if tag_rows
        else "<p>No private element carrying a clinical value was found in the sample.</p>",
        throughput=f"{tl['throughput_images_per_s']:g}",
        throughput_source=html.escape(tl["throughput_source"]),
        link=f"{tl['link_mbit_s']:g}",
        days=f"{(tl['days'] or 0):.1f}",
        bottleneck=html.escape(tl["bottleneck"]),
        advice=html.escape(tl["advice"]),
        seeding="yes" if tl["physical_seeding_advised"] else "no",
        schedule_table=_table(schedule, ["year", "images", "bytes", "days", "cumulative days"]),
        data_docs=(
            f'<p>Inventory data-quality checks (Great Expectations): <a href="{html.escape(data_docs)}">'
            "Data Docs</a>.</p>"
        )
        if data_docs
        else "",
    )


def write_report(
    assessment: dict[str, Any], private_tags: pd.DataFrame, out: Path, data_docs: str | None = None
) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render(assessment, private_tags, data_docs), encoding="utf-8")
    tmp.replace(out)
    return out
