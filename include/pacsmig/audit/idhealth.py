"""Patient-ID health on the inventory: shared IDs, split identities and ID-format outliers (vectorised).

Every check works on de-duplicated identity tuples with pandas/Arrow string kernels and group-bys,
never a per-row Python loop, so a 10-million-study inventory takes seconds, not hours. Python only
touches the (few) flagged groups to format their ``variants``/``related`` text.

Kinds written to ``patient_id_issues.csv`` (one row per flagged ``(issuer, patient_id)``):

``same_id_different_demographics``
    One Patient ID with more than one (name, birth date, sex) after normalising case, whitespace
    and the ``^``/``=`` separators. ``scope`` is ``within_issuer`` (one issuer's ID on two people: a
    registration error) or ``across_issuers`` (two issuers reuse one ID string for different people:
    only the issuer tells them apart, so every matcher must key on ``(issuer, patient_id)``). An
    empty value is not a difference (a missing birth date on one study does not flag the ID).
``same_demographics_different_ids``
    One person (same normalised name, birth date and sex; name and birth date required, a name
    alone is too weak) under more than one ``(issuer, patient_id)``: an MPI merge candidate.
``id_format_outlier``
    An ID whose pattern (digits -> ``9``, letters -> ``A``: ``MRN12345678`` -> ``AAA99999999``) is
    rare within its issuer while one pattern dominates it.
``missing_patient_id``
    A study without a Patient ID (one row per study).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

logger = logging.getLogger(__name__)

SAME_ID_DIFFERENT_DEMOGRAPHICS = "same_id_different_demographics"
SAME_DEMOGRAPHICS_DIFFERENT_IDS = "same_demographics_different_ids"
ID_FORMAT_OUTLIER = "id_format_outlier"
MISSING_PATIENT_ID = "missing_patient_id"
KINDS = (
    SAME_ID_DIFFERENT_DEMOGRAPHICS,
    SAME_DEMOGRAPHICS_DIFFERENT_IDS,
    ID_FORMAT_OUTLIER,
    MISSING_PATIENT_ID,
)

ISSUE_COLUMNS = [
    "kind",
    "scope",
    "issuer_of_patient_id",
    "patient_id",
    "n_studies",
    "detail",
    "variants",
    "related",
    "study_instance_uid",
]

_DEMO = ["name", "birth", "sex"]

#: What the checks accept: the inventory DataFrame or its Arrow table.
Inventory = pd.DataFrame | pa.Table


# --- Arrow string kernels (C++, no Python per value) ---------------------------------------------
def _arrow(values: pd.Series | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Any string column as one Arrow string array (zero-copy for Arrow-backed pandas columns)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        if not pd.api.types.is_string_dtype(values.dtype) or values.dtype == object:
            values = values.astype("str")
        values = pa.array(values, from_pandas=True)
    if values.type != pa.string():
        values = values.cast(pa.string())
    return values


def _normalise_arrow(values: pa.Array) -> pa.Array:
    out = pc.utf8_trim_whitespace(
        pc.replace_substring_regex(pc.utf8_upper(values), pattern=r"[\^=\s]+", replacement=" ")
    )
    return pc.if_else(pc.equal(out, ""), pa.scalar(None, pa.string()), out)


def _pattern_arrow(values: pa.Array) -> pa.Array:
    digits = pc.replace_substring_regex(values, pattern=r"[0-9]", replacement="9")
    return pc.replace_substring_regex(digits, pattern=r"\pL", replacement="A")


def normalise_text(values: pd.Series) -> pd.Series:
    """Upper case, ``^``/``=`` and runs of whitespace to one space, stripped; empty -> missing.

    Examples
    --------
    >>> normalise_text(pd.Series(["smith^ john^^", " SMITH^JOHN", None])).tolist()
    ['SMITH JOHN', 'SMITH JOHN', nan]
    """
    return pd.Series(_normalise_arrow(_arrow(values)).to_pandas(), index=values.index, dtype="str")


def id_pattern(ids: pd.Series) -> pd.Series:
    """The format profile of IDs: every digit -> ``9``, every letter -> ``A``, the rest kept.

    Examples
    --------
    >>> id_pattern(pd.Series(["MRN00123456", "CB-00042"])).tolist()
    ['AAA99999999', 'AA-99999']
    """
    return pd.Series(_pattern_arrow(_arrow(ids)).to_pandas(), index=ids.index, dtype="str")


# --- integer coding: every check groups small ints, text is looked up only for flagged rows -----
@dataclass
class _Column:
    codes: np.ndarray  # int64 per study, -1 = missing
    text: pa.Array  # code -> display text


def _indices(encoded: pa.DictionaryArray) -> np.ndarray:
    return encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _encode(values: pd.Series | pa.Array, *, normalise: bool, missing_as: str | None = None) -> _Column:
    """Codes of (normalised) values; variants equal after normalising share one code."""
    arr = _arrow(values)
    if missing_as is not None:
        arr = pc.fill_null(arr, missing_as)
    encoded = pc.dictionary_encode(arr)
    codes = _indices(encoded)
    if not normalise:
        return _Column(codes=codes, text=encoded.dictionary)
    # normalise the distinct values only, then merge the ones that became equal
    merged = pc.dictionary_encode(_normalise_arrow(encoded.dictionary))
    remap = _indices(merged)
    if len(remap):
        codes = np.where(codes >= 0, remap[np.clip(codes, 0, None)], -1)
    return _Column(codes=codes, text=merged.dictionary)


@dataclass
class _Coded:
    frame: pd.DataFrame  # distinct (issuer, pid, name, birth, sex) code tuples (-1 = missing)
    columns: dict[str, _Column]
    studies: pd.Series  # studies per (issuer, pid) code pair

    def decode(self, column: str, codes: pd.Series) -> pd.Series:
        """Text of codes (flagged rows only: this builds Python strings)."""
        text = self.columns[column].text
        raw = codes.to_numpy()
        taken = pc.take(text, pa.array(np.where(raw >= 0, raw, 0))) if len(text) else pa.nulls(len(raw))
        values = np.asarray(taken.to_pylist(), dtype=object)
        values[raw < 0] = ""
        return pd.Series(values, index=codes.index, dtype=object)


def _pack(parts: list[np.ndarray]) -> tuple[np.ndarray, list[int]] | None:
    """Several non-negative code arrays as one int64 key (None if they need more than 63 bits)."""
    bits = [max(1, int(p.max(initial=0)).bit_length()) for p in parts]
    if sum(bits) > 63:
        return None
    key = np.zeros(len(parts[0]), dtype=np.int64)
    for part, width in zip(parts, bits, strict=True):
        key = (key << width) | part
    return key, bits


def _unpack(key: np.ndarray, bits: list[int]) -> list[np.ndarray]:
    out = []
    for width in reversed(bits):
        out.append(key & ((1 << width) - 1))
        key = key >> width
    return out[::-1]


def _code(inventory: Inventory) -> _Coded:
    """Encode the identity columns and reduce the studies to distinct identity tuples."""
    columns = {
        "issuer": _encode(inventory["issuer_of_patient_id"], normalise=False, missing_as=""),
        "pid": _encode(inventory["patient_id"], normalise=False),
        "name": _encode(inventory["patient_name"], normalise=True),
        "birth": _encode(inventory["patient_birth_date"], normalise=True),
        "sex": _encode(inventory["patient_sex"], normalise=True),
    }
    shifted = {k: c.codes + 1 for k, c in columns.items()}  # 0 = missing, so keys stay non-negative
    ids = _pack([shifted["issuer"], shifted["pid"]])
    demo = _pack([shifted["name"], shifted["birth"], shifted["sex"]])
    if ids is not None and demo is not None:
        # one hash pass over two int64 columns instead of five: the 10 M-row step
        pairs = pd.DataFrame({"id": ids[0], "demo": demo[0]}).drop_duplicates()
        issuer, pid = _unpack(pairs["id"].to_numpy(), ids[1])
        name, birth, sex = _unpack(pairs["demo"].to_numpy(), demo[1])
        frame = pd.DataFrame(
            {"issuer": issuer - 1, "pid": pid - 1, "name": name - 1, "birth": birth - 1, "sex": sex - 1}
        )
        counts = pd.Series(ids[0]).value_counts(sort=False)
        issuer_k, pid_k = _unpack(counts.index.to_numpy(), ids[1])
        studies = pd.Series(
            counts.to_numpy(),
            index=pd.MultiIndex.from_arrays([issuer_k - 1, pid_k - 1], names=["issuer", "pid"]),
        )
    else:
        full = pd.DataFrame({k: c.codes for k, c in columns.items()})
        frame = full.drop_duplicates()
        studies = full.groupby(["issuer", "pid"]).size()
    return _Coded(frame=frame.reset_index(drop=True), columns=columns, studies=studies)


def _rows(
    coded: _Coded,
    flagged: pd.DataFrame,
    kind: str,
    scope: pd.Series | str,
    detail: pd.Series,
    variants: pd.Series | str = "",
    related: pd.Series | str = "",
) -> pd.DataFrame:
    """Issue rows for flagged ``(issuer, pid)`` code pairs, decoded to text."""
    keys = pd.MultiIndex.from_frame(flagged[["issuer", "pid"]])
    return pd.DataFrame(
        {
            "kind": kind,
            "scope": scope,
            "issuer_of_patient_id": coded.decode("issuer", flagged["issuer"]).to_numpy(),
            "patient_id": coded.decode("pid", flagged["pid"]).to_numpy(),
            "n_studies": coded.studies.reindex(keys).fillna(0).astype("int64").to_numpy(),
            "detail": np.asarray(detail, dtype=object),
            "variants": np.asarray(variants, dtype=object) if not isinstance(variants, str) else variants,
            "related": np.asarray(related, dtype=object) if not isinstance(related, str) else related,
            "study_instance_uid": "",
        },
        columns=ISSUE_COLUMNS,
    )


def _distinct_counts(ids: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per key: how many distinct non-missing names, birth dates and sexes."""
    out = {}
    for column in _DEMO:
        sub = ids.loc[ids[column] >= 0, [*keys, column]].drop_duplicates()
        out[column] = sub.groupby(keys).size()
    return pd.DataFrame(out).fillna(0).astype("int64")


