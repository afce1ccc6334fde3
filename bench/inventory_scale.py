"""The inventory at scale: a synthetic 10 M-study inventory through the audit's profiling and assessment.

The inventory is generated vectorised (numpy + Arrow kernels, never per row) in a child process,
written as Parquet with the audit's schema, then read back and profiled here, so this process's
peak RSS (``ru_maxrss``) is the audit's own. Usage:
``python -m bench.inventory_scale --rows 10000000 [--json] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TARGET_SECONDS = 60.0
TARGET_RSS_MB = 4096.0

_FAMILY = np.array(
    [
        "SMITH",
        "JOHNSON",
        "WILLIAMS",
        "BROWN",
        "JONES",
        "GARCIA",
        "MILLER",
        "DAVIS",
        "RODRIGUEZ",
        "MARTINEZ",
        "HERNANDEZ",
        "LOPEZ",
        "GONZALEZ",
        "WILSON",
        "ANDERSON",
        "THOMAS",
        "TAYLOR",
        "MOORE",
        "JACKSON",
        "MARTIN",
        "LEE",
        "PEREZ",
        "THOMPSON",
        "WHITE",
        "HARRIS",
        "SANCHEZ",
        "CLARK",
        "RAMIREZ",
        "LEWIS",
        "ROBINSON",
        "MÜLLER",
        "LEFÈVRE",
        "NGUYEN",
        "KIM",
        "PATEL",
    ]
)
_GIVEN = np.array(
    [
        "JAMES",
        "MARY",
        "JOHN",
        "PATRICIA",
        "ROBERT",
        "JENNIFER",
        "MICHAEL",
        "LINDA",
        "WILLIAM",
        "ELIZABETH",
        "DAVID",
        "BARBARA",
        "RICHARD",
        "SUSAN",
        "JOSEPH",
        "JESSICA",
        "THOMAS",
        "SARAH",
        "CHARLES",
        "KAREN",
        "HÉLÈNE",
        "JÜRGEN",
        "WEI",
        "ANA",
        "OMAR",
        "FATIMA",
        "LUCA",
        "SOFIA",
    ]
)
#: Study mix (primary modality) and typical (series, instances) per study of a general hospital.
_MODS = np.array(["CR", "DX", "CT", "MR", "US", "MG", "XA", "NM", "PT"])
_MOD_P = np.array([0.20, 0.16, 0.17, 0.12, 0.14, 0.10, 0.04, 0.05, 0.02])
_SERIES = {
    "CR": (1, 3),
    "DX": (1, 3),
    "CT": (2, 8),
    "MR": (4, 12),
    "US": (1, 3),
    "MG": (1, 3),
    "XA": (1, 5),
    "NM": (1, 3),
    "PT": (2, 5),
}
_PER_SERIES = {
    "CR": (1, 1),
    "DX": (1, 1),
    "CT": (30, 300),
    "MR": (20, 60),
    "US": (3, 30),
    "MG": (1, 4),
    "XA": (1, 3),
    "NM": (1, 4),
    "PT": (100, 300),
}
_MANUFACTURERS = np.array(
    ["GE MEDICAL SYSTEMS", "SIEMENS", "Philips", "TOSHIBA", "FUJIFILM", "Hologic", None]
)


def _s(values: np.ndarray | list[Any]) -> pa.Array:
    return pa.array(values, type=pa.string())


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _zero_pad(numbers: np.ndarray, width: int) -> pa.Array:
    return pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")


def synthetic_inventory(rows: int, seed: int = 7) -> pa.Table:
    """An inventory table with the audit's schema: ~5 studies per patient, two issuers, dirty IDs.

    Dirt, at hospital-like rates: a Patient ID reused for a second person (0.05 %), one person
    under a second ID (0.05 %), lower-case / spaced IDs (0.02 %), missing IDs (0.01 %), missing
    birth dates (1 %), missing (0.1 %) and malformed (0.05 %) study dates, empty accession numbers.
    """
    from pacsmig.audit.inventory import SCHEMA

    rng = np.random.default_rng(seed)
    n_pat = max(1, rows // 5)
    # --- patients -------------------------------------------------------------------------------
    clinic = rng.random(n_pat) < 0.12
    pid_num = rng.permutation(np.arange(10_000_000, 10_000_000 + n_pat * 3, 3))[:n_pat]
    hosp_ids = _join("MRN", _zero_pad(pid_num % 100_000_000, 8))
    clinic_ids = _join("CB-", _zero_pad(pid_num % 100_000, 5))
    pat_id = pc.if_else(pa.array(clinic), clinic_ids, hosp_ids)
    pat_issuer = pc.if_else(pa.array(clinic), pa.scalar("CLINIC_B"), pa.scalar("HOSP_A"))
    names = _join(
        _s(_FAMILY).take(pa.array(rng.integers(0, len(_FAMILY), n_pat))),
        "^",
        _s(_GIVEN).take(pa.array(rng.integers(0, len(_GIVEN), n_pat))),
    )
    days = rng.integers(0, 90 * 365, n_pat).astype("int32") - 25_000  # birth days since 1970 (1901..1990)
    births = pc.strftime(pc.cast(pa.array(days, pa.int32()), pa.date32()), format="%Y%m%d")
    sex = _s(np.array(["M", "F", "O"])).take(pa.array(rng.choice(3, n_pat, p=[0.49, 0.50, 0.01])))
    # --- studies ----------------------------------------------------------------------------------
    who = pa.array(rng.integers(0, n_pat, rows))
    patient_id, issuer = pat_id.take(who), pat_issuer.take(who)
    name, birth, psex = names.take(who), births.take(who), sex.take(who)
    dirt = rng.random(rows)
    other = pa.array(rng.integers(0, n_pat, rows))
    # Same ID, different person: the study carries another patient's ID under the same issuer.
    reused = pa.array(dirt < 0.0005)
    patient_id = pc.if_else(reused, pat_id.take(other), patient_id)
    issuer = pc.if_else(reused, pat_issuer.take(other), issuer)
    # Same person, second ID (a new MRN keyed at a second registration).
    second = pa.array((dirt >= 0.0005) & (dirt < 0.001))
    patient_id = pc.if_else(
        second, _join("MRN", _zero_pad(rng.integers(90_000_000, 99_999_999, rows), 8)), patient_id
    )
    # Keyed by hand: lower case with a space; missing altogether.
    sloppy = pa.array((dirt >= 0.001) & (dirt < 0.0012))
    patient_id = pc.if_else(
        sloppy, pc.replace_substring(pc.utf8_lower(patient_id), "mrn", "mrn "), patient_id
    )
    patient_id = pc.if_else(
        pa.array((dirt >= 0.0012) & (dirt < 0.0013)), pa.scalar(None, pa.string()), patient_id
    )
    birth = pc.if_else(pa.array(rng.random(rows) < 0.01), pa.scalar(None, pa.string()), birth)
    # Issuer missing on a few old hospital studies.
    issuer = pc.if_else(pa.array(rng.random(rows) < 0.002), pa.scalar(None, pa.string()), issuer)

    mod_idx = rng.choice(len(_MODS), rows, p=_MOD_P)
    mods = _s(_MODS).take(pa.array(mod_idx))
    with_sr = pa.array(rng.random(rows) < 0.15)
    modalities = pc.if_else(with_sr, _join(mods, "\\SR"), mods)
    lo_s = np.array([_SERIES[m][0] for m in _MODS])[mod_idx]
    hi_s = np.array([_SERIES[m][1] for m in _MODS])[mod_idx]
    n_series = rng.integers(lo_s, hi_s + 1)
    lo_i = np.array([_PER_SERIES[m][0] for m in _MODS])[mod_idx]
    hi_i = np.array([_PER_SERIES[m][1] for m in _MODS])[mod_idx]
    n_instances = n_series * rng.integers(lo_i, hi_i + 1) + np.asarray(with_sr, dtype=np.int64)

    sdays = (rng.integers(0, 15 * 365, rows) + 14_610).astype("int32")  # 2010-01-01 .. 2024
    study_date = pc.cast(pa.array(sdays, pa.int32()), pa.date32())
    raw = pc.strftime(study_date, format="%Y%m%d")
    status_draw = rng.random(rows)
    missing_date = pa.array(status_draw < 0.001)
    malformed = pa.array((status_draw >= 0.001) & (status_draw < 0.0015))
    raw = pc.if_else(missing_date, pa.scalar(None, pa.string()), pc.if_else(malformed, _join(raw, "X"), raw))
    study_date = pc.if_else(pc.or_(missing_date, malformed), pa.scalar(None, pa.date32()), study_date)
    status = pc.if_else(
        missing_date, pa.scalar("missing"), pc.if_else(malformed, pa.scalar("malformed"), pa.scalar("ok"))
    )
    accession = _join("ACC", _zero_pad(np.arange(rows) + 1, 10))
    acc_draw = rng.random(rows)
    accession = pc.if_else(
        pa.array(acc_draw < 0.01),
        pa.scalar(None, pa.string()),
        pc.if_else(pa.array(acc_draw > 0.995), pa.scalar(""), accession),
    )
    uids = _join("1.2.826.0.1.3680043.10.543.", pc.cast(pa.array(np.arange(rows) + 1), pa.string()))
    times = _join(_zero_pad(rng.integers(0, 24, rows), 2), _zero_pad(rng.integers(0, 60, rows), 2), "00")
    description = _join(
        mods,
        " ",
        _s(np.array(["ROUTINE", "FOLLOW UP", "URGENT", "SCREENING"])).take(
            pa.array(rng.integers(0, 4, rows))
        ),
    )
    manufacturer = _s(_MANUFACTURERS).take(pa.array(rng.integers(0, len(_MANUFACTURERS), rows)))
    window = pc.if_else(missing_date, pa.scalar("undated"), pc.utf8_slice_codeunits(raw, 0, 4))
    columns = {
        "study_instance_uid": uids,
        "patient_id": patient_id,
        "issuer_of_patient_id": issuer,
        "patient_name": name,
        "patient_birth_date": birth,
        "patient_sex": psex,
        "study_date": study_date,
        "study_date_raw": raw,
        "study_date_status": status,
        "study_time": times,
        "accession_number": accession,
        "study_description": description,
        "modalities": modalities,
        "primary_modality": mods,
        "n_series": pa.array(n_series, pa.int64()),
        "n_instances": pa.array(n_instances, pa.int64()),
        "counts_source": pa.array(np.full(rows, "study", dtype=object), pa.string()),
        "manufacturer": manufacturer,
        "est_bytes": pa.nulls(rows, pa.int64()),
        "window": window,
    }
    return pa.table({k: columns[k] for k in SCHEMA.names}, schema=SCHEMA)


def synthetic_samples(seed: int = 7) -> Any:
    """What the audit's sampling step would have retrieved: a few instances per modality group."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    sizes = {"CR": 8e6, "DX": 10e6, "CT": 525e3, "MR": 260e3, "US": 1.2e6, "MG": 40e6, "XA": 20e6, "NM": 4e5}
    rows = [
        {
            "modality": m,
            "size_bytes": int(s * rng.uniform(0.7, 1.3)),
            "series_instance_uid": f"{m}.{k // 3}",
            "series_instances": int(rng.integers(1, 300)),
        }
        for m, s in sizes.items()
        for k in range(9)
    ]
    return pd.DataFrame(rows)  # PT is left unsampled: it must fall back to the nominal size


