"""Sample instances per (modality, manufacturer, model) group for the bytes estimate and private tags.

Candidate studies per modality are chosen by a hash of their UID (deterministic, spread over the
years without sorting by date), their series are listed by C-FIND (Manufacturer and
ManufacturerModelName when the source returns them), and up to ``samples_per_group`` instances per
group are picked round-robin over studies, then series, so one big study does not fill a group.
The picks are retrieved with :func:`pacsmig.dicom.retrieve.retrieve`; the files themselves then
say which device wrote them.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from pydicom import dcmread

from pacsmig.audit.inventory import SERIES_RETURN_KEYS, count, text, write_table
from pacsmig.audit.profile import MODALITY_SEPARATOR, normalise_modalities
from pacsmig.config import DicomNode
from pacsmig.dicom.find import FindClient, query_dataset

logger = logging.getLogger(__name__)

SAMPLE_SCHEMA = pa.schema(
    [
        ("study_instance_uid", pa.string()),
        ("series_instance_uid", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("modality", pa.string()),
        ("manufacturer", pa.string()),
        ("model", pa.string()),
        ("path", pa.string()),
        ("size_bytes", pa.int64()),
        ("transfer_syntax_uid", pa.string()),
        # instances in the sampled series: the weight of this sample in the bytes estimate
        ("series_instances", pa.int64()),
    ]
)


@dataclass
class SamplePick:
    """Instances to retrieve from one series."""

    study_instance_uid: str
    series_instance_uid: str
    group: tuple[str, str, str]
    sop_instance_uids: list[str] = field(default_factory=list)
    series_instances: int = 0


def candidate_studies(inventory: pd.DataFrame, per_modality: int) -> dict[str, list[str]]:
    """Up to ``per_modality`` study UIDs holding each modality, in UID-hash order (deterministic)."""
    frame = inventory[["study_instance_uid", "modalities"]].dropna()
    order = pd.util.hash_pandas_object(frame["study_instance_uid"], index=False).to_numpy()
    frame = frame.assign(_order=order).sort_values("_order", kind="stable")
    exploded = frame.assign(modality=frame["modalities"].str.split(MODALITY_SEPARATOR, regex=False)).explode(
        "modality"
    )
    picked = exploded.groupby("modality", sort=True).head(per_modality)
    return {str(m): list(g["study_instance_uid"]) for m, g in picked.groupby("modality", sort=True)}


def list_series(client: FindClient, study_instance_uids: list[str]) -> pd.DataFrame:
    """SERIES-level answers of the candidate studies (one row per series)."""
    rows = []
    for uid in study_instance_uids:
        result = client.find(query_dataset("SERIES", {"StudyInstanceUID": uid, **SERIES_RETURN_KEYS}))
        for ds in result.identifiers:
            series = text(ds, "SeriesInstanceUID")
            if series is None:
                continue
            rows.append(
                {
                    "study_instance_uid": uid,
                    "series_instance_uid": series,
                    "modality": MODALITY_SEPARATOR.join(normalise_modalities(ds.get("Modality") or [])),
                    "manufacturer": text(ds, "Manufacturer") or "",
                    "model": text(ds, "ManufacturerModelName") or "",
                    "n": count(ds, "NumberOfSeriesRelatedInstances"),
                }
            )
    return pd.DataFrame(
        rows, columns=["study_instance_uid", "series_instance_uid", "modality", "manufacturer", "model", "n"]
    ).drop_duplicates("series_instance_uid")


def _sops(client: FindClient, study: str, series: str) -> list[str]:
    result = client.find(
        query_dataset(
            "IMAGE",
            {
                "StudyInstanceUID": study,
                "SeriesInstanceUID": series,
                "SOPInstanceUID": "",
                "InstanceNumber": "",
            },
        )
    )
    uids = {text(ds, "SOPInstanceUID") for ds in result.identifiers} - {None}
    return sorted(uids)  # type: ignore[arg-type]


def plan_samples(client: FindClient, series: pd.DataFrame, samples_per_group: int) -> list[SamplePick]:
    """Pick instances: per group, round-robin over studies, then over each study's series."""
    picks: dict[str, SamplePick] = {}
    for group, members in series.groupby(["modality", "manufacturer", "model"], sort=True):
        by_study: dict[str, list[str]] = defaultdict(list)
        for row in members.sort_values(["study_instance_uid", "series_instance_uid"]).itertuples():
            by_study[row.study_instance_uid].append(row.series_instance_uid)
        queue = [
            (study, s)
            for rank in range(max(len(v) for v in by_study.values()))
            for study, v in sorted(by_study.items())
            if rank < len(v)
            for s in [v[rank]]
        ]
        taken = 0
        cursor: dict[str, int] = defaultdict(int)
        cache: dict[str, list[str]] = {}
        while taken < samples_per_group and queue:
            progressed = False
            for study, s in queue:
                if taken >= samples_per_group:
                    break
                sops = cache.setdefault(s, _sops(client, study, s))
                k = cursor[s]
                if k >= len(sops):
                    continue
                # middle first: the first/last images of a stack are often localisers or blanks
                index = (len(sops) // 2 + k) % len(sops)
                pick = picks.setdefault(s, SamplePick(study, s, tuple(group), series_instances=len(sops)))  # type: ignore[arg-type]
                pick.sop_instance_uids.append(sops[index])
                cursor[s] += 1
                taken += 1
                progressed = True
            if not progressed:
                break
    return list(picks.values())


def retrieve_samples(
    node: DicomNode, picks: list[SamplePick], dest: Path
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Retrieve the picks into ``dest`` and describe every file received (from its own header)."""
    from pacsmig.dicom.retrieve import retrieve

    rows = []
    missing = 0
    started = time.perf_counter()
    for pick in picks:
        result = retrieve(
            node,
            dest,
            study_instance_uid=pick.study_instance_uid,
            series_instance_uid=pick.series_instance_uid,
            sop_instance_uids=pick.sop_instance_uids,
            quarantine_root=dest.parent / "samples_quarantine",
        )
        wanted = set(pick.sop_instance_uids)
        got = {uid: inst for uid, inst in result.received.items() if uid in wanted}
        missing += len(wanted - set(got))
        for uid, inst in sorted(got.items()):
            ds = dcmread(
                inst.path,
                stop_before_pixels=True,
                specific_tags=["Modality", "Manufacturer", "ManufacturerModelName"],
            )
            rows.append(
                {
                    "study_instance_uid": pick.study_instance_uid,
                    "series_instance_uid": pick.series_instance_uid,
                    "sop_instance_uid": uid,
                    "modality": str(ds.get("Modality", "") or pick.group[0]).strip().upper(),
                    "manufacturer": str(ds.get("Manufacturer", "") or "").strip(),
                    "model": str(ds.get("ManufacturerModelName", "") or "").strip(),
                    "path": str(inst.path),
                    "size_bytes": int(inst.size_bytes),
                    "transfer_syntax_uid": str(inst.transfer_syntax_uid),
                    "series_instances": pick.series_instances,
                }
            )
    elapsed = time.perf_counter() - started
    if missing:
        logger.warning(
            "samples: %d picked instances did not arrive (estimate uses the %d that did)", missing, len(rows)
        )
    frame = pd.DataFrame(rows, columns=SAMPLE_SCHEMA.names)
    stats = {
        "instances": len(rows),
        "missing": missing,
        "seconds": elapsed,
        "images_per_s": len(rows) / elapsed if elapsed > 0 and rows else 0.0,
        "groups": int(frame.groupby(["modality", "manufacturer", "model"]).ngroups) if rows else 0,
    }
    return frame, stats


def sample(
    node: DicomNode,
    inventory: pd.DataFrame,
    dest: Path,
    manifest: Path,
    *,
    samples_per_group: int = 3,
    candidates_per_modality: int = 10,
) -> dict[str, Any]:
    """Choose, retrieve and describe the samples; writes ``manifest`` (parquet) and returns stats."""
    candidates = candidate_studies(inventory, candidates_per_modality)
    uids = sorted({u for v in candidates.values() for u in v})
    with FindClient(node) as client:
        series = list_series(client, uids)
        picks = plan_samples(client, series, samples_per_group)
    logger.info(
        "samples: %d candidate studies, %d series, %d groups, %d instances picked",
        len(uids),
        len(series),
        len({p.group for p in picks}),
        sum(len(p.sop_instance_uids) for p in picks),
    )
    frame, stats = retrieve_samples(node, picks, dest)
    write_table(pa.Table.from_pandas(frame, schema=SAMPLE_SCHEMA, preserve_index=False), manifest)
    stats.update({"candidate_studies": len(uids), "series_listed": len(series), "path": str(manifest)})
    return stats


def read_samples(manifest: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    if not manifest.exists():
        return pd.DataFrame(columns=SAMPLE_SCHEMA.names)
    return pq.read_table(manifest, schema=SAMPLE_SCHEMA).to_pandas()
