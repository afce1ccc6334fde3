"""``make bench``: five paths side by side on one generated archive, then the 10 M-study inventory.

Usage: ``python -m bench.run [--quick] [--studies N] [--paths a,b,c,d,e] [--no-inventory]``. Writes
``bench/results/<timestamp>.json`` and ``latest.json`` (+ ``latest.png``); the last line printed is
``ratio_engine_vs_orthanc_native=X.XX ratio_engine_vs_dcmtk=Y.YY`` (engine = path (c), through Airflow).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PATHS = {"a": "a_dcmtk", "b": "b_orthanc_native", "c": "c_engine_airflow", "d": "d_engine_direct",
         "e": "e_engine_airflow_per_study"}


def machine() -> dict[str, Any]:
    """nproc, CPU model and RAM, for the README table."""
    import psutil

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Throughput ratios (images/s) and the Airflow share of the engine's wall time."""

    def rate(key: str) -> float | None:
        r = results.get(key)
        return r["images_per_s"] if r and r.get("images_per_s") else None

    c, b, a, d = rate("c_engine_airflow"), rate("b_orthanc_native"), rate("a_dcmtk"), rate("d_engine_direct")
    out: dict[str, float | None] = {
        "engine_vs_orthanc_native": round(c / b, 3) if c and b else None,
        "engine_vs_dcmtk": round(c / a, 3) if c and a else None,
        "engine_direct_vs_orthanc_native": round(d / b, 3) if d and b else None,
        "engine_direct_vs_dcmtk": round(d / a, 3) if d and a else None,
    }
    wc, wd = (
        results.get("c_engine_airflow", {}).get("wall_s"),
        results.get("d_engine_direct", {}).get("wall_s"),
    )
    out["airflow_overhead_share"] = round((wc - wd) / wc, 3) if wc and wd else None
    we = results.get("e_engine_airflow_per_study", {}).get("wall_s")
    out["airflow_overhead_share_one_task_per_study"] = round((we - wd) / we, 3) if we and wd else None
    # Per DAG: the run's wall time (queued -> end) against the same phase called directly.
    c_runs = results.get("c_engine_airflow", {}).get("runs") or {}
    d_phases = results.get("d_engine_direct", {}).get("phases_s") or {}
    by_dag = {}
    for dag_id, phase in (("pacs_plan", "plan"), ("pacs_migrate", "migrate"), ("pacs_validate", "validate")):
        run, direct = c_runs.get(dag_id, {}).get("queued_to_end_s"), d_phases.get(phase)
        if run and direct is not None:
            by_dag[dag_id] = {"airflow_s": run, "direct_s": direct, "overhead_s": round(run - direct, 3),
                              "overhead_share": round((run - direct) / run, 3)}
    out["airflow_overhead_by_dag"] = by_dag  # type: ignore[assignment]
    return out


