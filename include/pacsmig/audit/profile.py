"""Modality vocabulary and the bytes estimate from sampled instances (size per modality x counts)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

#: DICOM PS3.3 C.7.3.1.1.1 Modality defined terms, current and retired (legacy archives hold both).
KNOWN_MODALITIES: frozenset[str] = frozenset(
    """
ANN AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DMS DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD
IO IOL IVOCT IVUS KER KO LEN LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN
POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV
SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC
AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF
""".split()
)

#: Modalities that accompany images rather than being the study's imaging (reports, states, keys).
ANCILLARY_MODALITIES: frozenset[str] = frozenset(
    "SR PR KO DOC SEG REG OT RWV FID PLAN ANN ASMT RTSTRUCT RTPLAN RTDOSE RTRECORD".split()
)

#: Typical Part-10 bytes per instance, used only for modalities that could not be sampled.
NOMINAL_INSTANCE_BYTES: dict[str, int] = {
    "CT": 525_000,
    "MR": 260_000,
    "PT": 180_000,
    "NM": 400_000,
    "CR": 8_000_000,
    "DX": 10_000_000,
    "MG": 40_000_000,
    "US": 1_200_000,
    "XA": 20_000_000,
    "RF": 5_000_000,
    "SR": 40_000,
    "PR": 20_000,
    "KO": 10_000,
    "OT": 1_000_000,
    "ES": 2_000_000,
    "XC": 3_000_000,
    "SM": 500_000_000,
}
DEFAULT_INSTANCE_BYTES = 1_000_000

#: The separator of the ``modalities`` column: DICOM's own multi-value delimiter ("CT\\SR").
MODALITY_SEPARATOR = "\\"


def normalise_modalities(values: Iterable[str] | str | None) -> list[str]:
    """Upper-cased, de-duplicated, sorted modality codes from a DICOM value or a list.

    Examples
    --------
    >>> normalise_modalities(["mr", "CT", "CT", " "])
    ['CT', 'MR']
    >>> normalise_modalities("SR\\\\CT")
    ['CT', 'SR']
    """
    if values is None:
        return []
    if isinstance(values, str):
        values = values.split(MODALITY_SEPARATOR)
    return sorted({str(v).strip().upper() for v in values if v is not None and str(v).strip()})


def primary_modality(modalities: Iterable[str]) -> str | None:
    """The study's imaging modality: the first non-ancillary code in sorted order, else the first.

    A study's instances and bytes are attributed to its primary modality so that per-modality
    totals add up to the archive total (a CT study with one SR counts as CT).

    Examples
    --------
    >>> primary_modality(["CT", "SR"]), primary_modality(["SR"]), primary_modality([])
    ('CT', 'SR', None)
    """
    codes = normalise_modalities(list(modalities))
    for code in codes:
        if code not in ANCILLARY_MODALITIES:
            return code
    return codes[0] if codes else None


def size_profile(samples: pd.DataFrame) -> pd.DataFrame:
    """Per-modality bytes per instance of sampled instances, weighted by the size of their series.

    A sampled series stands for all its instances: the mean for a modality is
    ``sum(series_instances * mean sample size in the series) / sum(series_instances)``, so a
    one-image study and a 500-image CT series do not weigh the same. Without ``series_instances``
    (or where it is 0) every sample weighs 1.

    Parameters
    ----------
    samples
        One row per retrieved instance: ``modality``, ``size_bytes``, optionally
        ``series_instance_uid`` and ``series_instances``.

    Returns
    -------
    pandas.DataFrame
        Indexed by modality: ``n`` (instances sampled), ``mean_bytes`` (weighted), ``min_bytes``,
        ``max_bytes``.
    """
    columns = ["n", "mean_bytes", "min_bytes", "max_bytes"]
    if samples.empty:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="modality"))
    frame = samples.copy()
    if "series_instance_uid" not in frame:
        frame["series_instance_uid"] = range(len(frame))
    weight = frame["series_instances"] if "series_instances" in frame else pd.Series(1, index=frame.index)
    frame["weight"] = weight.fillna(0).astype("float64").where(lambda w: w > 0, 1.0)
    per_series = frame.groupby(["modality", "series_instance_uid"]).agg(
        mean=("size_bytes", "mean"), weight=("weight", "first")
    )
    per_series["product"] = per_series["mean"] * per_series["weight"]
    sums = per_series.groupby("modality")[["product", "weight"]].sum()
    grouped = frame.groupby("modality")["size_bytes"]
    out = pd.DataFrame(
        {
            "n": grouped.size(),
            "mean_bytes": sums["product"] / sums["weight"],
            "min_bytes": grouped.min(),
            "max_bytes": grouped.max(),
        }
    )
    out.index.name = "modality"
    return out[columns]


def estimate_bytes(inventory: pd.DataFrame, samples: pd.DataFrame) -> tuple[pd.Series, dict[str, dict]]:
    """Estimated bytes per study: ``n_instances x`` mean sampled size of its primary modality.

    Modalities without samples fall back to the nominal table (never silently to zero), so the
    estimate's provenance per modality is returned beside it.

    Returns
    -------
    (pandas.Series, dict)
        ``est_bytes`` aligned with ``inventory`` (int64), and per modality
        ``{"method": "sampled"|"nominal", "instances_sampled": n, "bytes_per_instance": b}``.
    """
    profile = size_profile(samples)
    per_instance: dict[str, float] = {}
    provenance: dict[str, dict] = {}
    # the few distinct modalities, and a code per study: no 10 M-row string copy or string map
    codes, uniques = pd.factorize(inventory["primary_modality"])
    names = [str(u) for u in uniques]
    if (codes < 0).any():
        names.append("")  # a missing modality, as fillna("") would have it
        codes = np.where(codes < 0, len(names) - 1, codes)
    for modality in sorted(set(names)):
        if modality in profile.index:
            row = profile.loc[modality]
            per_instance[modality] = float(row["mean_bytes"])
            provenance[modality or "?"] = {
                "method": "sampled",
                "instances_sampled": int(row["n"]),
                "bytes_per_instance": round(float(row["mean_bytes"])),
            }
        else:
            nominal = NOMINAL_INSTANCE_BYTES.get(modality, DEFAULT_INSTANCE_BYTES)
            per_instance[modality] = float(nominal)
            provenance[modality or "?"] = {
                "method": "nominal",
                "instances_sampled": 0,
                "bytes_per_instance": nominal,
            }
    factor = np.array([per_instance[name] for name in names], dtype="float64")
    est = inventory["n_instances"].astype("float64").to_numpy(copy=True)
    est *= factor[codes]
    np.round(est, out=est)
    # pandas' astype, not numpy's: a missing count must raise, not become a garbage integer
    return pd.Series(est, index=inventory.index).astype("int64"), provenance


def bytes_method_text(provenance: dict[str, dict]) -> str:
    """One sentence for the report saying how ``bytes`` was obtained."""
    sampled = sorted(m for m, p in provenance.items() if p["method"] == "sampled")
    nominal = sorted(m for m, p in provenance.items() if p["method"] == "nominal")
    text = (
        "Estimated, not measured: for each study, its instance count (from C-FIND) times the mean "
        "Part-10 size per instance of the samples retrieved for the study's primary modality "
        "(each sampled series weighted by its instance count)"
    )
    if sampled:
        text += (
            " (sampled: " + ", ".join(f"{m} n={provenance[m]['instances_sampled']}" for m in sampled) + ")"
        )
    if nominal:
        text += "; modalities without a sample use a nominal size per instance (" + ", ".join(nominal) + ")"
    return text + ". Sizes are as received in the negotiated transfer syntax."
