"""``pacsmig rules check|dry-run``: validate a rule file, or show what it would change in files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pacsmig.errors import TransformError


def main(argv: list[str]) -> int:
    """Entry point; exit 0 = valid / dry run without errors, 1 = errors in files, 2 = bad rule file."""
    parser = argparse.ArgumentParser(prog="pacsmig rules")
    sub = parser.add_subparsers(dest="cmd", required=True)
    check = sub.add_parser("check", help="validate a rule file and list its rules")
    check.add_argument("rules", nargs="?", type=Path, default=None, help="rule file (default: shipped rules)")
    dry = sub.add_parser("dry-run", help="report what the rules would change in files, writing nothing")
    dry.add_argument("--rules", type=Path, default=None, help="rule file (default: shipped rules)")
    dry.add_argument("--crosswalk", type=Path, default=None,
                     help="MPI crosswalk CSV to include reconciliation (default: none)")
    dry.add_argument("--output", "-o", type=Path, default=None, help="write the report as CSV here")
    dry.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders")
    args = parser.parse_args(argv)

    from pacsmig.transform.rules import RuleSet, default_rules_path

    path = args.rules or default_rules_path()
    try:
        rules = RuleSet.from_yaml(path)
    except TransformError as exc:
        print(f"invalid rule file: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "check":
        print(f"{path}: {len(rules)} rules OK")
        for rule in rules:
            print(f"  {rule.id:<36} {rule.op:<20} {rule.reason}")
        return 0

    from pacsmig.transform.engine import dry_run
    from pacsmig.transform.mpi import Crosswalk

    try:
        crosswalk = Crosswalk.from_csv(args.crosswalk) if args.crosswalk else None
    except TransformError as exc:
        print(f"invalid crosswalk: {exc}", file=sys.stderr)
        return 2
    report = dry_run(args.paths, rules, crosswalk)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        report.to_csv(args.output, index=False)
    else:
        report.to_csv(sys.stdout, index=False)
    errors = int((report["action"] == "error").sum())
    files = report["path"].nunique()
    print(f"{len(report) - errors} changes in {files} files with findings, {errors} errors", file=sys.stderr)
    return 1 if errors else 0
