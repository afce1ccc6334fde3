"""Smoke test of the benchmark harness on a tiny archive: paths (a), (b), (d), the JSON and the ratio line.

Not a timed test: it asserts what the harness reports (fields, counts, format), never a speed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")


def test_bench_quick_writes_results_and_the_ratio_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.run import main

    results = tmp_path / "results"
    rc = main(
        [
            "--quick",
            "--studies",
            "4",
            "--paths",
            "a,b,d",
            "--inventory-rows",
            "20000",
            "--results",
            str(results),
            "--work",
            str(tmp_path / "work"),
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    line = r"ratio_engine_vs_orthanc_native=(\d+\.\d\d|nan) ratio_engine_vs_dcmtk=(\d+\.\d\d|nan)"
    assert re.fullmatch(line, lines[-1]), lines[-1]

    report = json.loads((results / "latest.json").read_text())
    stamped = [p for p in results.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1 and json.loads(stamped[0].read_text()) == report
    assert (results / "latest.png").stat().st_size > 0
    assert {"nproc", "cpu_model", "ram_gib"} <= set(report["machine"])
    instances = report["archive"]["instances"]
    assert instances > 0
    assert set(report["paths"]) == {"a_dcmtk", "b_orthanc_native", "d_engine_direct"}
    for name, path in report["paths"].items():
        keys = ("images_per_s", "mb_per_s", "wall_s", "cpu_ms_per_image", "peak_rss_mb", "lost", "received")
        for key in keys:
            assert key in path, (name, key)
        # Every path moved the whole archive into its own fresh target.
        assert path["images"] == instances and path["received"] == instances, (name, path["received"])
        assert path["lost"] == 0
        assert path["images_per_s"] > 0 and path["cpu_s_total"] > 0
    assert report["paths"]["a_dcmtk"]["cpu_s"].get("dcmtk", 0) > 0
    assert report["paths"]["b_orthanc_native"]["cpu_s"].get("orthanc_target", 0) > 0
    direct = report["paths"]["d_engine_direct"]
    assert direct["validation"]["instances_source"] == instances
    assert direct["validation"]["instances_verified"] == instances, direct["validation"]
    stages = set(direct["stage_seconds_summed_over_workers"])
    assert {"move", "hash", "transform", "stow", "confirm"} <= stages
    # The ratio line is computed from the JSON's own figures ((c) was not run: nan).
    assert lines[-1] == "ratio_engine_vs_orthanc_native=nan ratio_engine_vs_dcmtk=nan"
    assert report["ratios"]["engine_direct_vs_orthanc_native"] == pytest.approx(
        direct["images_per_s"] / report["paths"]["b_orthanc_native"]["images_per_s"], abs=6e-4
    )  # the report rounds ratios to three decimals
    inventory = report["inventory_scale"]
    assert inventory["ok"] and inventory["rows"] == 20000 and inventory["studies"] == 20000
    assert inventory["peak_rss_mb"] > 0 and set(inventory["stages_s"]) >= {"id_health", "assessment"}
