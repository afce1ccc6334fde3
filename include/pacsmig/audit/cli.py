"""``pacsmig audit``: the whole Phase 1 audit from plain Python (``legacy_pacs`` from the environment)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import date
from pathlib import Path

from pacsmig.config import LEGACY_PACS, DicomNode, connection
from pacsmig.errors import PacsmigError


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pacsmig audit", description=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default $PACSMIG_DATA_DIR/audit)")
    ap.add_argument("--date-from", default="1990-01-01", help="first study date to inventory (YYYY-MM-DD)")
    ap.add_argument("--date-to", default=None, help="last study date (default: today)")
    ap.add_argument(
        "--window",
        default="year",
        choices=["year", "quarter", "month", "day"],
        help="C-FIND window size (windows at the source's cap are split further)",
    )
    ap.add_argument("--find-cap", type=int, default=0, help="override the connection's find_cap")
    ap.add_argument(
        "--samples-per-group",
        type=int,
        default=3,
        help="instances retrieved per (modality, manufacturer, model)",
    )
    ap.add_argument(
        "--candidates-per-modality",
        type=int,
        default=10,
        help="studies per modality whose series are listed to find device groups",
    )
    ap.add_argument(
        "--throughput",
        type=float,
        default=150.0,
        help="images/s for the timeline (0 = the rate measured while sampling)",
    )
    ap.add_argument("--link-mbit-s", type=float, default=1000.0, help="link speed to the target (Mbit/s)")
    ap.add_argument("--conn-id", default=LEGACY_PACS, help="the source connection (AIRFLOW_CONN_<ID>)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from pacsmig.audit.pipeline import run_audit

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        node = DicomNode.from_connection(connection(args.conn_id))
        summary = run_audit(
            node,
            args.out,
            date_from=args.date_from,
            date_to=args.date_to or date.today().isoformat(),
            window=args.window,
            samples_per_group=args.samples_per_group,
            candidates_per_modality=args.candidates_per_modality,
            throughput_images_per_s=args.throughput,
            link_mbit_s=args.link_mbit_s,
            find_cap=args.find_cap or None,
        )
    except PacsmigError as exc:
        print(f"pacsmig audit: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
