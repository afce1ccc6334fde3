"""The assessment: volumes per modality and year, the bytes estimate, and the migration timeline."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pacsmig.audit.profile import MODALITY_SEPARATOR

#: Above this many bytes to move over the network, ship a first copy on disks instead.
SEEDING_THRESHOLD_BYTES = 50 * 10**12  # ~50 TB (decimal, as storage is sold)


def timeline(
    instances: int,
    total_bytes: int,
    throughput_images_per_s: float,
    link_mbit_s: float,
    *,
    throughput_source: str = "configured",
    seeding_threshold_bytes: float = SEEDING_THRESHOLD_BYTES,
) -> dict[str, Any]:
    """How long moving the archive takes: the slower of the engine's image rate and the link.

    Examples
    --------
    >>> t = timeline(1_000_000, 500 * 10**9, 100.0, 1000.0)
    >>> t["bottleneck"], round(t["hours"], 2), t["physical_seeding_advised"]
    ('throughput', 2.78, False)
    >>> timeline(10**9, 60 * 10**12, 1000.0, 1000.0)["physical_seeding_advised"]
    True
    """
    at_rate = instances / throughput_images_per_s if throughput_images_per_s > 0 else math.inf
    on_link = total_bytes * 8 / (link_mbit_s * 1e6) if link_mbit_s > 0 else math.inf
    seconds = max(at_rate, on_link)
    bottleneck = "throughput" if at_rate >= on_link else "link"
    seeding = total_bytes > seeding_threshold_bytes
    days = seconds / 86400
    if seeding:
        advice = (
            f"{total_bytes / 1e12:.1f} TB exceeds ~{seeding_threshold_bytes / 1e12:.0f} TB: seed the target "
            f"physically (ship disks), then migrate the delta and verify over the {link_mbit_s:g} Mbit/s "
            f"link; the network alone would take {days:.1f} days."
        )
    else:
        advice = (
            f"Migrate over the network: about {days:.1f} days at {throughput_images_per_s:g} images/s on a "
            f"{link_mbit_s:g} Mbit/s link (limited by the {bottleneck})."
        )
    return {
        "throughput_images_per_s": throughput_images_per_s,
        "throughput_source": throughput_source,
        "link_mbit_s": link_mbit_s,
        "seconds_at_throughput": _finite(at_rate),
        "seconds_on_link": _finite(on_link),
        "seconds": _finite(seconds),
        "hours": _finite(seconds / 3600),
        "days": _finite(days),
        "bottleneck": bottleneck,
        "seeding_threshold_bytes": seeding_threshold_bytes,
        "physical_seeding_advised": seeding,
        "advice": advice,
    }


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def _totals(frame: pd.DataFrame) -> dict[str, int]:
    return {
        "studies": len(frame),
        "series": int(frame["n_series"].sum()),
        "instances": int(frame["n_instances"].sum()),
        "bytes": int(frame["est_bytes"].fillna(0).sum()),
    }


def by_modality(inventory: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per modality: ``studies`` holding it (a CT+SR study counts for both), and the ``series``,
    ``instances`` and ``bytes`` of the studies whose primary modality it is (so those add up)."""
    sums = inventory.groupby(inventory["primary_modality"].fillna("?"))[
        ["n_series", "n_instances", "est_bytes"]
    ].sum()
    # split the few distinct values, not every study's (a 10 M-row explode costs GBs of strings)
    holding: dict[str, int] = {}
    for value, n in inventory["modalities"].value_counts(dropna=False, sort=False).items():
        if isinstance(value, str):
            text = value
        elif pd.api.types.is_scalar(value) and pd.isna(value):
            text = "?"  # as ``fillna("?")`` would
        else:
            continue  # as ``.str.split`` would: no modalities to count
        for code in text.split(MODALITY_SEPARATOR):
            holding[code] = holding.get(code, 0) + int(n)
    out: dict[str, dict[str, int]] = {}
    for modality in sorted(set(sums.index) | set(holding)):
        row = sums.loc[modality] if modality in sums.index else None
        out[str(modality)] = {
            "studies": int(holding.get(modality, 0)),
            "series": int(row["n_series"]) if row is not None else 0,
            "instances": int(row["n_instances"]) if row is not None else 0,
            "bytes": int(row["est_bytes"]) if row is not None and pd.notna(row["est_bytes"]) else 0,
        }
    return out


