"""Patient-ID health on an inventory built here (known problems in, the same problems out)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from pacsmig.audit.idhealth import id_pattern, normalise_text, patient_id_issues, summarise


def _inventory() -> pd.DataFrame:
    rows = [
        # one hospital ID on two different people (registration error, within the issuer)
        ("1.1", "MRN00000001", "HOSP", "Smith^John", "19600101", "M"),
        ("1.2", "MRN00000001", "HOSP", "Doe^Jane", "19700202", "F"),
        # the same person spelled differently: normalisation must not flag it
        ("1.3", "MRN00000002", "HOSP", "brown^ anna^^", "19800303", "F"),
        ("1.4", "MRN00000002", "HOSP", "BROWN^ANNA", "19800303", "F"),
        # a missing birth date is not a difference
        ("1.5", "MRN00000002", "HOSP", "Brown^Anna", None, "F"),
        # one ID string in two issuers for two people (only the issuer tells them apart)
        ("1.6", "MRN00000003", "HOSP", "King^Ann", "19500505", "F"),
        ("1.7", "MRN00000003", "CLINIC", "Lee^Bo", "20000606", "M"),
        # one person under two IDs
        ("1.8", "CB-00001", "CLINIC", "Green^Tom", "19900707", "M"),
        ("1.9", "MRN00000004", "HOSP", "GREEN^TOM", "19900707", "M"),
        # no patient ID at all
        ("1.10", None, "HOSP", "Nobody^X", "19990909", "O"),
    ]
    rows += [(f"2.{k}", f"CB-{k:05d}", "CLINIC", f"Person^{k}", "19450101", "F") for k in range(2, 9)]
    rows += [(f"3.{k}", f"MRN{k + 10:08d}", "HOSP", f"Other^{k}", "19450101", "M") for k in range(6)]
    return pd.DataFrame(
        rows,
        columns=[
            "study_instance_uid",
            "patient_id",
            "issuer_of_patient_id",
            "patient_name",
            "patient_birth_date",
            "patient_sex",
        ],
    )


def test_normalisation_and_patterns() -> None:
    assert normalise_text(pd.Series(["  müller^jürgen ", "A=B", ""])).tolist()[:2] == ["MÜLLER JÜRGEN", "A B"]
    assert pd.isna(normalise_text(pd.Series([""]))[0])
    assert id_pattern(pd.Series(["MRN00012345", "cb-12", "X 1"])).tolist() == ["AAA99999999", "AA-99", "A 9"]


def test_every_planted_issue_is_found_and_nothing_else() -> None:
    issues = patient_id_issues(_inventory())
    same_id = issues[issues.kind == "same_id_different_demographics"]
    assert set(zip(same_id.scope, same_id.issuer_of_patient_id, same_id.patient_id, strict=True)) == {
        ("within_issuer", "HOSP", "MRN00000001"),  # one issuer: not an across-issuers case
        ("across_issuers", "HOSP", "MRN00000003"),
        ("across_issuers", "CLINIC", "MRN00000003"),
    }
    assert "MRN00000002" not in set(issues.patient_id)
    split = issues[issues.kind == "same_demographics_different_ids"]
    assert set(zip(split.issuer_of_patient_id, split.patient_id, strict=True)) == {
        ("CLINIC", "CB-00001"),
        ("HOSP", "MRN00000004"),
    }
    assert set(split.related) == {"CLINIC:CB-00001|HOSP:MRN00000004"}
    outliers = issues[issues.kind == "id_format_outlier"]
    assert set(outliers.patient_id) == {"MRN00000003"} and set(outliers.issuer_of_patient_id) == {"CLINIC"}
    missing = issues[issues.kind == "missing_patient_id"]
    assert missing.study_instance_uid.tolist() == ["1.10"]
    assert summarise(issues)["same_demographics_different_ids"] == 2
    assert int(same_id[same_id.patient_id == "MRN00000001"].n_studies.iloc[0]) == 2


def test_arrow_table_input_gives_the_same_answer() -> None:
    frame = _inventory()
    from_frame = patient_id_issues(frame)
    from_table = patient_id_issues(pa.Table.from_pandas(frame, preserve_index=False))
    pd.testing.assert_frame_equal(from_frame, from_table)


def test_clean_inventory_has_no_issues() -> None:
    clean = _inventory().iloc[10:]
    clean = clean[clean.issuer_of_patient_id == "HOSP"]
    assert patient_id_issues(clean).empty


def test_chunked_arrow_columns_give_the_same_answer() -> None:
    # Parquet hands ID health one chunk per row group; chunks are encoded against one dictionary,
    # so a value first seen in a later chunk (or a chunk of nulls) must still code the same.
    frame = _inventory()
    frame.loc[3, "issuer_of_patient_id"] = None  # a missing issuer counts as the empty issuer
    table = pa.Table.from_pandas(frame, preserve_index=False)
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=3))
    assert chunked.column("patient_id").num_chunks > 5
    pd.testing.assert_frame_equal(patient_id_issues(frame), patient_id_issues(chunked))


def test_identity_keys_stay_exact_beyond_63_bits() -> None:
    import numpy as np

    from pacsmig.audit.idhealth import _combine

    rng = np.random.default_rng(1)
    parts = [
        rng.integers(0, 3, 500) * (2**40 - 1),
        rng.integers(0, 3, 500) * (2**40 - 3),
        rng.integers(0, 2, 500),
    ]
    key = _combine(parts)  # 41 + 41 + 1 bits: packing alone would overflow
    tuples = list(zip(*(p.tolist() for p in parts), strict=True))
    for i in range(0, 500, 7):
        for j in range(500):
            assert (key[i] == key[j]) == (tuples[i] == tuples[j])
