"""``pacsmig validate``: read back every migrated instance, reconcile with the source, report, sample."""

from __future__ import annotations

import argparse
import json
import logging

from pacsmig import config
from pacsmig.errors import PacsmigError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pacsmig validate", description=__doc__)
    parser.add_argument("--date-from", default=None, help="first study date (YYYY-MM-DD)")
    parser.add_argument("--date-to", default=None, help="last study date (YYYY-MM-DD)")
    parser.add_argument("--patient-id", default=None, help="only this patient (source or MPI ID)")
    parser.add_argument("--recheck", action="store_true", help="re-read instances already verified")
    parser.add_argument(
        "--sample-fraction",
        type=float,
        default=0.10,
        help="share of studies for the radiologist's sample (0 = none; default 0.10)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample draw")
    parser.add_argument("--workers", type=int, default=None, help="decoder processes (0 = inline)")
    parser.add_argument(
        "--dsn", default=None, help="ledger PostgreSQL URI (default: connection migration_ledger)"
    )
    parser.add_argument(
        "--no-source",
        action="store_true",
        help="do not re-query the source PACS (counts come from the ledger only)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from pacsmig.verify.reconcile import Scope
    from pacsmig.verify.validate import run_validation

    try:
        scope = Scope.parse(args.date_from, args.date_to, args.patient_id)
        dsn = args.dsn or config.ledger_dsn()
        target = config.connection(config.TARGET_ARCHIVE)
        source = (
            None
            if args.no_source
            else config.DicomNode.from_connection(config.connection(config.LEGACY_PACS))
        )
        summary = run_validation(
            dsn,
            target,
            source,
            scope,
            recheck=args.recheck,
            workers=args.workers,
            sample_fraction=args.sample_fraction or None,
            seed=args.seed,
        )
    except PacsmigError as exc:
        print(f"validate: {exc}")
        return 2
    keys = (
        "instances_source",
        "instances_verified",
        "instances_mismatched",
        "instances_missing",
        "instances_quarantined",
        "instances_held",
        "studies",
        "studies_review",
    )
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    bad = summary["instances_mismatched"] + summary["instances_missing"]
    return 1 if bad else 0
