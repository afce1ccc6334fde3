"""Transform: MPI reconciliation and the declarative coercion rules engine.

Examples
--------
>>> from pacsmig.transform import RuleSet, default_rules_path, transform_instance   # doctest: +SKIP
>>> rules = RuleSet.from_yaml(default_rules_path())                                # doctest: +SKIP
>>> transform_instance(src, dst, rules=rules, mpi_patient_id="M1",
...                    mpi_issuer="HOSPITAL_MPI")                                   # doctest: +SKIP
"""

from __future__ import annotations

from pacsmig.transform.engine import TransformResult, dry_run, transform_instance
from pacsmig.transform.mpi import Crosswalk, load_crosswalk_into_ledger, reconcile
from pacsmig.transform.rules import COERCE, CORRECT, Change, RuleSet, default_rules_path

__all__ = ["COERCE", "CORRECT", "Change", "Crosswalk", "RuleSet", "TransformResult", "default_rules_path",
           "dry_run", "load_crosswalk_into_ledger", "reconcile", "transform_instance"]