def _study_years(dates: pd.Series) -> np.ndarray:
    """The year of each study date as float (NaN = undated), as ``pd.to_datetime(errors="coerce")``.

    Dates read from the inventory are ``datetime.date`` objects: Arrow converts those in one C pass
    instead of pandas parsing 10 M objects; anything else goes through ``pd.to_datetime``.
    """
    if dates.dtype == object:
        try:
            arrow = pa.array(dates, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            arrow = None
        if arrow is not None and (pa.types.is_date(arrow.type) or pa.types.is_timestamp(arrow.type)):
            return pc.year(arrow).to_numpy(zero_copy_only=False).astype("float64")
    return pd.to_datetime(dates, errors="coerce").dt.year.to_numpy(dtype="float64", na_value=np.nan)


def by_year(inventory: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Studies, series, instances and bytes per study year (``"undated"`` for studies without one)."""
    years = _study_years(inventory["study_date"])
    dated = ~np.isnan(years)
    # group on integers; the few group labels become text afterwards
    key = np.where(dated, np.nan_to_num(years), 0).astype("int64")
    key[~dated] = np.iinfo("int64").min
    grouped = inventory.assign(est_bytes=inventory["est_bytes"].fillna(0)).groupby(key)
    sums = grouped[["n_series", "n_instances", "est_bytes"]].sum()
    sizes = grouped.size()
    label = {k: "undated" if k == np.iinfo("int64").min else str(k) for k in sums.index}
    return {
        label[k]: {
            "studies": int(sizes[k]),
            "series": int(sums.loc[k, "n_series"]),
            "instances": int(sums.loc[k, "n_instances"]),
            "bytes": int(sums.loc[k, "est_bytes"]),
        }
        for k in sorted(sums.index, key=label.__getitem__)
    }


def schedule_newest_first(years: dict[str, dict[str, int]], tl: dict[str, Any]) -> list[dict[str, Any]]:
    """Cumulative days per study year, newest first (the backfill runs backwards)."""
    rate = tl["throughput_images_per_s"] or 0
    link = tl["link_mbit_s"] or 0
    rows, cumulative = [], 0.0
    for year in sorted((y for y in years if y != "undated"), reverse=True) + (
        ["undated"] if "undated" in years else []
    ):
        v = years[year]
        secs = max(v["instances"] / rate if rate else 0.0, v["bytes"] * 8 / (link * 1e6) if link else 0.0)
        cumulative += secs / 86400
        rows.append(
            {
                "year": year,
                "instances": v["instances"],
                "bytes": v["bytes"],
                "days": secs / 86400,
                "cumulative_days": cumulative,
            }
        )
    return rows


def build_assessment(
    inventory: pd.DataFrame,
    *,
    provenance: dict[str, dict],
    bytes_method: str,
    throughput_images_per_s: float,
    link_mbit_s: float,
    throughput_source: str = "configured",
    id_issues: dict[str, int] | None = None,
    private_tags: dict[str, int] | None = None,
    inventory_stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``assessment.json`` body from an inventory whose ``est_bytes`` is filled."""
    totals = _totals(inventory)
    years = by_year(inventory)
    tl = timeline(
        totals["instances"],
        totals["bytes"],
        throughput_images_per_s,
        link_mbit_s,
        throughput_source=throughput_source,
    )
    tl["by_year_newest_first"] = schedule_newest_first(years, tl)
    undated = int((inventory["study_date_status"] != "ok").sum())
    return {
        **totals,
        "average_study_bytes": round(totals["bytes"] / totals["studies"]) if totals["studies"] else 0,
        "average_study_instances": totals["instances"] / totals["studies"] if totals["studies"] else 0,
        "undated_studies": undated,
        "bytes_method": bytes_method,
        "bytes_by_modality_method": provenance,
        "by_modality": by_modality(inventory),
        "by_year": years,
        "timeline": tl,
        "patient_id_issues": id_issues or {},
        "private_tags": private_tags or {},
        "inventory": inventory_stats or {},
    }


def write_json(body: dict[str, Any], out: Path) -> Path:
    """Write JSON atomically (a re-run replaces it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=2, default=str), encoding="utf-8")
    tmp.replace(out)
    return out