def _demographics_text(coded: _Coded, rows: pd.DataFrame, with_issuer: bool) -> pd.Series:
    text = (
        coded.decode("name", rows["name"])
        + "|"
        + coded.decode("birth", rows["birth"])
        + "|"
        + coded.decode("sex", rows["sex"])
    )
    if with_issuer:
        text = coded.decode("issuer", rows["issuer"]) + ": " + text
    return text


def same_id_different_demographics(coded: _Coded) -> pd.DataFrame:
    """Rows for IDs carried by more than one person, within one issuer and across issuers."""
    ids = coded.frame[coded.frame["pid"] >= 0]
    out = []
    for scope, keys in (("within_issuer", ["issuer", "pid"]), ("across_issuers", ["pid"])):
        counts = _distinct_counts(ids, keys)
        bad = (counts > 1).any(axis=1)
        if scope == "across_issuers":
            issuers = ids[["pid", "issuer"]].drop_duplicates().groupby("pid").size()
            bad &= issuers.reindex(counts.index).fillna(0) > 1
        counts = counts[bad]
        if counts.empty:
            continue
        flagged = ids.merge(counts.reset_index()[keys], on=keys)
        text = _demographics_text(coded, flagged, with_issuer=scope == "across_issuers")
        variants = text.groupby([flagged[k] for k in keys]).agg(lambda s: "; ".join(sorted(set(s))))
        members = flagged[["issuer", "pid"]].drop_duplicates().reset_index(drop=True)
        member_keys = pd.MultiIndex.from_frame(members[keys]) if len(keys) > 1 else pd.Index(members["pid"])
        per_key = counts.reindex(member_keys)
        detail = (
            "names="
            + per_key["name"].astype(str)
            + " birth_dates="
            + per_key["birth"].astype(str)
            + " sexes="
            + per_key["sex"].astype(str)
        )
        related: pd.Series | str = ""
        if scope == "across_issuers":
            names = coded.decode("issuer", members["issuer"])
            joined = names.groupby(members["pid"]).agg(lambda s: "|".join(sorted(s)))
            related = members["pid"].map(joined)
        out.append(
            _rows(
                coded,
                members,
                SAME_ID_DIFFERENT_DEMOGRAPHICS,
                scope,
                detail.to_numpy(),
                variants.reindex(member_keys).to_numpy(),
                related,
            )
        )
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=ISSUE_COLUMNS)


