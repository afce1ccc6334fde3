"""Phase 3, one study at a time: extract (C-MOVE/C-GET) -> transform (MPI, rules) -> load -> confirm.

Each step is a transaction on the ledger: it checks the study's state, does its work idempotently,
records every instance (hashes, paths, acknowledgements) and moves the state on with a custody
entry. A step re-run after a crash resumes from what the ledger and staging already hold; nothing
is duplicated and nothing discovered is dropped: an instance ends loaded or in ``quarantine``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg2.extras

from pacsmig import config
from pacsmig.config import ConnectionSpec, DicomNode
from pacsmig.errors import DicomError, LedgerError, LoadError, TransformError, VerifyError
from pacsmig.ledger import Ledger, Reason, StudyState
from pacsmig.verify.hashing import InstanceHashes, hash_instance

log = logging.getLogger(__name__)

#: States a migrate run picks up (resuming mid-way ones); loaded/verified are skipped.
ACTIVE_STATES = ("discovered", "queued", "extracting", "extracted", "transformed")
_AFTER_EXTRACT = {"extracted", "transformed", "loaded", "verified"}
_AFTER_TRANSFORM = {"transformed", "loaded", "verified"}


@dataclass
class MigrationContext:
    """Everything a step needs, resolved once per task from connections and settings."""

    ledger_dsn: str
    source: DicomNode
    targets: list[ConnectionSpec] = field(default_factory=list)
    rules_path: Path | None = None
    data_dir: Path = field(default_factory=config.data_dir)
    mpi_issuer: str = field(default_factory=config.mpi_issuer)
    hash_workers: int = 1

    @property
    def staging(self) -> Path:
        return self.data_dir / "staging"

    @property
    def transformed(self) -> Path:
        return self.data_dir / "transformed"

    @property
    def quarantine(self) -> Path:
        return self.data_dir / "quarantine"


# --- selection and claiming ----------------------------------------------------------------
def select_studies(ledger: Ledger, *, date_from: date | None = None, date_to: date | None = None,
                   patient_id: str | None = None, undated: bool = False, all_queued: bool = False,
                   retry_quarantined: bool = False, include_held: bool = True,
                   claimable_by: str | None = None) -> list[dict[str, Any]]:
    """The partition's studies still to migrate, highest priority and newest first.

    ``date_to`` is exclusive (a data interval end). ``patient_id`` matches the local ID or the MPI ID.
    ``claimable_by``: only studies no run holds a claim on, or that this claim token holds (what
    an idle task may take over, and what its retry must resume).
    """
    states = list(ACTIVE_STATES) + (["held"] if include_held else []) + \
        (["quarantined"] if retry_quarantined else [])
    where, params = ["state = ANY(%s)"], [states]
    if claimable_by is not None:
        where.append("(claimed_by IS NULL OR claimed_by = %s)")
        params.append(claimable_by)
    if patient_id:
        where.append("(patient_id = %s OR mpi_patient_id = %s OR (issuer_of_patient_id, patient_id) IN "
                     "(SELECT NULLIF(issuer_of_patient_id, ''), patient_id FROM mpi_crosswalk "
                     " WHERE mpi_patient_id = %s) OR patient_id IN (SELECT patient_id FROM mpi_crosswalk "
                     " WHERE mpi_patient_id = %s AND issuer_of_patient_id = ''))")
        params += [patient_id] * 4
    elif undated:
        where.append("study_date IS NULL")
    elif not all_queued:
        if date_from:
            where.append("study_date >= %s")
            params.append(date_from)
        if date_to:
            where.append("study_date < %s")
            params.append(date_to)
    rows = ledger.query(
        "SELECT study_instance_uid, accession_number, study_date, state, priority, expected_instances "
        f"FROM studies WHERE {' AND '.join(where)} ORDER BY priority DESC, study_date DESC NULLS LAST, "
        "study_instance_uid", tuple(params))
    return [{"study_instance_uid": r["study_instance_uid"],
             "label": r["accession_number"] or r["study_instance_uid"],
             "state": r["state"], "priority": r["priority"], "n_instances": r["expected_instances"]}
            for r in rows]


def claim(ledger: Ledger, study_instance_uid: str, token: str, *, lease_minutes: int = 60) -> bool:
    """Take the study for ``token`` (FOR UPDATE SKIP LOCKED; an expired lease is taken over)."""
    with ledger.transaction() as cur:
        cur.execute(
            "SELECT study_instance_uid FROM studies WHERE study_instance_uid = %s AND "
            "(claimed_by IS NULL OR claimed_by = %s OR claimed_at < now() - make_interval(mins => %s) "
            # A run that ended the study (quarantined on its last try, held ...) is done with it.
            "OR state IN ('quarantined', 'held', 'loaded', 'verified', 'review')) "
            "FOR UPDATE SKIP LOCKED", (study_instance_uid, token, lease_minutes))
        if cur.fetchone() is None:
            return False
        cur.execute("UPDATE studies SET claimed_by = %s, claimed_at = now() WHERE study_instance_uid = %s",
                    (token, study_instance_uid))
        return True


def release(ledger: Ledger, study_instance_uid: str, token: str) -> None:
    with ledger.transaction() as cur:
        cur.execute("UPDATE studies SET claimed_by = NULL, claimed_at = NULL "
                    "WHERE study_instance_uid = %s AND claimed_by = %s", (study_instance_uid, token))


# --- quarantine ------------------------------------------------------------------------------
def quarantine(cur: Any, ledger: Ledger, study_instance_uid: str, sop_instance_uid: str | None, *,
               reason: Reason, detail: str, path: Path | str | None = None,
               file_hash: str | None = None) -> None:
    """Record an instance in quarantine (idempotent) with a custody entry; mark its ledger row."""
    cur.execute(
        "INSERT INTO quarantine (study_instance_uid, sop_instance_uid, reason, detail, path, file_hash) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
        (study_instance_uid, sop_instance_uid, reason.value, detail, str(path) if path else None, file_hash))
    if cur.fetchone() is None:
        return
    if sop_instance_uid:
        cur.execute("UPDATE instances SET target_status = 'quarantined' WHERE study_instance_uid = %s "
                    "AND sop_instance_uid = %s", (study_instance_uid, sop_instance_uid))
    ledger.append_custody(cur, study_instance_uid, "quarantined",
                          {"sop_instance_uid": sop_instance_uid, "reason": reason.value, "detail": detail,
                           "path": str(path) if path else None, "file_hash": file_hash})


# --- extract ---------------------------------------------------------------------------------
def _hash_many(paths: list[Path], workers: int) -> list[InstanceHashes | VerifyError]:
    if workers <= 1 or len(paths) < 32:
        return [_hash_or_error(p) for p in paths]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_hash_or_error, paths, chunksize=16))


def _recorded_hashes(rec: Any) -> InstanceHashes | None:
    """The hashes the receiver recorded, if they are for this very file (else None: hash it)."""
    h = getattr(rec, "hashes", None)
    if not h or getattr(rec, "rebuilt", False) or h.get("file_hash") != rec.file_hash:
        return None
    try:
        return InstanceHashes(**h)
    except TypeError:  # a sidecar from another version of the engine
        return None


def _hash_or_error(path: Path) -> InstanceHashes | VerifyError:
    try:
        return hash_instance(path)
    except VerifyError as exc:
        return exc


def extract_study(ctx: MigrationContext, study_instance_uid: str, *, final_attempt: bool = True
                  ) -> dict[str, Any]:
    """C-MOVE (or C-GET) the study into staging, hash every instance, record it; -> ``extracted``."""
    from pacsmig.dicom.retrieve import list_study_instances, retrieve

    with Ledger(ctx.ledger_dsn) as ledger:
        study = ledger.study(study_instance_uid)
        if study is None:
            raise LedgerError(f"study {study_instance_uid} is not in the ledger (run pacs_plan first)")
        if study["state"] in _AFTER_EXTRACT or study["state"] == "held":
            return {"study_instance_uid": study_instance_uid, "skipped": study["state"]}
        ledger.set_state(study_instance_uid, StudyState.EXTRACTING,
                         details={"source_ae": ctx.source.ae_title, "source_host": ctx.source.host,
                                  "move_destination": ctx.source.move_destination,
                                  "mode": ctx.source.retrieve_mode})
        try:
            expected = list_study_instances(ctx.source, study_instance_uid)
            result = retrieve(ctx.source, ctx.staging, study_instance_uid=study_instance_uid,
                              expected=expected, quarantine_root=ctx.quarantine)
        except DicomError as exc:
            _fail(ledger, study_instance_uid, Reason.SOURCE_ERROR, str(exc), final_attempt)
            raise
        expected_sops = {sop for sops in expected.values() for sop in sops}
        received = dict(result.received)
        # Native instances were hashed by the receiver from the network bytes, and retrieve()
        # re-read each staged file after its fsync with that same file hash: the same bytes, so
        # the same hashes as hash_instance(path). Only compressed ones are decoded here.
        recorded = [_recorded_hashes(r) for r in received.values()]
        todo = [r.path for r, h in zip(received.values(), recorded, strict=True) if h is None]
        computed = iter(_hash_many(todo, ctx.hash_workers))
        hashes = [h or next(computed) for h in recorded]
        rows, bad = [], []
        for rec, h in zip(received.values(), hashes, strict=True):
            if isinstance(h, VerifyError):
                bad.append((rec, str(h)))
                continue
            rows.append((study_instance_uid, h.sop_instance_uid or rec.sop_instance_uid,
                         h.series_instance_uid or rec.series_instance_uid, h.sop_class_uid,
                         h.transfer_syntax_uid, h.size_bytes, h.number_of_frames, h.pixel_hash, h.raw_hash,
                         h.file_hash, str(rec.path)))
        with ledger.transaction() as cur:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO instances (study_instance_uid, sop_instance_uid, series_instance_uid, "
                "sop_class_uid, transfer_syntax_uid, size_bytes, number_of_frames, source_pixel_hash, "
                "source_raw_hash, source_file_hash, staged_path) VALUES %s "
                "ON CONFLICT (study_instance_uid, sop_instance_uid) DO UPDATE SET "
                "staged_path = EXCLUDED.staged_path, source_pixel_hash = EXCLUDED.source_pixel_hash, "
                "source_raw_hash = EXCLUDED.source_raw_hash, source_file_hash = EXCLUDED.source_file_hash, "
                "transfer_syntax_uid = EXCLUDED.transfer_syntax_uid, size_bytes = EXCLUDED.size_bytes, "
                "number_of_frames = EXCLUDED.number_of_frames "
                "WHERE instances.target_status IN ('pending', 'quarantined') "
                "AND instances.source_file_hash IS DISTINCT FROM EXCLUDED.source_file_hash",
                rows, page_size=500)
            for rec, why in bad:
                quarantine(cur, ledger, study_instance_uid, rec.sop_instance_uid,
                           reason=Reason.MALFORMED_INSTANCE, detail=f"pixel data not decodable: {why}",
                           path=rec.path, file_hash=rec.file_hash)
            for c in result.conflicts:
                quarantine(cur, ledger, study_instance_uid, c.sop_instance_uid, reason=Reason.UID_CONFLICT,
                           detail=getattr(c, "detail", "two different objects share this SOP Instance UID"),
                           path=getattr(c, "paths", [None])[-1] if getattr(c, "paths", None) else None,
                           file_hash=",".join(getattr(c, "file_hashes", []) or []) or None)
            for m in result.malformed:
                quarantine(cur, ledger, study_instance_uid, getattr(m, "sop_instance_uid", None),
                           reason=Reason.MALFORMED_INSTANCE, detail=getattr(m, "detail", "unparseable"),
                           path=getattr(m, "path", None), file_hash=getattr(m, "file_hash", None))
        # Conflicting and malformed instances are in quarantine already: not missing.
        accounted = {c.sop_instance_uid for c in result.conflicts} | {
            m.sop_instance_uid for m in result.malformed if getattr(m, "sop_instance_uid", None)}
        missing = sorted(expected_sops - set(received) - accounted)
        summary = {"expected": len(expected_sops), "received": len(received),
                   "inventory_expected": study["expected_instances"], "missing": len(missing),
                   "conflicts": len(result.conflicts), "malformed": len(result.malformed) + len(bad),
                   "sub_operations": {"completed": result.completed, "failed": result.failed,
                                      "warning": result.warning, "status": result.status},
                   "attempts": len(result.attempts)}
        if missing:
            detail = f"{len(missing)} of {len(expected_sops)} instances never arrived after re-pulls"
            if final_attempt:
                with ledger.transaction() as cur:
                    for sop in missing:
                        quarantine(cur, ledger, study_instance_uid, sop, reason=Reason.MISSING_INSTANCES,
                                   detail="listed by the source, never received")
                ledger.set_state(study_instance_uid, StudyState.QUARANTINED, reason=Reason.MISSING_INSTANCES,
                                 error=detail, details={**summary, "missing_sop_uids": missing[:100]})
            else:
                ledger.set_state(study_instance_uid, StudyState.QUEUED, reason=Reason.MISSING_INSTANCES,
                                 error=detail, details=summary)
            raise DicomError(f"study {study_instance_uid}: {detail}")
        flagged = Reason.MALFORMED_INSTANCE if (result.malformed or bad) else (
            Reason.UID_CONFLICT if result.conflicts else None)
        ledger.set_state(study_instance_uid, StudyState.EXTRACTED, reason=flagged, details=summary)
        with ledger.transaction() as cur:
            cur.execute("UPDATE studies SET attempts = attempts + 1 WHERE study_instance_uid = %s",
                        (study_instance_uid,))
        log.info("study %s extracted: %d instances (%d quarantined)", study_instance_uid, len(rows),
                 summary["conflicts"] + summary["malformed"])
        return {"study_instance_uid": study_instance_uid, **summary}


def _fail(ledger: Ledger, study_instance_uid: str, reason: Reason, error: str, final: bool) -> None:
    state = StudyState.QUARANTINED if final else StudyState.QUEUED
    ledger.set_state(study_instance_uid, state, reason=reason, error=error[:2000])


# --- transform -------------------------------------------------------------------------------
def _mpi_lookup(cur: Any, issuer: str | None, patient_id: str) -> str | None:
    cur.execute("SELECT mpi_patient_id FROM mpi_crosswalk WHERE issuer_of_patient_id = %s AND patient_id = %s",
                (issuer or "", patient_id))
    row = cur.fetchone()
    return row["mpi_patient_id"] if row else None


#: Estimated memory of the parsed headers transform_study keeps between its two passes (about
#: 1 000 CT headers of 5 KB; the estimate is on the high side). Headers beyond it are parsed again.
_HEADER_CACHE_BYTES = 128 << 20


def _header_cost(header: Any) -> int:
    """Rough memory of a parsed header: pydicom objects take ~20x the encoded bytes, plus a base."""
    return 16384 + 20 * header.tail_offset


def transform_study(ctx: MigrationContext, study_instance_uid: str) -> dict[str, Any]:
    """MPI reconciliation and coercion rules on every staged instance; -> ``transformed`` or ``held``.

    Each staged file is parsed once: the MPI pass reads headers only (never pixel data) and keeps
    them, up to :data:`_HEADER_CACHE_BYTES` per study, for the transform pass, which re-reads a
    header only if it was not kept or its file changed since (see ``StagedHeader.is_current``).
    """
    import pydicom

    from pacsmig.transform.engine import StagedHeader, read_header, transform_instance
    from pacsmig.transform.rules import RuleSet, default_rules_path

    with Ledger(ctx.ledger_dsn) as ledger:
        study = ledger.study(study_instance_uid)
        if study is None:
            raise LedgerError(f"unknown study {study_instance_uid}")
        if study["state"] in _AFTER_TRANSFORM:
            return {"study_instance_uid": study_instance_uid, "skipped": study["state"]}
        if study["state"] not in ("extracted", "held"):
            raise LedgerError(f"study {study_instance_uid} is {study['state']}, not extracted")
        instances = ledger.query(
            "SELECT sop_instance_uid, staged_path, received_at FROM instances WHERE study_instance_uid = %s "
            "AND target_status <> 'quarantined' ORDER BY sop_instance_uid", (study_instance_uid,))
        if not instances:
            ledger.set_state(study_instance_uid, StudyState.QUARANTINED, reason=Reason.MISSING_INSTANCES,
                             error="no instance of the study could be extracted")
            return {"study_instance_uid": study_instance_uid, "quarantined": True}
        rules = RuleSet.from_yaml(ctx.rules_path or default_rules_path())
        mpi_ids: dict[tuple[str | None, str], str | None] = {}
        unmatched: set[tuple[str | None, str]] = set()
        keys: list[tuple[str | None, str]] = []
        headers: dict[int, StagedHeader] = {}
        budget = _HEADER_CACHE_BYTES
        with ledger.transaction() as cur:
            for i, inst in enumerate(instances):
                try:
                    header = read_header(Path(inst["staged_path"]))
                    ds = header.dataset
                except TransformError:
                    # transform_instance will quarantine it; the key is read as leniently as ever
                    header = None
                    ds = pydicom.dcmread(inst["staged_path"], stop_before_pixels=True, force=True)
                key = (str(ds.get("IssuerOfPatientID", "") or "") or None, str(ds.get("PatientID", "")))
                keys.append(key)
                if header is not None and budget > 0:
                    headers[i] = header
                    budget -= _header_cost(header)
                if key not in mpi_ids:
                    mpi_ids[key] = _mpi_lookup(cur, *key)
                if mpi_ids[key] is None:
                    unmatched.add(key)
        if unmatched:
            if study["state"] != "held":
                ledger.set_state(study_instance_uid, StudyState.HELD, reason=Reason.NO_MPI_MATCH,
                                 details={"unmatched_identities": len(unmatched)})
            return {"study_instance_uid": study_instance_uid, "held": Reason.NO_MPI_MATCH.value}
        out_dir = ctx.transformed / study_instance_uid
        out_dir.mkdir(parents=True, exist_ok=True)
        rows, entries, n_changes = [], [], 0
        for i, inst in enumerate(instances):
            dst = out_dir / f"{inst['sop_instance_uid']}.dcm"
            try:
                res = transform_instance(Path(inst["staged_path"]), dst, rules=rules,
                                         mpi_patient_id=mpi_ids[keys[i]], mpi_issuer=ctx.mpi_issuer,
                                         when=inst["received_at"], header=headers.pop(i, None))
            except TransformError as exc:
                with ledger.transaction() as cur:
                    quarantine(cur, ledger, study_instance_uid, inst["sop_instance_uid"],
                               reason=Reason.TRANSFORM_FAILED, detail=str(exc)[:2000],
                               path=inst["staged_path"])
                continue
            rows.append((str(res.path), res.file_hash, study_instance_uid, inst["sop_instance_uid"]))
            changes = [_change_dict(c) for c in res.changes]
            n_changes += len(changes)
            entries.append((study_instance_uid, "transformed",
                            {"sop_instance_uid": inst["sop_instance_uid"], "changes": changes,
                             "file_hash": res.file_hash}))
        with ledger.transaction() as cur:
            psycopg2.extras.execute_batch(
                cur, "UPDATE instances SET transformed_path = %s, transformed_file_hash = %s "
                "WHERE study_instance_uid = %s AND sop_instance_uid = %s", rows, page_size=500)
            mpi = next(iter(set(mpi_ids.values())))
            cur.execute("UPDATE studies SET mpi_patient_id = %s WHERE study_instance_uid = %s",
                        (mpi, study_instance_uid))
            ledger.append_custody_many(cur, entries)
        ledger.set_state(study_instance_uid, StudyState.TRANSFORMED,
                         details={"instances": len(rows), "changes": n_changes,
                                  "rules": str(ctx.rules_path or default_rules_path())})
        return {"study_instance_uid": study_instance_uid, "instances": len(rows), "changes": n_changes}


def _change_dict(change: Any) -> dict[str, Any]:
    if isinstance(change, dict):
        return change
    if hasattr(change, "as_dict"):
        return dict(change.as_dict())
    return {k: _jsonable(getattr(change, k, None))
            for k in ("tag", "keyword", "action", "old", "new", "rule_id", "reason")}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


# --- load ------------------------------------------------------------------------------------
def load_study(ctx: MigrationContext, study_instance_uid: str, *, final_attempt: bool = True
               ) -> dict[str, Any]:
    """Store every transformed instance at the target(s); ``loaded`` only when the target lists all."""
    from pacsmig.load import open_destinations

    with Ledger(ctx.ledger_dsn) as ledger:
        study = ledger.study(study_instance_uid)
        if study is None:
            raise LedgerError(f"unknown study {study_instance_uid}")
        if study["state"] in ("loaded", "verified"):
            return {"study_instance_uid": study_instance_uid, "skipped": study["state"]}
        if study["state"] != "transformed":
            return {"study_instance_uid": study_instance_uid, "skipped": study["state"]}
        instances = ledger.query(
            "SELECT sop_instance_uid, transformed_path, target_status FROM instances "
            "WHERE study_instance_uid = %s AND target_status <> 'quarantined'", (study_instance_uid,))
        todo = [Path(i["transformed_path"]) for i in instances if i["target_status"] != "loaded"]
        dest = open_destinations(ctx.targets)
        try:
            try:
                acks = dest.store(todo) if todo else []
            except LoadError as exc:
                # Not final: the study stays ``transformed`` so the retry resumes at the load.
                if final_attempt:
                    _fail(ledger, study_instance_uid, Reason.TARGET_REJECTED, str(exc), final=True)
                raise
            now = datetime.now(UTC)
            ok_rows, failed = [], []
            with ledger.transaction() as cur:
                for ack in acks:
                    if ack.ok:
                        ok_rows.append((psycopg2.extras.Json({"destination": ack.destination,
                                                              "status": ack.status, "detail": ack.detail}),
                                        now, study_instance_uid, ack.sop_instance_uid))
                    elif ack.status == "conflict":
                        quarantine(cur, ledger, study_instance_uid, ack.sop_instance_uid,
                                   reason=Reason.TARGET_CONTENT_MISMATCH,
                                   detail=f"{ack.destination}: {ack.detail}")
                    else:
                        failed.append(ack)
                psycopg2.extras.execute_batch(
                    cur, "UPDATE instances SET target_status = 'loaded', target_ack = %s, loaded_at = %s "
                    "WHERE study_instance_uid = %s AND sop_instance_uid = %s", ok_rows, page_size=500)
            if failed:
                msg = f"{len(failed)} instances refused by the target: {failed[0].detail}"
                if final_attempt:
                    with ledger.transaction() as cur:
                        for ack in failed:
                            quarantine(cur, ledger, study_instance_uid, ack.sop_instance_uid,
                                       reason=Reason.TARGET_REJECTED, detail=f"{ack.destination}: {ack.detail}")
                raise LoadError(f"study {study_instance_uid}: {msg}")
            expected = {r["sop_instance_uid"] for r in ledger.query(
                "SELECT sop_instance_uid FROM instances WHERE study_instance_uid = %s "
                "AND target_status = 'loaded'", (study_instance_uid,))}
            present = set(dest.instances(study_instance_uid))
        finally:
            dest.close()
        absent = expected - present
        summary = {"stored": len(acks), "confirmed": len(expected & present), "expected": len(expected),
                   "destination": dest.name,
                   "acks": _ack_summary(acks)}
        if absent:
            msg = f"target lists {len(expected & present)} of {len(expected)} stored instances"
            with ledger.transaction() as cur:
                cur.execute("UPDATE instances SET target_status = 'pending' WHERE study_instance_uid = %s "
                            "AND sop_instance_uid = ANY(%s)", (study_instance_uid, sorted(absent)))
            if final_attempt:
                ledger.set_state(study_instance_uid, StudyState.QUARANTINED, reason=Reason.MISSING_AT_TARGET,
                                 error=msg, details=summary)
            raise LoadError(f"study {study_instance_uid}: {msg}")
        ledger.set_state(study_instance_uid, StudyState.LOADED, details=summary)
        with ledger.transaction() as cur:
            ledger.append_custody(cur, study_instance_uid, "loaded", summary)
        return {"study_instance_uid": study_instance_uid, **{k: v for k, v in summary.items() if k != "acks"}}


def _ack_summary(acks: Iterable[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for ack in acks:
        out[ack.status] = out.get(ack.status, 0) + 1
    return out


def migrate_study(ctx: MigrationContext, study_instance_uid: str) -> dict[str, Any]:
    """All three steps in one call (CLI, benchmark, tests): the same functions the DAG tasks call."""
    out = {"extract": extract_study(ctx, study_instance_uid)}
    out["transform"] = transform_study(ctx, study_instance_uid)
    out["load"] = load_study(ctx, study_instance_uid)
    return out


def context_from_env(targets: list[str] | None = None) -> MigrationContext:
    """A context from ``AIRFLOW_CONN_*`` environment connections (CLI and tests, no Airflow)."""
    from pacsmig.transform.rules import default_rules_path

    rules = os.environ.get("PACSMIG_RULES")
    return MigrationContext(
        ledger_dsn=config.ledger_dsn(), source=DicomNode.from_connection(config.connection("legacy_pacs")),
        targets=[config.connection(t) for t in (targets or ["target_archive"])],
        rules_path=Path(rules) if rules else default_rules_path())
