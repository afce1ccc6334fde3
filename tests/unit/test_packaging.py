"""The files users rely on without running them here: compose file, Dockerfile, requirements."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_compose_file_validates_against_the_compose_specification() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    proc = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec",
                           str(REPO / "docker-compose.yaml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_declares_the_whole_stack() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    services = set(compose["services"])
    assert {"postgres", "redis", "legacy-pacs", "target-archive", "s3", "airflow-scheduler",
            "airflow-worker", "airflow-apiserver", "airflow-triggerer", "adt-listener"} <= services
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    legacy = json.loads(env["AIRFLOW_CONN_LEGACY_PACS"])
    assert {"ae_title", "calling_ae_title", "move_destination", "storage_port"} <= set(legacy["extra"])
    assert "./include:/opt/pacsmig/include" in compose["x-airflow-common"]["volumes"]
    for path in [v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])
                 if isinstance(v, str) and v.startswith("./")]:
        assert (REPO / path).exists(), path


def test_requirements_are_pinned_and_match_the_dockerfile_base() -> None:
    lines = [ln.strip() for ln in (REPO / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines and all(re.match(r"^[A-Za-z0-9_.\-\[\]]+==[\w.]+$", ln) for ln in lines), lines
    airflow = next(ln for ln in lines if ln.startswith("apache-airflow=="))
    base = re.search(r"^FROM apache/airflow:([\d.]+)-python3\.11$", (REPO / "Dockerfile").read_text(), re.M)
    assert base and airflow.endswith("==" + base.group(1))
