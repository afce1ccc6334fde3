"""Connections parse the same way from JSON and URI forms."""

import pytest

from pacsmig.config import ConnectionSpec, DicomNode, ledger_dsn
from pacsmig.errors import ConfigError


def test_dicom_connection_from_json() -> None:
    conn = ConnectionSpec.from_json("legacy_pacs", '{"conn_type": "dicom", "host": "pacs", "port": 104, '
                                    '"extra": {"ae_title": "OLDPACS", "storage_port": 11113}}')
    node = DicomNode.from_connection(conn)
    assert (node.host, node.port, node.ae_title, node.storage_port) == ("pacs", 104, "OLDPACS", 11113)
    assert node.calling_ae_title == node.move_destination == "PACSMIG"


def test_dicom_connection_requires_ae_title() -> None:
    conn = ConnectionSpec.from_json("legacy_pacs", '{"conn_type": "dicom", "host": "pacs", "port": 104}')
    with pytest.raises(ConfigError, match="ae_title"):
        DicomNode.from_connection(conn)


def test_ledger_uri_round_trip() -> None:
    conn = ConnectionSpec.from_json("migration_ledger", "postgresql://mig:s3@db:5433/ledger")
    assert ledger_dsn(conn) == "postgresql://mig:s3@db:5433/ledger"
