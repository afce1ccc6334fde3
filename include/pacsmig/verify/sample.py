"""The chief radiologist's "10 % test": a seeded, stratified, complexity-enriched sample and its auto-checks.

Selection is reproducible: the same eligible studies and seed give the same sample. Complex cases
(breast tomosynthesis, multi-frame cine, large series) get up to half of the slots; the rest is
spread over modality x year strata in proportion to their size (largest remainder). The sample
becomes a worklist (CSV + HTML with WADO-RS / viewer links), rows in ``review_sample``
(``signoff_state`` pending), and automatic checks of what a radiologist looks at, source vs target.
"""

from __future__ import annotations

import csv
import html
import math
import random
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from pacsmig import config
from pacsmig.config import ConnectionSpec
from pacsmig.ledger import Ledger
from pacsmig.verify.reconcile import Scope

#: Breast Tomosynthesis Image Storage.
TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"
PRESENTATION_STATE_PREFIX = "1.2.840.10008.5.1.4.1.1.11."
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
#: Attributes compared instance by instance in the sample (display and timing of cine loops).
DISPLAY_KEYWORDS = (
    "NumberOfFrames",
    "FrameTime",
    "CineRate",
    "FrameTimeVector",
    "WindowCenter",
    "WindowWidth",
)
_NON_IMAGING = {"SR", "KO", "PR", "DOC", "OT", ""}
ELIGIBLE_STATES = ("verified", "review", "loaded")


@dataclass
class SampleEntry:
    """One study of the sample and why it was drawn."""

    study_instance_uid: str
    accession_number: str
    study_date: str
    modality: str
    stratum: str
    reason: str
    features: list[str] = field(default_factory=list)
    wado_url: str = ""
    viewer_url: str = ""
    auto_checks: str = ""


def primary_modality(modalities: str | None) -> str:
    """The first imaging modality of ``CT\\SR`` / ``CT,SR`` style lists (SR, KO, PR only if alone)."""
    tokens = [t.strip().upper() for t in re.split(r"[\\,/ ]+", modalities or "") if t.strip()]
    imaging = [t for t in tokens if t not in _NON_IMAGING]
    return (imaging or tokens or ["UNKNOWN"])[0]


def study_features(ledger: Ledger, study_uids: list[str], large_series: int = 100) -> dict[str, set[str]]:
    """Complexity features per study: ``tomosynthesis``, ``cine``, ``multiframe``, ``large_series``."""
    features: dict[str, set[str]] = defaultdict(set)
    rows = ledger.query(
        "SELECT study_instance_uid, sop_class_uid, number_of_frames, staged_path FROM instances "
        "WHERE study_instance_uid = ANY(%s) AND (sop_class_uid = %s OR number_of_frames > 1)",
        (study_uids, TOMOSYNTHESIS),
    )
    for row in rows:
        uid = row["study_instance_uid"]
        if row["sop_class_uid"] == TOMOSYNTHESIS:
            features[uid].add("tomosynthesis")
        elif (row["number_of_frames"] or 0) > 1 and "cine" not in features[uid]:
            features[uid].add("cine" if _has_cine_timing(row["staged_path"]) else "multiframe")
    for row in ledger.query(
        "SELECT study_instance_uid FROM instances WHERE study_instance_uid = ANY(%s) "
        "GROUP BY study_instance_uid, series_instance_uid HAVING count(*) >= %s",
        (study_uids, large_series),
    ):
        features[row["study_instance_uid"]].add("large_series")
    for uid in features:
        if "cine" in features[uid]:
            features[uid].discard("multiframe")
    return features


def _has_cine_timing(path: str | None) -> bool:
    if not path or not Path(path).exists():
        return False
    ds = pydicom.dcmread(
        path, stop_before_pixels=True, force=True, specific_tags=["FrameTime", "CineRate", "FrameTimeVector"]
    )
    return any(k in ds for k in ("FrameTime", "CineRate", "FrameTimeVector"))


