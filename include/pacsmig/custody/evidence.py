"""Per-study evidence bundle: hashes, applied changes, target acks and custody entries, with its own digest.

The digest is sha256 over the canonical JSON (sorted keys, no spaces) of the bundle without its
``digest`` field, so anyone can recompute it with :func:`verify_bundle`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pacsmig.errors import CustodyError
from pacsmig.ledger import Ledger, canonical

BUNDLE_VERSION = 1


def bundle_digest(bundle: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``bundle`` minus ``digest``."""
    body = {k: v for k, v in bundle.items() if k != "digest"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def build_bundle(ledger: Ledger, study_instance_uid: str) -> dict[str, Any]:
    """The evidence of one study from the ledger (JSON-ready, digest included)."""
    study = ledger.study(study_instance_uid)
    if study is None:
        raise CustodyError(f"unknown study {study_instance_uid}")
    instances = ledger.query(
        """SELECT i.sop_instance_uid, i.series_instance_uid, i.sop_class_uid, i.transfer_syntax_uid,
                  i.number_of_frames, i.source_pixel_hash, i.source_raw_hash, i.source_file_hash,
                  i.transformed_file_hash, i.target_status, i.target_ack, i.loaded_at, i.verified_at,
                  v.status AS verification, v.target_pixel_hash, v.target_raw_hash, v.target_frames,
                  v.target_transfer_syntax, v.detail AS verification_detail, v.checked_at
           FROM instances i LEFT JOIN verification v USING (study_instance_uid, sop_instance_uid)
           WHERE i.study_instance_uid = %s ORDER BY i.sop_instance_uid""",
        (study_instance_uid,),
    )
    custody = ledger.query(
        "SELECT seq, event, actor, details, created_at, prev_hash, entry_hash FROM custody "
        "WHERE study_instance_uid = %s ORDER BY seq",
        (study_instance_uid,),
    )
    changes = [{"seq": e["seq"], **(e["details"] or {})} for e in custody if e["event"] == "transformed"]
    acks = [{"seq": e["seq"], **(e["details"] or {})} for e in custody if e["event"] == "loaded"]
    quarantine = ledger.query(
        "SELECT sop_instance_uid, reason, detail, file_hash, created_at FROM quarantine "
        "WHERE study_instance_uid = %s ORDER BY id",
        (study_instance_uid,),
    )
    bundle: dict[str, Any] = {
        "bundle_version": BUNDLE_VERSION,
        "study": {
            k: study.get(k)
            for k in (
                "study_instance_uid",
                "accession_number",
                "study_date",
                "modalities",
                "state",
                "reason",
                "expected_instances",
            )
        },
        "instances": instances,
        "applied_changes": changes,
        "target_acknowledgements": acks,
        "quarantine": quarantine,
        "custody": custody,
    }
    bundle = json.loads(canonical(bundle))
    bundle["digest"] = bundle_digest(bundle)
    return bundle


def write_bundle(ledger: Ledger, study_instance_uid: str, out_dir: Path) -> Path:
    """Write ``<study>.evidence.json`` into ``out_dir``; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(ledger, study_instance_uid)
    path = out_dir / f"{study_instance_uid}.evidence.json"
    path.write_text(json.dumps(bundle, indent=1, sort_keys=True) + "\n")
    return path


def verify_bundle(source: Path | dict[str, Any]) -> bool:
    """True when the bundle's digest matches its content."""
    bundle = json.loads(source.read_text()) if isinstance(source, Path) else source
    return bundle.get("digest") == bundle_digest(bundle)
