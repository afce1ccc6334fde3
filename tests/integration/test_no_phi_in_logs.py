"""No PHI in task logs: inventory, retrieve and migration log UIDs and counts, never names or IDs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pacsmig.audit.pipeline import run_window
from pacsmig.ledger import Ledger
from pacsmig.migrate.pipeline import MigrationContext, migrate_study
from pacsmig.plan.inventory import load_inventory
from pacsmig.plan.strategy import apply_strategy
from pacsmig.transform.mpi import load_crosswalk_into_ledger
from tests.integration.test_migrate_pipeline import target_conn, truth_inventory

pytestmark = pytest.mark.integration


def test_logs_carry_no_patient_names_or_ids(caplog: pytest.LogCaptureFixture, loaded_legacy, legacy_node,  # noqa: ANN001
                                            target_archive, ledger_dsn: str, tmp_path: Path) -> None:
    _, truth = loaded_legacy
    target_archive.reset()
    caplog.set_level(logging.DEBUG)
    run_window(legacy_node, "0001-01-01..9999-12-31", tmp_path / "audit")
    with Ledger(ledger_dsn) as ledger:
        load_inventory(ledger, truth_inventory(truth))
        load_crosswalk_into_ledger(ledger, truth.crosswalk_path)
        apply_strategy(ledger, "big_bang")
    ctx = MigrationContext(ledger_dsn=ledger_dsn, source=legacy_node, targets=[target_conn(target_archive)],
                           data_dir=tmp_path / "data")
    study = next(s for s in truth.studies if s.mpi_patient_id and s.patient_name)
    migrate_study(ctx, study.study_instance_uid)
    text = caplog.text
    assert study.study_instance_uid in text                # the log is there, and speaks in UIDs
    leaked = [v for s in truth.studies for v in (s.patient_id, s.mpi_patient_id, s.patient_name)
              if v and len(v) > 4 and v in text]
    assert leaked == []
