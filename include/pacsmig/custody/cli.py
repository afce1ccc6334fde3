"""``pacsmig custody verify|export|evidence|anchor``: check and export the chain of custody."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pacsmig import config
from pacsmig.errors import PacsmigError


def _studies(ledger: object, args: argparse.Namespace) -> list[str]:
    from pacsmig.verify.reconcile import Scope

    if args.study:
        return list(args.study)
    return Scope.parse(args.date_from, args.date_to, args.patient_id).study_uids(ledger)


def _optional(getter: str) -> object:
    try:
        if getter == "source":
            return config.DicomNode.from_connection(config.connection(config.LEGACY_PACS))
        return config.connection(config.TARGET_ARCHIVE)
    except PacsmigError:
        return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pacsmig custody")
    parser.add_argument(
        "--dsn", default=None, help="ledger PostgreSQL URI (default: connection migration_ledger)"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    verify = sub.add_parser("verify", help="re-walk the hash chain; non-zero at the first bad entry")
    verify.add_argument(
        "--anchors",
        type=Path,
        default=None,
        help="anchor file (default: $PACSMIG_DATA_DIR/validation/custody_anchors.jsonl)",
    )
    verify.add_argument("--no-anchors", action="store_true", help="check the chain only")
    for name, help_ in (
        ("export", "DICOM audit messages (XML) and FHIR AuditEvent NDJSON"),
        ("evidence", "per-study evidence bundle (JSON with its own digest)"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--study", action="append", help="study UID (repeatable); default: the range")
        p.add_argument("--date-from")
        p.add_argument("--date-to")
        p.add_argument("--patient-id")
        p.add_argument("--out", type=Path, default=None, help="output folder")
        if name == "export":
            p.add_argument("--syslog", default=None, help="HOST:PORT of a TCP syslog collector (RFC 5424)")
    sub.add_parser("anchor", help="append an anchor entry now (and record it in the anchor file)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from pacsmig.custody import chain
    from pacsmig.ledger import Ledger

    try:
        dsn = args.dsn or config.ledger_dsn()
        with Ledger(dsn) as ledger:
            if args.cmd == "verify":
                path = None if args.no_anchors else (args.anchors or chain.default_anchor_path())
                anchors = chain.read_anchors(path) if path else []
                report = chain.verify_chain(ledger, anchors)
                print(chain.format_report(report))
                return 0 if report.ok else 1
            if args.cmd == "anchor":
                a = chain.write_anchor(ledger, reason="manual")
                print(f"anchor seq {a.anchor_seq} over {a.entries} entries")
                return 0
            studies = _studies(ledger, args)
            if args.cmd == "export":
                from pacsmig.custody.export import export_studies
                from pacsmig.custody.syslog import send

                out = args.out or config.sub_dir("validation", "audit")
                result = export_studies(ledger, studies, out, _optional("source"), _optional("target"))  # type: ignore[arg-type]
                if args.syslog:
                    host, _, port = args.syslog.rpartition(":")
                    result["syslog_sent"] = send(host, int(port), result["texts"])
                result.pop("texts")
                print(json.dumps({k: v for k, v in result.items() if k != "xml"}, indent=2))
                return 0
            from pacsmig.custody.evidence import write_bundle

            out = args.out or config.sub_dir("validation", "evidence")
            for uid in studies:
                print(write_bundle(ledger, uid, out))
            return 0
    except PacsmigError as exc:
        print(f"custody: {exc}")
        return 2