def _largest_remainder(sizes: dict[str, int], slots: int) -> dict[str, int]:
    total = sum(sizes.values())
    if total == 0 or slots <= 0:
        return dict.fromkeys(sizes, 0)
    exact = {k: slots * n / total for k, n in sizes.items()}
    quota = {k: math.floor(v) for k, v in exact.items()}
    left = slots - sum(quota.values())
    for k in sorted(sizes, key=lambda k: (-(exact[k] - quota[k]), k))[:left]:
        quota[k] += 1
    return {k: min(q, sizes[k]) for k, q in quota.items()}


def select_sample(
    ledger: Ledger,
    scope: Scope,
    fraction: float = 0.10,
    seed: int = 0,
    large_series: int = 100,
    complex_share: float = 0.5,
) -> list[SampleEntry]:
    """Draw the sample among the migrated studies of ``scope`` (reproducible for a given seed).

    Parameters
    ----------
    fraction
        Share of studies to sample (default 10 %); at least one study when any is eligible.
    seed
        Seed of the draw; the same seed and eligible studies give the same sample.
    large_series
        Instances in one series from which a study counts as a large-series case.
    complex_share
        At most this share of the slots goes to complex cases (the enrichment).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"sample fraction must be in (0, 1], got {fraction}")
    where, params = scope.sql("s")
    studies = ledger.query(
        f"SELECT study_instance_uid, accession_number, study_date, modalities FROM studies s "
        f"WHERE {where} AND s.state = ANY(%s) ORDER BY study_instance_uid",
        [*params, list(ELIGIBLE_STATES)],
    )
    if not studies:
        return []
    rng = random.Random(seed)
    k = max(1, math.ceil(fraction * len(studies)))
    features = study_features(ledger, [s["study_instance_uid"] for s in studies], large_series)
    info = {s["study_instance_uid"]: s for s in studies}

    def stratum(uid: str) -> tuple[str, str]:
        s = info[uid]
        year = str(s["study_date"].year) if s["study_date"] else "unknown"
        return primary_modality(s["modalities"]), year

    chosen: dict[str, str] = {}
    by_kind: dict[str, list[str]] = defaultdict(list)
    for uid in sorted(features):
        for kind in sorted(features[uid]):
            by_kind[kind].append(uid)
    for kind in by_kind:
        rng.shuffle(by_kind[kind])
    complex_slots = min(sum(1 for u in features if features[u]), max(1, round(k * complex_share)))
    kinds = sorted(by_kind)
    while len(chosen) < complex_slots and any(by_kind.values()):
        for kind in kinds:
            while by_kind[kind] and by_kind[kind][0] in chosen:
                by_kind[kind].pop(0)
            if by_kind[kind] and len(chosen) < complex_slots:
                chosen[by_kind[kind].pop(0)] = kind
    strata: dict[str, list[str]] = defaultdict(list)
    for uid in sorted(info):
        if uid not in chosen:
            strata["/".join(stratum(uid))].append(uid)
    quota = _largest_remainder({s: len(u) for s, u in strata.items()}, k - len(chosen))
    for name in sorted(strata):
        for uid in rng.sample(strata[name], quota[name]):
            chosen[uid] = "stratified"
    out = []
    for uid in sorted(chosen):
        s = info[uid]
        modality, year = stratum(uid)
        out.append(
            SampleEntry(
                uid,
                s["accession_number"] or "",
                str(s["study_date"] or ""),
                modality,
                f"{modality}/{year}",
                chosen[uid],
                sorted(features.get(uid, ())),
            )
        )
    return out


def record_sample(ledger: Ledger, entries: list[SampleEntry]) -> int:
    """Insert the sample into ``review_sample`` (pending sign-off); existing sign-offs are kept."""
    with ledger.transaction() as cur:
        inserted = 0
        for e in entries:
            cur.execute(
                "INSERT INTO review_sample (study_instance_uid, stratum, reason, signoff_state) "
                "VALUES (%s, %s, %s, 'pending') ON CONFLICT (study_instance_uid) DO NOTHING",
                (e.study_instance_uid, e.stratum, e.reason),
            )
            inserted += cur.rowcount
    return inserted


def study_urls(target: ConnectionSpec | None, study_uid: str) -> tuple[str, str]:
    """(WADO-RS URL, viewer URL) of a study at the target; the viewer from extra ``viewer_url``
    (a template with ``{study_instance_uid}``)."""
    if target is None or target.conn_type not in ("http", "https"):
        return "", ""
    scheme = target.schema or target.conn_type
    port = f":{target.port}" if target.port else ""
    path = str(target.extra.get("dicomweb_path") or "/dicom-web").rstrip("/")
    wado = f"{scheme}://{target.host}{port}{path}/studies/{study_uid}"
    template = str(target.extra.get("viewer_url") or "")
    return wado, template.format(study_instance_uid=study_uid) if template else ""


def _value(ds: Dataset, keyword: str) -> Any:
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return tuple(str(v) for v in value)
    return str(value)


def _order(datasets: dict[str, Dataset]) -> list[str]:
    def key(sop: str) -> tuple[Any, ...]:
        ds = datasets[sop]
        ipp = tuple(float(v) for v in ds.get("ImagePositionPatient", []) or [])
        return (int(ds.get("InstanceNumber", 0) or 0), ipp, sop)

    return sorted(datasets, key=key)


def _references(ds: Dataset) -> set[str]:
    refs: set[str] = set()
    for series in ds.get("ReferencedSeriesSequence", []) or []:
        for image in series.get("ReferencedImageSequence", []) or []:
            refs.add(str(image.get("ReferencedSOPInstanceUID", "")))
    for evidence in ds.get("CurrentRequestedProcedureEvidenceSequence", []) or []:
        for series in evidence.get("ReferencedSeriesSequence", []) or []:
            for sop in series.get("ReferencedSOPSequence", []) or []:
                refs.add(str(sop.get("ReferencedSOPInstanceUID", "")))
    refs.discard("")
    return refs


def clinical_checks(ledger: Ledger, target: ConnectionSpec, study_uid: str) -> list[dict[str, Any]]:
    """What the radiologist cares about, staged source vs target, for one study.

    Per instance: frames, frame timing, window centre/width. Per series: the display order by
    InstanceNumber / ImagePositionPatient. Presentation states and key objects: all carried along,
    and everything they reference present at the target. One row per check (``ok``, ``detail``).
    """
    from pacsmig.verify.readback import open_target

    dest = open_target(target)
    at_target = dict(dest.instances(study_uid))
    rows = ledger.query(
        "SELECT sop_instance_uid, series_instance_uid, sop_class_uid, staged_path "
        "FROM instances WHERE study_instance_uid = %s AND target_status <> 'quarantined' "
        "ORDER BY sop_instance_uid",
        (study_uid,),
    )
    checks: list[dict[str, Any]] = []
    src_series: dict[str, dict[str, Dataset]] = defaultdict(dict)
    tgt_series: dict[str, dict[str, Dataset]] = defaultdict(dict)
    display_diffs: list[str] = []
    compared = 0
    for row in rows:
        sop = row["sop_instance_uid"]
        if sop not in at_target or not row["staged_path"] or not Path(row["staged_path"]).exists():
            continue
        src = pydicom.dcmread(row["staged_path"], stop_before_pixels=True, force=True)
        tgt = pydicom.dcmread(
            BytesIO(dest.fetch(study_uid, at_target[sop], sop)), stop_before_pixels=True, force=True
        )
        compared += 1
        for keyword in DISPLAY_KEYWORDS:
            if _value(src, keyword) != _value(tgt, keyword):
                display_diffs.append(f"{sop}: {keyword}")
        series = row["series_instance_uid"] or at_target[sop]
        src_series[series][sop] = src
        tgt_series[series][sop] = tgt
    checks.append(
        {
            "check": "display_attributes",
            "ok": not display_diffs,
            "detail": f"{compared} instances compared"
            + (f"; differ: {', '.join(display_diffs[:10])}" if display_diffs else ""),
        }
    )
    bad_order = [s for s in src_series if _order(src_series[s]) != _order(tgt_series[s])]
    checks.append(
        {
            "check": "series_order",
            "ok": not bad_order,
            "detail": f"{len(src_series)} series"
            + (f"; order differs in {', '.join(bad_order)}" if bad_order else ""),
        }
    )
    objects = [
        r
        for r in rows
        if (r["sop_class_uid"] or "").startswith(PRESENTATION_STATE_PREFIX)
        or r["sop_class_uid"] == KEY_OBJECT_SELECTION
    ]
    absent = [r["sop_instance_uid"] for r in objects if r["sop_instance_uid"] not in at_target]
    dangling: list[str] = []
    for r in objects:
        sop = r["sop_instance_uid"]
        for series in src_series.values():
            if sop in series:
                dangling += sorted(_references(series[sop]) - set(at_target))
    checks.append(
        {
            "check": "presentation_states_and_key_objects",
            "ok": not absent and not dangling,
            "detail": f"{len(objects)} PR/KO objects"
            + (f"; missing at target: {', '.join(absent)}" if absent else "")
            + (f"; references not at target: {', '.join(dangling[:10])}" if dangling else ""),
        }
    )
    for c in checks:
        c["study_instance_uid"] = study_uid
    return checks


def write_worklist(entries: list[SampleEntry], out_dir: Path) -> tuple[Path, Path]:
    """``review_worklist.csv`` and ``review_worklist.html`` (links open the study at the target)."""
    fields = [
        "study_instance_uid",
        "accession_number",
        "study_date",
        "modality",
        "stratum",
        "reason",
        "features",
        "auto_checks",
        "wado_url",
        "viewer_url",
    ]
    csv_path = out_dir / "review_worklist.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for e in entries:
            row = asdict(e)
            row["features"] = ";".join(e.features)
            writer.writerow({k: row[k] for k in fields})
    lines = []
    for e in entries:
        link = (
            f'<a href="{html.escape(e.viewer_url or e.wado_url)}">open</a>'
            if (e.viewer_url or e.wado_url)
            else ""
        )
        cells = [
            e.accession_number,
            e.study_date,
            e.modality,
            e.stratum,
            e.reason,
            ", ".join(e.features),
            e.auto_checks,
            e.study_instance_uid,
        ]
        lines.append(
            "<tr>"
            + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
            + f"<td>{link}</td><td>&#9744; signed off</td></tr>"
        )
    html_path = out_dir / "review_worklist.html"
    html_path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>pacsmig review sample</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}"
        "table{border-collapse:collapse}</style></head><body><h1>Radiologist review worklist</h1>"
        f"<p>{len(entries)} studies, drawn reproducibly (stratified by modality and year, enriched in "
        "complex cases).</p><table><thead><tr><th>accession</th><th>date</th><th>modality</th>"
        "<th>stratum</th><th>reason</th><th>features</th><th>auto checks</th><th>study UID</th>"
        "<th>target</th><th>sign-off</th></tr></thead><tbody>"
        + "".join(lines)
        + "</tbody></table></body></html>\n"
    )
    return csv_path, html_path


def build_review_sample(
    ledger: Ledger,
    scope: Scope,
    target: ConnectionSpec | None,
    fraction: float = 0.10,
    seed: int = 0,
    out_dir: Path | None = None,
    large_series: int = 100,
) -> dict[str, Any]:
    """Draw, record, auto-check and write the worklist; returns counts and paths."""
    out_dir = out_dir or config.sub_dir("validation")
    entries = select_sample(ledger, scope, fraction, seed, large_series)
    inserted = record_sample(ledger, entries)
    all_checks: list[dict[str, Any]] = []
    for e in entries:
        e.wado_url, e.viewer_url = study_urls(target, e.study_instance_uid)
        if target is not None:
            checks = clinical_checks(ledger, target, e.study_instance_uid)
            all_checks += checks
            bad = [c["check"] for c in checks if not c["ok"]]
            e.auto_checks = "ok" if not bad else "FAILED: " + ", ".join(bad)
    csv_path, html_path = write_worklist(entries, out_dir)
    checks_path = out_dir / "review_checks.csv"
    with checks_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["study_instance_uid", "check", "ok", "detail"])
        writer.writeheader()
        writer.writerows(all_checks)
    return {
        "studies": len(entries),
        "recorded": inserted,
        "seed": seed,
        "fraction": fraction,
        "checks_failed": sum(1 for c in all_checks if not c["ok"]),
        "by_reason": {
            r: sum(1 for e in entries if e.reason == r) for r in sorted({e.reason for e in entries})
        },
        "worklist_csv": str(csv_path),
        "worklist_html": str(html_path),
        "checks_csv": str(checks_path),
    }
