"""The one configuration module: connections, environment variables and paths.

Environments differ by connections (``AIRFLOW_CONN_*``) and ``PACSMIG_*`` variables, never by code
branches. The engine reads connections from the environment itself so it runs without Airflow;
inside Airflow the adapters in :mod:`pacsmig.ops` build the same objects from Airflow connections.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pacsmig.errors import ConfigError

LEGACY_PACS = "legacy_pacs"
TARGET_ARCHIVE = "target_archive"
MIGRATION_LEDGER = "migration_ledger"

#: Embedded defaults: the AE titles the testbed and `make demo` use.
DEFAULT_CALLING_AE = "PACSMIG"


def data_dir() -> Path:
    """``$PACSMIG_DATA_DIR`` (default ``./data``), created if missing."""
    path = Path(os.environ.get("PACSMIG_DATA_DIR", "data")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def sub_dir(*parts: str) -> Path:
    """A folder below the data dir (``audit``, ``staging``, ``validation`` ...), created if missing."""
    path = data_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def mpi_crosswalk_path() -> Path | None:
    """``$PACSMIG_MPI_CROSSWALK`` or None."""
    value = os.environ.get("PACSMIG_MPI_CROSSWALK")
    return Path(value) if value else None


@dataclass(frozen=True)
class ConnectionSpec:
    """The fields of an Airflow connection that pacsmig uses, without Airflow."""

    conn_id: str
    conn_type: str
    host: str = ""
    port: int | None = None
    login: str | None = None
    password: str | None = None
    schema: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, conn_id: str, text: str) -> ConnectionSpec:
        """Parse the JSON form of ``AIRFLOW_CONN_*``, or its URI form."""
        text = text.strip()
        if not text.startswith("{"):
            return cls.from_uri(conn_id, text)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"connection {conn_id}: invalid JSON ({exc})") from exc
        extra = raw.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra) if extra.strip() else {}
        return cls(
            conn_id=conn_id,
            conn_type=str(raw.get("conn_type", "")),
            host=str(raw.get("host") or ""),
            port=int(raw["port"]) if raw.get("port") not in (None, "") else None,
            login=raw.get("login"),
            password=raw.get("password"),
            schema=str(raw.get("schema") or ""),
            extra=dict(extra),
        )

    @classmethod
    def from_uri(cls, conn_id: str, uri: str) -> ConnectionSpec:
        """Parse the URI form (``postgresql://user@host:5432/db``)."""
        parts = urlsplit(uri)
        scheme = parts.scheme.replace("-", "_")
        return cls(
            conn_id=conn_id,
            conn_type={"postgresql": "postgres"}.get(scheme, scheme),
            host=unquote(parts.hostname or ""),
            port=parts.port,
            login=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            schema=parts.path.lstrip("/"),
            extra=dict(parse_qsl(parts.query)),
        )

    def to_json(self) -> str:
        """The JSON form, as ``AIRFLOW_CONN_*`` takes it."""
        body: dict[str, Any] = {"conn_type": self.conn_type, "host": self.host, "extra": self.extra}
        if self.port is not None:
            body["port"] = self.port
        for key in ("login", "password", "schema"):
            if getattr(self, key):
                body[key] = getattr(self, key)
        return json.dumps(body)


def connection(conn_id: str) -> ConnectionSpec:
    """Read a connection from ``AIRFLOW_CONN_<ID>`` (the engine's path when Airflow is absent)."""
    value = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not value:
        raise ConfigError(f"connection {conn_id!r} is not set (AIRFLOW_CONN_{conn_id.upper()})")
    return ConnectionSpec.from_json(conn_id, value)


@dataclass(frozen=True)
class DicomNode:
    """A DICOM peer (``legacy_pacs`` or a C-STORE target) and how we talk to it."""

    host: str
    port: int
    ae_title: str
    calling_ae_title: str = DEFAULT_CALLING_AE
    move_destination: str = DEFAULT_CALLING_AE
    storage_port: int = 0
    #: Results a C-FIND returns at most before the source truncates (Orthanc's LimitFindResults).
    find_cap: int = 1000
    #: Seconds for ACSE/DIMSE/network timeouts.
    timeout: float = 60.0
    #: Extract mode: "move" (C-MOVE to our storage SCP) or "get" (C-GET on the same association).
    retrieve_mode: str = "move"

    @classmethod
    def from_connection(cls, conn: ConnectionSpec) -> DicomNode:
        """Build from a ``dicom`` connection; missing keys get the embedded defaults."""
        if conn.conn_type not in ("dicom", ""):
            raise ConfigError(f"connection {conn.conn_id}: conn_type must be 'dicom', got {conn.conn_type!r}")
        if not conn.host or not conn.port:
            raise ConfigError(f"connection {conn.conn_id}: host and port are required")
        extra = conn.extra
        if not extra.get("ae_title"):
            raise ConfigError(f"connection {conn.conn_id}: extra.ae_title (the peer's AE title) is required")
        calling = str(extra.get("calling_ae_title") or DEFAULT_CALLING_AE)
        return cls(
            host=conn.host,
            port=int(conn.port),
            ae_title=str(extra["ae_title"]),
            calling_ae_title=calling,
            move_destination=str(extra.get("move_destination") or calling),
            storage_port=int(extra.get("storage_port") or 0),
            find_cap=int(extra.get("find_cap") or 1000),
            timeout=float(extra.get("timeout") or 60.0),
            retrieve_mode=str(extra.get("retrieve_mode") or "move"),
        )


def ledger_dsn(conn: ConnectionSpec | None = None) -> str:
    """The libpq DSN of ``migration_ledger``."""
    conn = conn or connection(MIGRATION_LEDGER)
    if conn.conn_type not in ("postgres", "postgresql"):
        raise ConfigError(f"connection {conn.conn_id}: conn_type must be postgres, got {conn.conn_type!r}")
    user = f"{conn.login}@" if conn.login else ""
    if conn.login and conn.password:
        user = f"{conn.login}:{conn.password}@"
    port = f":{conn.port}" if conn.port else ""
    return f"postgresql://{user}{conn.host or '127.0.0.1'}{port}/{conn.schema or 'postgres'}"


def mpi_issuer() -> str:
    """The IssuerOfPatientID given to MPI patient IDs (``$PACSMIG_MPI_ISSUER``, default HOSPITAL_MPI)."""
    return os.environ.get("PACSMIG_MPI_ISSUER", "HOSPITAL_MPI")


#: The name written to ModifyingSystem in OriginalAttributesSequence and to custody entries.
MODIFYING_SYSTEM = "PACSMIG"
