"""House rules that a linter can check: Airflow 3 public API only (AIR3), imports, pyflakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_including_airflow3_rules_is_clean() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    proc = subprocess.run([str(ruff), "check", "--no-cache", "include", "dags", "plugins", "testbed", "tests"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_dag_files_import_no_heavy_library_at_parse_time() -> None:
    heavy = ("pynetdicom", "pydicom", "great_expectations", "psycopg2", "boto3", "pandas")
    for path in (REPO / "dags").glob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("import ", "from ")):
                assert line.split()[1].split(".")[0] not in heavy, f"{path.name}: {line}"
