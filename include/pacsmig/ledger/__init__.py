"""The migration ledger: PostgreSQL schema, migrations, and the queries every phase shares.

Every state change of a study goes through :meth:`Ledger.set_state`, which appends a custody entry
in the same transaction: there is no way to move a study without leaving a trace.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from importlib import resources
from typing import Any

import psycopg2
import psycopg2.extras

from pacsmig.errors import LedgerError


class StudyState(enum.StrEnum):
    DISCOVERED = "discovered"
    QUEUED = "queued"
    EXTRACTING = "extracting"
    EXTRACTED = "extracted"
    TRANSFORMED = "transformed"
    LOADED = "loaded"
    VERIFIED = "verified"
    QUARANTINED = "quarantined"
    HELD = "held"
    REVIEW = "review"


class Reason(enum.StrEnum):
    """Quarantine / hold / review reason codes (never free text; details go beside them)."""

    NO_MPI_MATCH = "no_mpi_match"
    MALFORMED_INSTANCE = "malformed_instance"
    UID_CONFLICT = "uid_conflict"
    MISSING_INSTANCES = "missing_instances"
    SOURCE_ERROR = "source_error"
    TRANSFORM_FAILED = "transform_failed"
    TARGET_REJECTED = "target_rejected"
    TARGET_CONTENT_MISMATCH = "target_content_mismatch"
    PIXEL_MISMATCH = "pixel_mismatch"
    HEADER_MISMATCH = "header_mismatch"
    MISSING_AT_TARGET = "missing_at_target"
    CHANGED_AT_SOURCE = "changed_at_source"


#: Reasons that flag a study for review without blocking it: they survive later state changes
#: (a study whose malformed instance was quarantined stays flagged after it is loaded).
FLAG_REASONS = frozenset({"malformed_instance", "uid_conflict", "target_content_mismatch", "transform_failed"})

#: Sentinel hash that starts the custody chain.
GENESIS_HASH = "0" * 64

# Only one writer extends the chain at a time (the chain is a total order).
_CUSTODY_LOCK_KEY = 0x70616373  # "pacs"


def actor() -> str:
    """Who acts: the Airflow task instance if any, else host and process."""
    ti = os.environ.get("AIRFLOW_CTX_DAG_ID")
    if ti:
        return (f"airflow:{ti}.{os.environ.get('AIRFLOW_CTX_TASK_ID', '?')}"
                f"[{os.environ.get('AIRFLOW_CTX_DAG_RUN_ID', '?')}]@{socket.gethostname()}")
    return f"pacsmig@{socket.gethostname()}:{os.getpid()}"


def canonical(obj: Any) -> str:
    """Canonical JSON used for hashing (sorted keys, no spaces, ISO dates)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def custody_entry_hash(prev_hash: str, seq: int, study_instance_uid: str | None, event: str,
                       actor_: str, details: dict[str, Any], created_at: datetime) -> str:
    """The hash of one custody entry, chained on the previous one."""
    body = canonical({"seq": seq, "study_instance_uid": study_instance_uid, "event": event,
                      "actor": actor_, "details": details,
                      "created_at": created_at.astimezone(UTC).isoformat()})
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