def profile_inventory(path: Path, out: Path) -> dict[str, Any]:
    """Read the inventory and run the audit's profiling, ID health and assessment on it; times per stage."""
    from pacsmig.audit.assessment import build_assessment, write_json
    from pacsmig.audit.idhealth import write_issues
    from pacsmig.audit.inventory import ASSESSMENT_COLUMNS, ID_HEALTH_COLUMNS, read_inventory
    from pacsmig.audit.profile import bytes_method_text, estimate_bytes

    stages: dict[str, float] = {}
    t = time.perf_counter()
    id_table = pq.read_table(path, columns=list(ID_HEALTH_COLUMNS))
    issues = write_issues(id_table, out / "patient_id_issues.csv")
    del id_table
    stages["id_health"] = time.perf_counter() - t
    # As in pacs_audit, where ID health and the assessment are separate tasks (processes): the
    # inventory is read for the assessment only after the ID-health tables are gone.
    t = time.perf_counter()
    inventory = read_inventory(path, ASSESSMENT_COLUMNS)
    stages["read_inventory"] = time.perf_counter() - t
    t = time.perf_counter()
    est, provenance = estimate_bytes(inventory, synthetic_samples())
    inventory["est_bytes"] = est.to_numpy()
    stages["profile_estimate_bytes"] = time.perf_counter() - t
    t = time.perf_counter()
    body = build_assessment(
        inventory,
        provenance=provenance,
        bytes_method=bytes_method_text(provenance),
        throughput_images_per_s=150.0,
        link_mbit_s=1000.0,
        id_issues=issues,
    )
    write_json(body, out / "assessment.json")
    stages["assessment"] = time.perf_counter() - t
    return {
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
        "total_s": round(sum(stages.values()), 3),
        "issues": issues,
        "studies": body["studies"],
        "instances": body["instances"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inventory_scale", description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON line (what bench.run reads)")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the audit stages (top 25 by cumtime)"
    )
    parser.add_argument("--generate-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, help="keep the Parquet and outputs in this folder")
    args = parser.parse_args(argv)

    if args.generate_only:
        pq.write_table(
            synthetic_inventory(args.rows, args.seed), args.generate_only, row_group_size=1_000_000
        )
        return 0
    work = args.keep or Path(tempfile.mkdtemp(prefix="pacsmig-inventory-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "inventory.parquet"
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.inventory_scale",
            "--rows",
            str(args.rows),
            "--seed",
            str(args.seed),
            "--generate-only",
            str(path),
        ],
        check=True,
    )
    generate_s = time.perf_counter() - t
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    result = profile_inventory(path, work)
    if profiler:
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
        print(text.getvalue(), file=sys.stderr)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result.update(
        {
            "ok": True,
            "rows": args.rows,
            "parquet_mb": round(path.stat().st_size / 1e6, 1),
            "generate_s": round(generate_s, 2),
            "peak_rss_mb": round(peak, 1),
            "rss_before_mb": round(before, 1),
            "meets_targets": result["total_s"] < TARGET_SECONDS and peak < TARGET_RSS_MB,
        }
    )
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