def same_demographics_different_ids(coded: _Coded) -> pd.DataFrame:
    """Rows for every ``(issuer, patient_id)`` of a person filed under more than one."""
    f = coded.frame
    people = f[(f["pid"] >= 0) & (f["name"] >= 0) & (f["birth"] >= 0)]
    sizes = people.groupby(_DEMO).size()
    multi = sizes[sizes > 1]
    if multi.empty:
        return pd.DataFrame(columns=ISSUE_COLUMNS)
    rows = people.merge(multi.rename("n_ids").reset_index(), on=_DEMO).reset_index(drop=True)
    identity = coded.decode("issuer", rows["issuer"]) + ":" + coded.decode("pid", rows["pid"])
    group = rows.groupby(_DEMO).ngroup()
    related = identity.groupby(group).agg(lambda s: "|".join(sorted(s)))
    issuers = rows.groupby(group)["issuer"].nunique()
    scope = np.where(group.map(issuers).to_numpy() > 1, "across_issuers", "within_issuer")
    return _rows(
        coded,
        rows,
        SAME_DEMOGRAPHICS_DIFFERENT_IDS,
        scope,
        ("ids=" + rows["n_ids"].astype(str)).to_numpy(),
        _demographics_text(coded, rows, with_issuer=False).to_numpy(),
        group.map(related).to_numpy(),
    )


