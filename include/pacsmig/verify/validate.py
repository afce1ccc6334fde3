"""Phase 4 orchestration: plan chunks, read every migrated instance back, reconcile counts, report, decide.

Three steps, each callable on its own (the DAG maps the middle one over chunks):

1. :func:`plan_chunks` - the studies of the scope that need reading back, grouped into chunks;
2. :func:`verify_studies` - read back and check their instances, results written to the ledger's
   ``verification`` table as each chunk finishes (so a re-run resumes; ``recheck`` redoes all);
3. :func:`finalize` - re-query the source, account for every source instance (verified,
   mismatched, missing, quarantined or held), write the reports, move studies to ``verified`` or
   ``review``, run the hash suite and anchor the custody chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pacsmig import config
from pacsmig.config import ConnectionSpec, DicomNode
from pacsmig.errors import LedgerError
from pacsmig.ledger import Ledger, Reason, StudyState
from pacsmig.verify import readback
from pacsmig.verify.readback import (
    HEADER_MISMATCH,
    HELD,
    MISSING_AT_TARGET,
    PIXEL_MISMATCH,
    QUARANTINED,
    VERIFIED,
    InstanceResult,
    InstanceTask,
)
from pacsmig.verify.reconcile import Scope, SourceStudy, list_study_instances, source_studies
from pacsmig.verify.report import summarise, write_hash_report, write_json, write_study_report

logger = logging.getLogger(__name__)

#: Study states whose instances are at the target and can be read back.
MIGRATED_STATES = (StudyState.LOADED.value, StudyState.VERIFIED.value, StudyState.REVIEW.value)
_TARGET_STATUS = {VERIFIED: "verified", PIXEL_MISMATCH: "mismatch", HEADER_MISMATCH: "mismatch",
                  MISSING_AT_TARGET: "missing"}
#: Review reasons in order of precedence.
_REVIEW_REASONS = ((PIXEL_MISMATCH, Reason.PIXEL_MISMATCH), (MISSING_AT_TARGET, Reason.MISSING_AT_TARGET),
                   (HEADER_MISMATCH, Reason.HEADER_MISMATCH))


#: The summary counts the DAG returns (XCom) and the benchmark records.
SUMMARY_KEYS = ("instances_source", "instances_verified", "instances_mismatched", "instances_missing",
                "studies", "studies_review")


def validation_dir() -> Path:
    """``$PACSMIG_DATA_DIR/validation``."""
    return config.sub_dir("validation")


# --- 1. plan ------------------------------------------------------------------------------------
def plan_chunks(ledger: Ledger, scope: Scope, recheck: bool = False,
                chunk_instances: int = 2000) -> list[dict[str, Any]]:
    """Studies of ``scope`` with instances still to read back, grouped into chunks of about
    ``chunk_instances`` instances (a study is never split). Each chunk: ``label``, ``studies``,
    ``instances`` - small enough for XCom."""
    where, params = scope.sql("s")
    rows = ledger.query(
        f"""SELECT s.study_instance_uid, s.accession_number, count(i.sop_instance_uid) AS n
            FROM studies s JOIN instances i USING (study_instance_uid)
            LEFT JOIN verification v USING (study_instance_uid, sop_instance_uid)
            WHERE {where} AND s.state = ANY(%s) AND i.target_status <> 'quarantined'
              AND (%s OR v.status IS DISTINCT FROM 'verified')
            GROUP BY s.study_instance_uid, s.accession_number, s.study_date
            ORDER BY s.study_date DESC NULLS LAST, s.study_instance_uid""",
        [*params, list(MIGRATED_STATES), recheck])
    chunks: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for row in rows:
        if current is None or current["instances"] + row["n"] > chunk_instances and current["studies"]:
            first = row["accession_number"] or row["study_instance_uid"]
            current = {"studies": [], "instances": 0, "first": first}
            chunks.append(current)
        current["studies"].append(row["study_instance_uid"])
        current["instances"] += int(row["n"])
    for i, chunk in enumerate(chunks):
        first = chunk.pop("first")
        chunk["label"] = f"{i + 1}/{len(chunks)} {first} (+{len(chunk['studies']) - 1} studies)"
    return chunks


# --- 2. read back -------------------------------------------------------------------------------
def recorded_changes(ledger: Ledger, study_uids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """SOP UID -> the changes the transform recorded in custody (in the order applied)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rows = ledger.query("SELECT details FROM custody WHERE event = 'transformed' AND "
                        "study_instance_uid = ANY(%s) ORDER BY seq", (study_uids,))
    for row in rows:
        details = row["details"] or {}
        items = details.get("instances") if isinstance(details.get("instances"), list) else [details]
        for item in items:
            sop = item.get("sop_instance_uid")
            if sop and isinstance(item.get("changes"), list):
                out[str(sop)].extend(c for c in item["changes"] if isinstance(c, dict))
    return out