def ratio_line(r: dict[str, float | None]) -> str:
    def fmt(v: float | None) -> str:
        return f"{v:.2f}" if v is not None else "nan"

    return (
        f"ratio_engine_vs_orthanc_native={fmt(r['engine_vs_orthanc_native'])} "
        f"ratio_engine_vs_dcmtk={fmt(r['engine_vs_dcmtk'])}"
    )


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, met or not (benchmarks, not tests)."""
    r, res = report["ratios"], report["paths"]
    lost = {k: v.get("lost") for k, v in res.items()}
    out = {
        "engine_ge_0.8x_orthanc_native": (r["engine_vs_orthanc_native"] or 0) >= 0.8
        if r["engine_vs_orthanc_native"] is not None
        else None,
        "airflow_overhead_le_5pct": (r["airflow_overhead_share"] <= 0.05)
        if r["airflow_overhead_share"] is not None
        else None,
        "zero_lost_instances": all(v == 0 for v in lost.values() if v is not None),
        "lost_instances_by_path": lost,
    }
    inv = report.get("inventory_scale")
    if inv and inv.get("ok"):
        out["inventory_10m_lt_60s"] = inv["total_s"] < 60
        out["inventory_10m_lt_4gib"] = inv["peak_rss_mb"] < 4096
    return out


def plot(report: dict[str, Any], png: Path) -> Path | None:
    """Images/s and CPU ms per image per process group, one bar per path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    res = report["paths"]
    names = list(res)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.bar(names, [res[n]["images_per_s"] or 0 for n in names], color="#4477aa")
    ax1.set_ylabel("images/s")
    ax1.set_title(f"{report['archive']['instances']} instances, {report['archive']['megabytes']:.0f} MB")
    groups = sorted({g for n in names for g in res[n]["cpu_ms_per_image"]})
    bottom = [0.0] * len(names)
    for g in groups:
        vals = [res[n]["cpu_ms_per_image"].get(g, 0.0) for n in names]
        ax2.bar(names, vals, bottom=bottom, label=g)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax2.set_ylabel("CPU ms per image")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle(f"pacsmig bench {report['timestamp']} ({report['machine']['nproc']} cores)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def run_inventory_scale(rows: int, timeout: float = 900) -> dict[str, Any]:
    """The inventory profile in a child process (its peak memory is its own)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.inventory_scale", "--rows", str(rows), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"ok": False, "rows": rows, "returncode": proc.returncode, "stderr": proc.stderr[-2000:]}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    from bench.archive import PROFILES, build_archive, upload
    from bench.paths import (
        run_dcmtk,
        run_engine_airflow,
        run_engine_airflow_per_study,
        run_engine_direct,
        run_orthanc_native,
    )
    from testbed.orthanc import OrthancServer, free_port

    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (~1-2 min)")
    parser.add_argument("--studies", type=int)
    parser.add_argument("--images-scale", type=float)
    parser.add_argument("--matrix", type=int)
    parser.add_argument("--paths", default="a,b,c,d,e",
                        help="comma list of a (dcmtk), b (Orthanc), c (Airflow, packed tasks), d (no Airflow), "
                             "e (Airflow, one task per study)")
    parser.add_argument(
        "--inventory-rows", type=int, help="rows of the inventory profile (default 10 M; quick 200 k)"
    )
    parser.add_argument("--no-inventory", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temp dir, removed)")
    args = parser.parse_args(argv)

    profile = dict(PROFILES["quick" if args.quick else "default"])
    for key in ("studies", "images_scale", "matrix"):
        if getattr(args, key) is not None:
            profile[key] = getattr(args, key)
    wanted = [PATHS[p.strip()] for p in args.paths.split(",") if p.strip()]
    work = args.work or Path(tempfile.mkdtemp(prefix="pacsmig-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    t_all = time.perf_counter()
    report: dict[str, Any] = {
        "timestamp": stamp,
        "machine": machine(),
        "profile": profile,
        "quick": args.quick,
        "paths": {},
    }
    print(
        f"pacsmig bench {stamp}: {profile} on {report['machine']['nproc']} cores "
        f"({report['machine']['cpu_model']}); work dir {work}",
        flush=True,
    )
    archive = build_archive(work, **profile)
    storage_port = free_port()
    legacy = OrthancServer(
        work / "legacy",
        name="LEGACY",
        aet="LEGACY",
        modalities={"pacsmig": ("PACSMIG", "127.0.0.1", storage_port)},
    ).start()
    try:
        upload(archive, legacy)
        report["archive"] = {
            "studies": archive.truth.n_studies,
            "instances": archive.n_instances,
            "megabytes": round(archive.total_bytes / 1e6, 2),
            "by_modality": archive.truth.by_modality(),
            "generate_s": round(archive.generate_s, 2),
            "upload_s": round(archive.upload_s, 2),
        }
        print(
            f"archive: {archive.truth.n_studies} studies, {archive.n_instances} instances, "
            f"{archive.total_bytes / 1e6:.1f} MB (generated in {archive.generate_s:.0f}s, "
            f"uploaded in {archive.upload_s:.0f}s)",
            flush=True,
        )
        runners = {
            "a_dcmtk": run_dcmtk,
            "b_orthanc_native": run_orthanc_native,
            "c_engine_airflow": run_engine_airflow,
            "d_engine_direct": run_engine_direct,
            "e_engine_airflow_per_study": run_engine_airflow_per_study,
        }
        for name in wanted:
            t = time.perf_counter()
            print(f"--- {name} ...", flush=True)
            res = runners[name](archive, work, legacy)
            report["paths"][name] = res
            print(
                f"{name}: {res['images_per_s']} images/s, {res['mb_per_s']} MB/s, wall {res['wall_s']}s, "
                f"lost {res['lost']}, CPU ms/image {res['cpu_ms_per_image']} "
                f"(phase took {time.perf_counter() - t:.0f}s)",
                flush=True,
            )
    finally:
        legacy.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if not args.no_inventory:
        rows = args.inventory_rows or (200_000 if args.quick else 10_000_000)
        print(f"--- inventory profile, {rows} studies ...", flush=True)
        report["inventory_scale"] = run_inventory_scale(rows)
        inv = report["inventory_scale"]
        print(
            f"inventory {rows}: "
            + (
                f"{inv['total_s']}s, peak {inv['peak_rss_mb']} MB, stages {inv['stages_s']}"
                if inv.get("ok")
                else f"FAILED: {inv.get('stderr', '')[-500:]}"
            ),
            flush=True,
        )
    report["ratios"] = ratios(report["paths"])
    report["targets"] = targets(report)
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    body = json.dumps(report, indent=2, default=str)
    (args.results / f"{stamp}.json").write_text(body)
    (args.results / "latest.json").write_text(body)
    png = plot(report, args.results / f"{stamp}.png")
    if png:
        shutil.copy(png, args.results / "latest.png")
    print(json.dumps({"ratios": report["ratios"], "targets": report["targets"]}, indent=2, default=str))
    print(f"results: {args.results / (stamp + '.json')} (total {report['total_s']}s)")
    print(ratio_line(report["ratios"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
