"""Shared fixtures: real Orthanc servers, a real PostgreSQL ledger, a real Airflow metadata DB.

Airflow's environment is set here at import time, before anything imports airflow, so no test
writes ~/airflow. Every service runs on free loopback ports and is stopped at teardown.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("PACSMIG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# Imported twice when a test does `from tests.conftest import ...`: set the environment once.
_SESSION = os.environ.setdefault("PACSMIG_TEST_SESSION", uuid.uuid4().hex[:8])
AIRFLOW_DB = f"pacsmig_test_airflow_{_SESSION}"

if "PACSMIG_TEST_AIRFLOW_HOME" not in os.environ:
    os.environ["PACSMIG_TEST_AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="pacsmig-airflow-")
_airflow_home = Path(os.environ["PACSMIG_TEST_AIRFLOW_HOME"])
os.environ.update({
    "AIRFLOW_HOME": str(_airflow_home),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
        PG_ADMIN.replace("postgresql://", "postgresql+psycopg2://").rsplit("/", 1)[0] + f"/{AIRFLOW_DB}",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
})
os.environ.setdefault("PACSMIG_DATA_DIR", str(_airflow_home / "data"))

from testbed.orthanc import OrthancServer, free_port  # noqa: E402


# --- PostgreSQL -----------------------------------------------------------------------------
@pytest.fixture
def ledger_dsn() -> Iterator[str]:
    """A fresh, migrated ledger database, dropped afterwards."""
    from pacsmig.ledger import Ledger, create_database

    name = f"pacsmig_test_{uuid.uuid4().hex[:10]}"
    dsn = create_database(PG_ADMIN, name)
    with Ledger(dsn) as ledger:
        ledger.migrate()
    yield dsn
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


# --- Orthanc --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def storage_port() -> int:
    """The port our storage SCP listens on for C-MOVE sub-operations (declared in the legacy PACS)."""
    return free_port()


@pytest.fixture(scope="session")
def legacy_pacs(tmp_path_factory: pytest.TempPathFactory, storage_port: int) -> Iterator[OrthancServer]:
    """The legacy PACS: an Orthanc Q/R SCP (no DICOMweb) that knows our AE ``PACSMIG``.

    Session-scoped and shared: tests must not change its content. A test that needs to break or
    change the source starts its own ``OrthancServer``.
    """
    server = OrthancServer(tmp_path_factory.mktemp("legacy"), name="LEGACY", aet="LEGACY",
                           modalities={"pacsmig": ("PACSMIG", "127.0.0.1", storage_port)})
    with server:
        yield server


@pytest.fixture(scope="session")
def target_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """The target VNA: an Orthanc with the DICOMweb plugin. Tests that load into it reset it first."""
    server = OrthancServer(tmp_path_factory.mktemp("target"), name="VNA", aet="VNA", dicomweb=True)
    with server:
        yield server


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - GroundTruth
    """A small seeded synthetic hospital archive on disk (with its ground truth and crosswalk)."""
    from testbed.generator import generate

    return generate(tmp_path_factory.mktemp("archive"), studies=40, seed=11)


@pytest.fixture(scope="session")
def loaded_legacy(legacy_pacs: OrthancServer, synthetic_archive):  # noqa: ANN201
    """The legacy PACS holding the synthetic archive; returns ``(server, ground_truth)``."""
    accepted = legacy_pacs.upload_files(synthetic_archive.files)
    assert accepted == len(synthetic_archive.files), "the legacy PACS refused part of the testbed archive"
    return legacy_pacs, synthetic_archive


@pytest.fixture
def legacy_node(legacy_pacs: OrthancServer, storage_port: int):  # noqa: ANN201 - DicomNode
    from pacsmig.config import DicomNode

    return DicomNode(host="127.0.0.1", port=legacy_pacs.dicom_port, ae_title=legacy_pacs.aet,
                     calling_ae_title="PACSMIG", move_destination="PACSMIG", storage_port=storage_port,
                     timeout=30)


def legacy_connection_json(server: OrthancServer, storage_port: int, **extra: object) -> str:
    """The ``legacy_pacs`` connection (AIRFLOW_CONN_LEGACY_PACS) for a given Orthanc."""
    return server.dicom_connection(storage_port, **extra).to_json()


def target_connection_json(server: OrthancServer) -> str:
    return server.dicomweb_connection().to_json()


# --- Airflow --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def airflow_db() -> Iterator[str]:
    """A migrated Airflow metadata database on the real PostgreSQL, for dag.test() and schedulers."""
    from pacsmig.ledger import create_database

    create_database(PG_ADMIN, AIRFLOW_DB, drop=True)
    airflow = str(Path(sys.executable).with_name("airflow"))
    proc = subprocess.run([airflow, "db", "migrate"], env=os.environ.copy(), capture_output=True, text=True)
    assert proc.returncode == 0, f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    yield os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    if "airflow.settings" in sys.modules:  # close Airflow's pool before its database goes away
        try:
            sys.modules["airflow.settings"].dispose_orm(do_log=False)
        except Exception:  # noqa: BLE001 - teardown only
            pass
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{AIRFLOW_DB}" WITH (FORCE)')
    conn.close()
