"""The ``pacsmig`` command line: a thin dispatcher to each package's own ``main(argv)``."""

from __future__ import annotations

import importlib
import sys

#: command -> "module:function"; each module owns its sub-arguments.
COMMANDS: dict[str, tuple[str, str]] = {
    "ledger": ("pacsmig.ledger.cli:main", "apply ledger schema migrations, load the MPI crosswalk"),
    "audit": ("pacsmig.audit.cli:main", "Phase 1: inventory, ID health, private tags, assessment"),
    "plan": ("pacsmig.plan.cli:main", "Phase 2: load the inventory into the ledger, choose a strategy"),
    "migrate": ("pacsmig.migrate.cli:main", "Phase 3: extract, transform, load studies"),
    "rules": ("pacsmig.transform.cli:main", "coercion rules: check a rule file, dry-run it on files"),
    "validate": ("pacsmig.verify.cli:main", "Phase 4: pixel verification, count reconciliation, sample"),
    "custody": ("pacsmig.custody.cli:main", "chain of custody: verify, export"),
    "adt-listener": ("pacsmig.adt.listener:main", "HL7 v2 MLLP listener for ADT admissions"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: pacsmig COMMAND [ARGS...]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<14} {help_}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    target, _ = COMMANDS[argv[0]]
    module_name, func = target.split(":")
    module = importlib.import_module(module_name)
    return int(getattr(module, func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
