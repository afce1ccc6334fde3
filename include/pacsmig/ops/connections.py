"""Airflow adapter: read pacsmig connections through Airflow (metadata DB, secrets, AIRFLOW_CONN_*)."""

from __future__ import annotations

from typing import Any

from pacsmig.config import ConnectionSpec, DicomNode, ledger_dsn


def get_connection(conn_id: str) -> ConnectionSpec:
    """The connection ``conn_id`` as Airflow resolves it, as an engine :class:`ConnectionSpec`."""
    from airflow.sdk import BaseHook

    conn: Any = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    return ConnectionSpec(
        conn_id=conn_id,
        conn_type=str(conn.conn_type or ""),
        host=str(conn.host or ""),
        port=int(conn.port) if conn.port else None,
        login=conn.login,
        password=conn.password,
        schema=str(conn.schema or ""),
        extra=dict(extra),
    )


def dicom_node(conn_id: str = "legacy_pacs") -> DicomNode:
    return DicomNode.from_connection(get_connection(conn_id))


def ledger(conn_id: str = "migration_ledger") -> str:
    """The ledger DSN from the Airflow connection."""
    return ledger_dsn(get_connection(conn_id))
