"""``pacsmig ledger migrate|load-crosswalk``: schema migrations and MPI crosswalk loading."""

from __future__ import annotations

import argparse
from pathlib import Path

from pacsmig import config
from pacsmig.ledger import Ledger


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pacsmig ledger")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("migrate", help="apply pending schema migrations (idempotent)")
    cw = sub.add_parser("load-crosswalk", help="load the MPI crosswalk CSV into the ledger")
    cw.add_argument("path", nargs="?", type=Path, default=None)
    parser.add_argument("--dsn", default=None, help="PostgreSQL URI (default: connection migration_ledger)")
    args = parser.parse_args(argv)
    dsn = args.dsn or config.ledger_dsn()
    with Ledger(dsn) as ledger:
        if args.cmd == "migrate":
            applied = ledger.migrate()
            print(f"applied migrations: {applied or 'none (up to date)'}")
        else:
            from pacsmig.transform.mpi import load_crosswalk_into_ledger

            path = args.path or config.mpi_crosswalk_path()
            if path is None:
                parser.error("no crosswalk path given and PACSMIG_MPI_CROSSWALK is not set")
            ledger.migrate()
            n = load_crosswalk_into_ledger(ledger, path)
            print(f"crosswalk rows loaded: {n}")
    return 0
