"""Airflow adapter for ``pacs_plan``: each function is one task around :mod:`pacsmig.plan`."""

from __future__ import annotations

import logging
from pathlib import Path

from airflow.sdk import get_current_context

from pacsmig import config
from pacsmig.ledger import Ledger
from pacsmig.ops.connections import ledger

log = logging.getLogger(__name__)


def migrate_ledger() -> list[int]:
    with Ledger(ledger()) as led:
        return led.migrate()


def load_crosswalk() -> int:
    from pacsmig.transform.mpi import load_crosswalk_into_ledger

    path = config.mpi_crosswalk_path()
    if path is None:
        log.warning("PACSMIG_MPI_CROSSWALK is not set: every study will be held (no_mpi_match) "
                    "unless the crosswalk is already in the ledger")
        return 0
    with Ledger(ledger()) as led:
        return load_crosswalk_into_ledger(led, path)


def load_inventory() -> dict[str, int]:
    from pacsmig.plan.inventory import load_inventory as load

    params = get_current_context()["params"]
    path = Path(params.get("inventory_path") or config.sub_dir("audit") / "inventory.parquet")
    with Ledger(ledger()) as led:
        return load(led, path).to_dict()


def apply_strategy() -> int:
    from pacsmig.plan.strategy import apply_strategy as apply

    context = get_current_context()
    params = context["params"]
    today = (context.get("logical_date") or context["dag_run"].run_after).date()
    with Ledger(ledger()) as led:
        return apply(led, params["strategy"], recent_years=int(params["recent_years"]), today=today)


def write_plan() -> str:
    from pacsmig.plan.strategy import build_plan
    from pacsmig.plan.strategy import write_plan as write

    params = get_current_context()["params"]
    with Ledger(ledger()) as led:
        plan = build_plan(led, params["strategy"],
                          throughput_images_per_s=float(params["throughput_images_per_s"]),
                          partition=params["partition"])
    path = write(plan, config.sub_dir("plan"))
    for command in plan.commands:
        log.info("next: %s", command)
    return str(path)