class Ledger:
    """A connection to the migration ledger.

    Examples
    --------
    >>> with Ledger("postgresql://127.0.0.1/pacsmig") as ledger:   # doctest: +SKIP
    ...     ledger.migrate()
    """

    def __init__(self, dsn: str, role: str | None = None) -> None:
        self.dsn = dsn
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = False
        #: The role the engine's work runs as: it may append to custody but never UPDATE/DELETE it
        #: (migration 002). Only schema migrations run as the connecting (owner) user.
        self.role = os.environ.get("PACSMIG_LEDGER_ROLE", "pacsmig_task") if role is None else role
        self._assume_role()

    def _assume_role(self) -> None:
        if not self.role:
            return
        with self.conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s AND pg_has_role(session_user, oid, 'USAGE')",
                        (self.role,))
            if cur.fetchone() is not None:
                cur.execute(f'SET ROLE "{self.role}"')
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.conn.commit()
        else:
            self.conn.rollback()
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg2.extras.RealDictCursor]:
        """A cursor whose work commits on success and rolls back on error."""
        cur = self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        try:
            yield cur
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            cur.close()

    # --- schema ----------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply the versioned SQL migrations not yet applied; returns the versions applied."""
        applied: list[int] = []
        files = sorted(
            (p for p in resources.files("pacsmig.ledger").joinpath("migrations").iterdir()
             if p.name.endswith(".sql")), key=lambda p: p.name)
        with self.transaction() as cur:
            cur.execute("RESET ROLE")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CUSTODY_LOCK_KEY + 1,))
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                        "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            cur.execute("SELECT version FROM schema_version")
            done = {row["version"] for row in cur.fetchall()}
            for path in files:
                version = int(path.name.split("_", 1)[0])
                if version in done:
                    continue
                cur.execute(path.read_text())
                cur.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                            (version, path.name))
                applied.append(version)
        self._assume_role()
        return applied

    # --- custody ---------------------------------------------------------------------------
    def append_custody(self, cur: psycopg2.extensions.cursor, study_instance_uid: str | None,
                       event: str, details: dict[str, Any] | None = None,
                       actor_: str | None = None) -> str:
        """Append one chained custody entry inside the caller's transaction; returns its hash."""
        details = json.loads(canonical(details or {}))
        actor_ = actor_ or actor()
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CUSTODY_LOCK_KEY,))
        cur.execute("SELECT seq, entry_hash FROM custody ORDER BY seq DESC LIMIT 1")
        last = cur.fetchone()
        prev_hash = _get(last, "entry_hash", 1) if last else GENESIS_HASH
        cur.execute("SELECT nextval(pg_get_serial_sequence('custody', 'seq'))")
        seq = int(_get(cur.fetchone(), "nextval", 0))
        created_at = datetime.now(UTC)
        entry_hash = custody_entry_hash(prev_hash, seq, study_instance_uid, event, actor_, details,
                                        created_at)
        cur.execute(
            "INSERT INTO custody (seq, study_instance_uid, event, actor, details, created_at, "
            "prev_hash, entry_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (seq, study_instance_uid, event, actor_, json.dumps(details), created_at, prev_hash,
             entry_hash))
        return entry_hash

    def append_custody_many(self, cur: psycopg2.extensions.cursor,
                            entries: list[tuple[str | None, str, dict[str, Any]]],
                            actor_: str | None = None) -> int:
        """Append many chained entries ``(study_uid, event, details)`` in one round trip."""
        if not entries:
            return 0
        actor_ = actor_ or actor()
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CUSTODY_LOCK_KEY,))
        cur.execute("SELECT entry_hash FROM custody ORDER BY seq DESC LIMIT 1")
        last = cur.fetchone()
        prev_hash = _get(last, "entry_hash", 0) if last else GENESIS_HASH
        cur.execute("SELECT nextval(pg_get_serial_sequence('custody', 'seq')) AS seq "
                    "FROM generate_series(1, %s)", (len(entries),))
        seqs = sorted(int(_get(r, "seq", 0)) for r in cur.fetchall())
        created_at = datetime.now(UTC)
        rows = []
        for seq, (study_uid, event, details) in zip(seqs, entries, strict=True):
            body = json.loads(canonical(details or {}))
            entry_hash = custody_entry_hash(prev_hash, seq, study_uid, event, actor_, body, created_at)
            rows.append((seq, study_uid, event, actor_, json.dumps(body), created_at, prev_hash,
                         entry_hash))
            prev_hash = entry_hash
        psycopg2.extras.execute_values(
            cur, "INSERT INTO custody (seq, study_instance_uid, event, actor, details, created_at, "
            "prev_hash, entry_hash) VALUES %s", rows, page_size=1000)
        return len(rows)

    def custody(self, event: str, study_instance_uid: str | None = None,
                details: dict[str, Any] | None = None) -> str:
        """Append a custody entry in its own transaction."""
        with self.transaction() as cur:
            return self.append_custody(cur, study_instance_uid, event, details)

    # --- studies ---------------------------------------------------------------------------
    def set_state(self, study_instance_uid: str, state: StudyState, *, reason: Reason | None = None,
                  error: str | None = None, details: dict[str, Any] | None = None,
                  expect: Iterable[StudyState] | None = None) -> None:
        """Move a study to ``state`` (optionally only from ``expect``), with a custody entry."""
        with self.transaction() as cur:
            cur.execute("SELECT state, reason FROM studies WHERE study_instance_uid = %s FOR UPDATE",
                        (study_instance_uid,))
            row = cur.fetchone()
            if row is None:
                raise LedgerError(f"unknown study {study_instance_uid}")
            old = row["state"]
            if expect is not None and old not in {StudyState(s).value for s in expect}:
                raise LedgerError(f"study {study_instance_uid}: state {old}, expected one of "
                                  f"{sorted(StudyState(s).value for s in expect)}")
            new_reason = Reason(reason).value if reason else (
                row["reason"] if row["reason"] in FLAG_REASONS else None)
            cur.execute(
                "UPDATE studies SET state = %s, reason = %s, last_error = %s, updated_at = now() "
                "WHERE study_instance_uid = %s",
                (StudyState(state).value, new_reason, error, study_instance_uid))
            body = {"from": old, "to": StudyState(state).value}
            if reason:
                body["reason"] = Reason(reason).value
            if error:
                body["error"] = error
            body.update(details or {})
            self.append_custody(cur, study_instance_uid, f"state:{StudyState(state).value}", body)

    def study(self, study_instance_uid: str) -> dict[str, Any] | None:
        with self.transaction() as cur:
            cur.execute("SELECT * FROM studies WHERE study_instance_uid = %s", (study_instance_uid,))
            row = cur.fetchone()
            return dict(row) if row else None

    def query(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        """Run a read query and return its rows as dicts."""
        with self.transaction() as cur:
            cur.execute(sql, params)
            return [dict(r) for r in cur.fetchall()] if cur.description else []


def _get(row: Any, key: str, index: int) -> Any:
    return row[key] if isinstance(row, dict) else row[index]


def create_database(admin_dsn: str, name: str, drop: bool = False) -> str:
    """Create database ``name`` on the server of ``admin_dsn``; returns its DSN (tests, demo)."""
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        if drop:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    base = admin_dsn.rsplit("/", 1)[0]
    return f"{base}/{name}"