def id_format_outliers(
    coded: _Coded, *, outlier_share: float = 0.2, dominant_share: float = 0.5, min_ids: int = 5
) -> pd.DataFrame:
    """IDs whose format is rare (< ``outlier_share``) in an issuer one format dominates.

    Issuers with fewer than ``min_ids`` distinct IDs, or without a pattern covering at least
    ``dominant_share`` of them, have no "usual" format to deviate from and are not judged.
    """
    ids = coded.frame.loc[coded.frame["pid"] >= 0, ["issuer", "pid"]].drop_duplicates()
    if ids.empty:
        return pd.DataFrame(columns=ISSUE_COLUMNS)
    patterns = _encode(_pattern_arrow(coded.columns["pid"].text), normalise=False)
    ids = ids.assign(pattern=patterns.codes[ids["pid"].to_numpy()])
    per = ids.groupby(["issuer", "pattern"]).size().rename("n").reset_index()
    per["total"] = per.groupby("issuer")["n"].transform("sum")
    per["share"] = per["n"] / per["total"]
    top = per.sort_values(["issuer", "n"], ascending=[True, False]).drop_duplicates("issuer")
    per = per.merge(
        top[["issuer", "pattern", "share"]].rename(columns={"pattern": "usual", "share": "usual_share"}),
        on="issuer",
    )
    rare = per[
        (per["share"] < outlier_share) & (per["usual_share"] >= dominant_share) & (per["total"] >= min_ids)
    ]
    if rare.empty:
        return pd.DataFrame(columns=ISSUE_COLUMNS)
    rows = ids.merge(rare, on=["issuer", "pattern"]).reset_index(drop=True)
    text = patterns.text.to_pylist()  # distinct patterns: few
    detail = (
        "pattern "
        + rows["pattern"].map(text.__getitem__)
        + " ("
        + rows["n"].astype(str)
        + " of "
        + rows["total"].astype(str)
        + " IDs of the issuer; usual "
        + rows["usual"].map(text.__getitem__)
        + ")"
    )
    return _rows(coded, rows, ID_FORMAT_OUTLIER, "within_issuer", detail.to_numpy())


def missing_patient_ids(inventory: Inventory) -> pd.DataFrame:
    """One row per study without a Patient ID."""
    mask = pc.is_null(_arrow(inventory["patient_id"]))
    issuers = pc.fill_null(pc.filter(_arrow(inventory["issuer_of_patient_id"]), mask), "")
    return pd.DataFrame(
        {
            "kind": MISSING_PATIENT_ID,
            "scope": "study",
            "issuer_of_patient_id": np.asarray(issuers.to_pylist(), dtype=object),
            "patient_id": "",
            "n_studies": 1,
            "detail": "study without PatientID",
            "variants": "",
            "related": "",
            "study_instance_uid": np.asarray(
                pc.filter(_arrow(inventory["study_instance_uid"]), mask).to_pylist(), dtype=object
            ),
        },
        columns=ISSUE_COLUMNS,
    )


def patient_id_issues(inventory: Inventory, *, outlier_share: float = 0.2) -> pd.DataFrame:
    """Every patient-identity finding of the inventory, as the rows of ``patient_id_issues.csv``.

    Parameters
    ----------
    inventory
        The inventory as a DataFrame or an Arrow table (cheaper: no pandas strings are built);
        only ``study_instance_uid, patient_id, issuer_of_patient_id, patient_name,
        patient_birth_date, patient_sex`` are read.
    outlier_share
        Patterns rarer than this share of an issuer's IDs are format outliers.
    """
    coded = _code(inventory)
    parts = [
        same_id_different_demographics(coded),
        same_demographics_different_ids(coded),
        id_format_outliers(coded, outlier_share=outlier_share),
        missing_patient_ids(inventory),
    ]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=ISSUE_COLUMNS)
    issues = pd.concat(parts, ignore_index=True)
    return issues.sort_values(["kind", "issuer_of_patient_id", "patient_id"], kind="stable").reset_index(
        drop=True
    )


def summarise(issues: pd.DataFrame) -> dict[str, int]:
    """Flagged rows per kind (for assessment.json, the report and the log)."""
    return {str(k): int(v) for k, v in issues.groupby("kind").size().items()}


def write_issues(inventory: Inventory, out: Path) -> dict[str, int]:
    """Compute and write ``patient_id_issues.csv``; returns rows per kind."""
    issues = patient_id_issues(inventory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    issues.to_csv(tmp, index=False)
    tmp.replace(out)
    counts = summarise(issues)
    logger.info("patient-ID issues: %s", counts or "none")
    return counts
