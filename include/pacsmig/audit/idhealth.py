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
    codes: np.ndarray  # int32 per study, -1 = missing (emptied once the tuples are built)
    text: pa.Array  # code -> display text


def _strings(values: pd.Series | pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A string column as Arrow strings, Arrow input kept chunked (no 10 M-row copy)."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return values if values.type == pa.string() else values.cast(pa.string())
    return _arrow(values)


def _dictionary(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """``(codes, dictionary)`` of a string column: int32 codes (-1 = missing).

    A chunked column is encoded chunk by chunk against one hash table, so every chunk indexes the
    same (final) dictionary: the last chunk's.
    """
    encoded = pc.dictionary_encode(values)
    chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
    if not chunks:
        return np.empty(0, dtype=np.int32), pa.array([], pa.string())
    codes = np.concatenate(
        [c.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False) for c in chunks]
    )
    return codes, chunks[-1].dictionary


def _encode(values: pd.Series | pa.Array, *, normalise: bool, missing_as: str | None = None) -> _Column:
    """Codes of (normalised) values; variants equal after normalising share one code."""
    codes, text = _dictionary(_strings(values))
    if missing_as is not None and (codes < 0).any():
        # the distinct values get the filler, not the 10 M rows: then merge it with an equal value
        at = pc.index(text, missing_as).as_py()
        if at < 0:
            at = len(text)
            text = pa.concat_arrays([text, pa.array([missing_as], pa.string())])
        codes[codes < 0] = at
    if not normalise:
        return _Column(codes=codes, text=text)
    # normalise the distinct values only, then merge the ones that became equal
    remap, merged = _dictionary(_normalise_arrow(text))
    if len(remap):
        codes = np.where(codes >= 0, remap[np.clip(codes, 0, None)], -1).astype(np.int32, copy=False)
    return _Column(codes=codes, text=merged)


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


def _combine(parts: list[np.ndarray]) -> np.ndarray:
    """One int64 key per row, equal exactly where every (non-negative) part is equal.

    Parts are bit-packed; when the next part would overflow 63 bits the key so far is replaced by
    its dense factorize codes (fewer than the rows), so any number of parts fits.
    """
    key = parts[0].astype(np.int64)
    for part in parts[1:]:
        width = max(1, int(part.max(initial=0)).bit_length())
        if int(key.max(initial=0)).bit_length() + width > 63:
            key = pd.factorize(key)[0]
        key <<= width
        key |= part
    return key


def _code(inventory: Inventory) -> _Coded:
    """Encode the identity columns and reduce the studies to distinct identity tuples.

    Memory is what bounds a 10 M-study inventory: the Arrow columns are encoded chunk by chunk to
    int32 codes, the five codes are packed into one int64 key per study, and one factorize of that
    key gives the distinct tuples (first occurrence order, as ``drop_duplicates`` would) and the
    studies per tuple; nothing else of study length is kept.
    """
    columns = {
        "issuer": _encode(inventory["issuer_of_patient_id"], normalise=False, missing_as=""),
        "pid": _encode(inventory["patient_id"], normalise=False),
        "name": _encode(inventory["patient_name"], normalise=True),
        "birth": _encode(inventory["patient_birth_date"], normalise=True),
        "sex": _encode(inventory["patient_sex"], normalise=True),
    }
    # +1: 0 = missing, so the packed parts stay non-negative
    key = _combine([columns[k].codes + 1 for k in ("issuer", "pid", *_DEMO)])
    tuple_of_study = pd.factorize(key)[0]
    del key
    first = _first_rows(tuple_of_study)
    per_tuple = np.bincount(tuple_of_study, minlength=len(first))
    del tuple_of_study
    frame = pd.DataFrame({k: c.codes[first].astype(np.int64) for k, c in columns.items()})
    for column in columns.values():
        column.codes = column.codes[:0]  # the per-study codes are done with: free 10 M x 5 int32
    studies = pd.Series(per_tuple, dtype="int64").groupby([frame["issuer"], frame["pid"]]).sum()
    return _Coded(frame=frame, columns=columns, studies=studies)


def _release_arrow_memory() -> None:
    """Hand the Arrow pool's freed pages back to the OS.

    Arrow's allocator keeps freed pages for reuse; after ID health on a 10 M-row inventory that is
    over a GB, which would otherwise sit under the assessment when the audit runs in one process.
    """
    pa.default_memory_pool().release_unused()


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


def _first_rows(codes: np.ndarray) -> np.ndarray:
    """Row of each code's first appearance, for ``pd.factorize`` codes (numbered in that order)."""
    if not len(codes):
        return np.empty(0, dtype=np.int64)
    opens = np.empty(len(codes), dtype=bool)
    opens[0] = True
    # a row opens a new code where it exceeds every earlier one
    np.greater(codes[1:], np.maximum.accumulate(codes)[:-1], out=opens[1:])
    return np.flatnonzero(opens)


def _n_distinct(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Per dense group: how many distinct non-missing (>= 0) values."""
    ok = values >= 0
    width = int(values.max(initial=0)) + 1
    pairs = pd.unique(group[ok] * width + values[ok])  # < 2**62: both factors are below 2**31
    return np.bincount(pairs // width, minlength=n_groups)


def _distinct_counts(
    ids: pd.DataFrame, keys: list[str], columns: tuple[str, ...] = tuple(_DEMO)
) -> pd.DataFrame:
    """Per key: how many distinct non-missing values of ``columns`` (names, birth dates, sexes).

    Integer kernels (one factorize of the packed key, one hash of packed (key, value) pairs), not
    a pandas ``drop_duplicates`` + group-by per column over the millions of identity tuples.
    """
    group = pd.factorize(_combine([ids[k].to_numpy() + 1 for k in keys]))[0]
    first = _first_rows(group)
    if len(keys) > 1:
        index = pd.MultiIndex.from_arrays([ids[k].to_numpy()[first] for k in keys], names=keys)
    else:
        index = pd.Index(ids[keys[0]].to_numpy()[first], name=keys[0])
    counts = {c: _n_distinct(group, ids[c].to_numpy(), len(first)) for c in columns}
    return pd.DataFrame(counts, index=index, dtype="int64")


def _joined(groups: list[pd.Series], text: pd.Series, sep: str, *, distinct: bool) -> dict:
    """``sep``-joined sorted texts per group key (a tuple for several group columns).

    A plain dict pass: a pandas ``agg(lambda)`` costs a Series per group, and there are 10^5.
    """
    keys = zip(*(g.tolist() for g in groups), strict=True) if len(groups) > 1 else groups[0].tolist()
    acc: dict = {}
    for key, value in zip(keys, text.tolist(), strict=True):
        acc.setdefault(key, []).append(value)
    return {k: sep.join(sorted(set(v) if distinct else v)) for k, v in acc.items()}


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
        across = scope == "across_issuers"
        counts = _distinct_counts(ids, keys, (*_DEMO, "issuer") if across else tuple(_DEMO))
        issuers = counts.pop("issuer") if across else None
        bad = (counts > 1).any(axis=1)
        if issuers is not None:
            bad &= issuers > 1
        counts = counts[bad]
        if counts.empty:
            continue
        flagged = ids.merge(counts.reset_index()[keys], on=keys)
        text = _demographics_text(coded, flagged, with_issuer=across)
        variants = _joined([flagged[k] for k in keys], text, "; ", distinct=True)
        members = flagged[["issuer", "pid"]].drop_duplicates().reset_index(drop=True)
        member_list = (
            list(zip(*(members[k].tolist() for k in keys), strict=True))
            if len(keys) > 1
            else members["pid"].tolist()
        )
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
        if across:
            names = coded.decode("issuer", members["issuer"])
            joined = _joined([members["pid"]], names, "|", distinct=False)
            related = np.asarray([joined[k] for k in member_list], dtype=object)
        out.append(
            _rows(
                coded,
                members,
                SAME_ID_DIFFERENT_DEMOGRAPHICS,
                scope,
                detail.to_numpy(),
                np.asarray([variants[k] for k in member_list], dtype=object),
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
    related = _joined([group], identity, "|", distinct=False)
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
    mask = pc.is_null(_strings(inventory["patient_id"]))
    issuers = pc.fill_null(pc.filter(_strings(inventory["issuer_of_patient_id"]), mask), "")
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
                pc.filter(_strings(inventory["study_instance_uid"]), mask).to_pylist(), dtype=object
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
    _release_arrow_memory()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    issues.to_csv(tmp, index=False)
    tmp.replace(out)
    counts = summarise(issues)
    logger.info("patient-ID issues: %s", counts or "none")
    return counts