def _save_results(ledger: Ledger, results: list[InstanceResult]) -> None:
    if not results:
        return
    import psycopg2.extras

    cols = ["study_instance_uid", "sop_instance_uid", "status", "source_pixel_hash", "target_pixel_hash",
            "source_raw_hash", "target_raw_hash", "source_frames", "target_frames",
            "source_transfer_syntax", "target_transfer_syntax", "detail", "method"]
    rows = [tuple(r.as_row()[c] for c in cols) for r in results]
    with ledger.transaction() as cur:
        psycopg2.extras.execute_values(
            cur, f"INSERT INTO verification ({', '.join(cols)}) VALUES %s "
            "ON CONFLICT (study_instance_uid, sop_instance_uid) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[2:]) + ", checked_at = now()", rows)
        instance_rows = [(_TARGET_STATUS[r.status], r.target_pixel_hash, r.status == VERIFIED,
                          r.study_instance_uid, r.sop_instance_uid)
                         for r in results if r.status in _TARGET_STATUS]
        psycopg2.extras.execute_batch(
            cur, "UPDATE instances SET target_status = %s, target_pixel_hash = %s, "
            "verified_at = CASE WHEN %s THEN now() ELSE NULL END "
            "WHERE study_instance_uid = %s AND sop_instance_uid = %s", instance_rows)


def verify_studies(ledger: Ledger, target: ConnectionSpec, study_uids: list[str], recheck: bool = False,
                   workers: int | None = None, chunk_size: int = 25) -> dict[str, int]:
    """Read back every not-yet-verified instance of ``study_uids`` from ``target``; returns counts.

    The target is asked which instances it holds (one listing per study); those it does not list
    are ``missing_at_target`` without a fetch. A destination that streams whole series is not
    listed up front: the series answers show what it holds, and only studies with an instance
    missing from them are listed (:func:`readback.verify_chunk`). Results are saved chunk by chunk.
    """
    if not study_uids:
        return {}
    rows = ledger.query(
        """SELECT i.* FROM instances i JOIN studies s USING (study_instance_uid)
           LEFT JOIN verification v USING (study_instance_uid, sop_instance_uid)
           WHERE i.study_instance_uid = ANY(%s) AND s.state = ANY(%s) AND i.target_status <> 'quarantined'
             AND (%s OR v.status IS DISTINCT FROM 'verified')
           ORDER BY i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid""",
        (study_uids, list(MIGRATED_STATES), recheck))
    changes = recorded_changes(ledger, study_uids)
    dest = readback.open_target(target)
    listed_later = readback.streams_series(dest)
    present: dict[str, dict[str, str]] = {}
    tasks: list[InstanceTask] = []
    missing: list[InstanceResult] = []
    for row in rows:
        study = row["study_instance_uid"]
        if study not in present and not listed_later:
            present[study] = dict(dest.instances(study))
        task = InstanceTask(
            study, present.get(study, {}).get(row["sop_instance_uid"]) or row["series_instance_uid"] or "",
            row["sop_instance_uid"], row["source_pixel_hash"], row["source_raw_hash"],
            row["number_of_frames"], row["transfer_syntax_uid"], row["staged_path"],
            tuple(changes.get(row["sop_instance_uid"], ())))
        if listed_later or row["sop_instance_uid"] in present[study]:
            tasks.append(task)
        else:
            missing.append(readback.missing(task))
    _save_results(ledger, missing)
    results = readback.verify_tasks(target, tasks, workers=workers, chunk_size=chunk_size,
                                    on_chunk=lambda done: _save_results(ledger, done))
    counts = Counter(r.status for r in [*missing, *results])
    logger.info("verified %d studies: %s", len(study_uids), dict(counts))
    return dict(counts)


# --- 3. reconcile, report, decide -------------------------------------------------------------
def _source_view(ledger: Ledger, scope: Scope, ledger_studies: list[str],
                 source: DicomNode | None) -> tuple[dict[str, SourceStudy], list[str]]:
    if source is None:
        return {}, ["source not re-queried (no source connection): the ledger's instance list was used"]
    at_source, warnings = source_studies(source, scope)
    studies = sorted(set(ledger_studies) | at_source)
    return list_study_instances(source, studies), warnings


def _digest(rows: list[dict[str, Any]]) -> str:
    lines = sorted(f"{r['sop_instance_uid']}:{r['target_pixel_hash']}" for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def finalize(ledger: Ledger, scope: Scope, source: DicomNode | None = None, out_dir: Path | None = None,
             target_name: str = "", run_suite: bool = True, anchor: bool = True) -> dict[str, Any]:
    """Account for every source instance of ``scope``, write the outputs, decide every study.

    Returns the summary (also written to ``summary.json``).
    """
    out_dir = out_dir or validation_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    where, params = scope.sql("s")
    studies = {r["study_instance_uid"]: r for r in ledger.query(
        f"SELECT * FROM studies s WHERE {where} ORDER BY study_instance_uid", params)}
    view, warnings = _source_view(ledger, scope, list(studies), source)
    uids = sorted(set(studies) | set(view))
    ledger_rows = ledger.query(
        """SELECT i.study_instance_uid, i.sop_instance_uid, i.source_pixel_hash, i.source_raw_hash,
                  i.number_of_frames, i.transfer_syntax_uid, i.target_status,
                  v.status, v.target_pixel_hash, v.target_raw_hash, v.target_frames,
                  v.target_transfer_syntax, v.detail, v.method
           FROM instances i LEFT JOIN verification v USING (study_instance_uid, sop_instance_uid)
           WHERE i.study_instance_uid = ANY(%s)""", (uids,))
    quarantine = {(q["study_instance_uid"], q["sop_instance_uid"]): q for q in ledger.query(
        "SELECT DISTINCT ON (study_instance_uid, sop_instance_uid) study_instance_uid, sop_instance_uid, "
        "reason FROM quarantine WHERE study_instance_uid = ANY(%s) ORDER BY study_instance_uid, "
        "sop_instance_uid, created_at DESC", (uids,))}
    by_study: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in ledger_rows:
        by_study[row["study_instance_uid"]][row["sop_instance_uid"]] = row

    report_rows: list[dict[str, Any]] = []
    study_rows: list[dict[str, Any]] = []
    accounted: list[InstanceResult] = []  # statuses decided here, saved for the next run's report
    for uid in uids:
        study = studies.get(uid)
        state = study["state"] if study else None
        src = view.get(uid)
        sops = set(by_study[uid]) | (set(src.instances) if src else set())
        counts: Counter[str] = Counter()
        first_row = len(report_rows)
        for sop in sorted(sops):
            row = by_study[uid].get(sop)
            notes = []
            if src is not None and src.complete and sop not in src.instances:
                notes.append("no longer at the source")
            q = quarantine.get((uid, sop)) or quarantine.get((uid, None))
            status, detail = _instance_status(row, state, study, q)
            if row is None:
                notes.insert(0, "at the source but not in the ledger")
            if status in (QUARANTINED, HELD, MISSING_AT_TARGET) and (row is None or row["status"] != status):
                accounted.append(InstanceResult(uid, sop, status, row["source_pixel_hash"] if row else None,
                                                detail="; ".join([detail, *notes]).strip("; ")))
            counts[status] += 1
            if row is not None and row["status"] is None and status == MISSING_AT_TARGET:
                counts["unchecked"] += 1
            report_rows.append({
                "study_instance_uid": uid, "sop_instance_uid": sop,
                "source_pixel_hash": row["source_pixel_hash"] if row else None,
                "target_pixel_hash": (row["target_pixel_hash"]
                                      if row and status != MISSING_AT_TARGET else None),
                "match": status == VERIFIED,
                "source_raw_hash": row["source_raw_hash"] if row else None,
                "target_raw_hash": row["target_raw_hash"] if row else None,
                "source_frames": row["number_of_frames"] if row else None,
                "target_frames": row["target_frames"] if row else None,
                "source_transfer_syntax": row["transfer_syntax_uid"] if row else None,
                "target_transfer_syntax": row["target_transfer_syntax"] if row else None,
                "method": (row["method"] if row and status != MISSING_AT_TARGET else None),
                "status": status, "detail": "; ".join(x for x in [detail, *notes] if x),
            })
        study_rows.append(_decide(ledger, uid, study, src, counts, report_rows[first_row:], target_name,
                                  scope))
    # Only statuses decided here are saved (the read-back ones are already in the table).
    _save_accounted(ledger, [r for r in accounted if r.sop_instance_uid])

    hash_path = write_hash_report(report_rows, out_dir / "hash_report.parquet")
    csv_path, html_path = write_study_report(study_rows, out_dir)
    def with_result(result: str) -> list[str]:
        return [s["study_instance_uid"] for s in study_rows if s["result"] == result]

    extra: dict[str, Any] = {
        "studies_verified": len(with_result("verified")),
        "studies_review": len(with_result("review")),
        "studies_review_list": with_result("review"),
        "studies_not_in_ledger": with_result("not_in_ledger"),
        "source_incomplete_studies": with_result("source_incomplete"),
        "headers_not_compared": sum(1 for r in report_rows if readback.NO_STAGED_SOURCE in r["detail"]),
        "warnings": warnings,
        "outputs": {"hash_report": str(hash_path), "studies_csv": str(csv_path),
                    "studies_html": str(html_path)},
    }
    summary = summarise(report_rows, len(study_rows), scope.as_dict(), extra)
    if run_suite:
        from pacsmig.quality.hash_suite import run_hash_suite

        # The count to expect comes from outside the report: what the source said it holds now
        # (or, without a source, what the plan expected), so a row lost on the way is caught.
        if view:
            expected = sum(len(v.instances) for v in view.values())
        else:
            expected = sum(int(s["expected_instances"] or 0) for s in studies.values()) or len(report_rows)
        summary["instances_expected"] = expected
        summary["expectations"] = run_hash_suite(hash_path, expected, out_dir)
    if anchor:
        from pacsmig.custody.chain import write_anchor

        a = write_anchor(ledger, out_dir / "custody_anchors.jsonl", reason="validate",
                         details={"range": scope.label, "instances": summary["instances_source"]})
        summary["custody_anchor"] = {"seq": a.anchor_seq, "hash": a.anchor_hash}
    write_json(summary, out_dir / "summary.json")
    logger.info("validation %s: %d instances, %d verified, %d mismatched, %d missing, %d studies for review",
                scope.label, summary["instances_source"], summary["instances_verified"],
                summary["instances_mismatched"], summary["instances_missing"], summary["studies_review"])
    return summary


def _instance_status(row: dict[str, Any] | None, state: str | None, study: dict[str, Any] | None,
                     q: dict[str, Any] | None) -> tuple[str, str]:
    """The report status of one source instance and why."""
    found = row["status"] if row else None
    quarantined = row is not None and row["target_status"] == "quarantined"
    if found in (VERIFIED, PIXEL_MISMATCH, HEADER_MISMATCH, MISSING_AT_TARGET) and not quarantined \
            and state in MIGRATED_STATES:
        default = "not held by the target" if found == MISSING_AT_TARGET else ""
        return found, (row or {}).get("detail") or default
    if quarantined or (q is not None and state != StudyState.HELD.value):
        why = (q or {}).get("reason") or (study or {}).get("reason") or "see ledger"
        return QUARANTINED, f"quarantined: {why}"
    if state == StudyState.QUARANTINED.value:
        return QUARANTINED, f"study quarantined: {(study or {}).get('reason') or 'no reason recorded'}"
    if state == StudyState.HELD.value:
        return HELD, f"study held: {(study or {}).get('reason') or 'no reason recorded'}"
    if state is None:
        return MISSING_AT_TARGET, ""
    if state in MIGRATED_STATES:
        return MISSING_AT_TARGET, "not read back yet (run validate for this range)"
    return MISSING_AT_TARGET, f"not migrated yet (study state {state})"


def _save_accounted(ledger: Ledger, results: list[InstanceResult]) -> None:
    if not results:
        return
    import psycopg2.extras

    with ledger.transaction() as cur:
        psycopg2.extras.execute_values(
            cur, "INSERT INTO verification (study_instance_uid, sop_instance_uid, status, source_pixel_hash, "
            "detail) VALUES %s ON CONFLICT (study_instance_uid, sop_instance_uid) DO UPDATE SET "
            "status = EXCLUDED.status, detail = EXCLUDED.detail, target_pixel_hash = NULL, method = NULL, "
            "checked_at = now()",
            [(r.study_instance_uid, r.sop_instance_uid, r.status, r.source_pixel_hash, r.detail)
             for r in results])


def _decide(ledger: Ledger, uid: str, study: dict[str, Any] | None, src: SourceStudy | None,
            counts: Counter[str], rows: list[dict[str, Any]], target_name: str,
            scope: Scope) -> dict[str, Any]:
    """Move one study to ``verified`` or ``review`` (only from a migrated state); its report line."""
    known = study or {}
    line = {"study_instance_uid": uid, "accession_number": known.get("accession_number") or "",
            "study_date": known.get("study_date") or "", "modalities": known.get("modalities") or "",
            "state": known.get("state") or "", "instances_source": sum(counts[s] for s in readback.STATUSES),
            "verified": counts[VERIFIED], "pixel_mismatch": counts[PIXEL_MISMATCH],
            "header_mismatch": counts[HEADER_MISMATCH], "missing_at_target": counts[MISSING_AT_TARGET],
            "quarantined": counts[QUARANTINED], "held": counts[HELD], "detail": ""}
    if study is None:
        line.update(result="not_in_ledger", detail="study at the source is unknown to the ledger")
        return line
    state = study["state"]
    if state not in MIGRATED_STATES:
        line.update(result=state, detail="not migrated: state unchanged")
        return line
    if counts["unchecked"]:
        # Not read back (a failed or skipped chunk): no verdict on missing what was never asked for.
        line.update(result="not_checked", detail=f"{counts['unchecked']} instances not read back yet")
        return line
    if src is not None and not src.complete:
        line.update(result="source_incomplete", detail=f"source re-query incomplete: {src.problem}")
        return line
    reason = next((r for status, r in _REVIEW_REASONS if counts[status]), None)
    try:
        if reason is not None:
            line["result"] = "review"
            line["detail"] = f"review: {reason.value}"
            if not (state == StudyState.REVIEW.value and study.get("reason") == reason.value):
                ledger.set_state(uid, StudyState.REVIEW, reason=reason,
                                 error=(f"{counts[PIXEL_MISMATCH]} pixel mismatch, "
                                        f"{counts[MISSING_AT_TARGET]} missing, "
                                        f"{counts[HEADER_MISMATCH]} header mismatch"),
                                 details={k: counts[k] for k in (PIXEL_MISMATCH, MISSING_AT_TARGET,
                                                                 HEADER_MISMATCH)},
                                 expect=[StudyState(s) for s in MIGRATED_STATES])
                line["state"] = StudyState.REVIEW.value
        else:
            line["result"] = "verified"
            if state != StudyState.VERIFIED.value:
                verified_rows = [r for r in rows if r["status"] == VERIFIED]
                ledger.set_state(uid, StudyState.VERIFIED, expect=[StudyState.LOADED, StudyState.REVIEW])
                ledger.custody("verified", uid, {
                    "instances_verified": counts[VERIFIED], "instances_quarantined": counts[QUARANTINED],
                    "pixel_hash_digest": _digest(verified_rows), "target": target_name,
                    "range": scope.label})
                line["state"] = StudyState.VERIFIED.value
    except LedgerError as exc:
        # The pipeline moved the study meanwhile: report it, decide on the next run.
        logger.warning("study %s: state not changed (%s)", uid, exc)
        line["detail"] = f"state not changed: {exc}"
    return line


# --- all in one (CLI) ---------------------------------------------------------------------------
def run_validation(dsn: str, target: ConnectionSpec, source: DicomNode | None, scope: Scope,
                   recheck: bool = False, workers: int | None = None,
                   sample_fraction: float | None = 0.10, seed: int = 0) -> dict[str, Any]:
    """Plan, read back, finalize and (if ``sample_fraction``) draw the radiologist's sample."""
    with Ledger(dsn) as ledger:
        for chunk in plan_chunks(ledger, scope, recheck):
            verify_studies(ledger, target, chunk["studies"], recheck=recheck, workers=workers)
        summary = finalize(ledger, scope, source, target_name=target.conn_id)
        if sample_fraction:
            from pacsmig.verify.sample import build_review_sample

            summary["review_sample"] = build_review_sample(ledger, scope, target, fraction=sample_fraction,
                                                           seed=seed)
            write_json(summary, validation_dir() / "summary.json")
    return json.loads(json.dumps(summary, default=str))
