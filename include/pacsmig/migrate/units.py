"""Work units: how a partition's studies are cut into Airflow tasks, and one unit's migration.

A unit is a list of studies migrated one after another by one task (one association to the legacy
PACS at a time, so one pool slot). With ``images_per_task = 0`` every study is its own unit — one
task per study, labelled with its accession number, the clearest view in the Airflow UI. Each task
pays a start-up (a process, the DAG file parsed, connections resolved: ~1–3 s here) and a
scheduling delay, which for studies of a few dozen images costs more than the migration itself;
packing studies into units of about ``images_per_task`` images makes that cost vanish in the
migration's wall time (measured in ``make bench``, path c).

Packing never changes what is migrated or how: every study still goes through the same ledger
steps (claim → extract → transform → load → release), each its own transaction with its custody
entry, so a retried unit resumes each study where the ledger says it stopped and never repeats a
finished one. A failing study does not stop the others of its unit; the unit fails at the end,
naming the failed studies by UID, and Airflow's retry picks up only what is unfinished. A packed
task that runs out of studies takes over the run's unclaimed ones (``steal``), so the run ends
when the work does, not when the slowest pack does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pacsmig.ledger import Ledger

log = logging.getLogger(__name__)


def _images(study: dict[str, Any]) -> int:
    n = study.get("n_instances")
    return max(1, int(n)) if n else 1


def unit_label(studies: list[dict[str, Any]]) -> str:
    """The task's label in the UI: the first study's label (accession number), ``+N`` for the rest."""
    first = str(studies[0]["label"])
    return first if len(studies) == 1 else f"{first} +{len(studies) - 1}"


def pack_units(studies: list[dict[str, Any]], *, images_per_task: int = 0, lanes: int = 4,
               max_units: int = 1024) -> list[dict[str, Any]]:
    """Cut ``studies`` (in priority order) into at most ``max_units`` units.

    ``images_per_task <= 0``: one study per unit, the first ``max_units`` by priority (the rest stay
    queued for the next run: Airflow maps at most ``[core] max_map_length`` tasks).
    Otherwise: at least ``lanes`` units (so the pool's slots all work), about ``images_per_task``
    images each, never more than ``max_units`` (units grow instead: no study is left behind). Each
    study goes to the unit holding the fewest images so far, in priority order, so the head of the
    queue is spread over the first tasks and every unit works through its studies by priority.
    """
    if not studies:
        return []
    if images_per_task <= 0:
        return [{"label": unit_label([s]), "studies": [s], "images": _images(s)}
                for s in studies[:max_units]]
    total = sum(_images(s) for s in studies)
    n = min(len(studies), max_units, max(lanes, math.ceil(total / images_per_task)))
    units: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    load = [0] * n
    for s in studies:
        i = min(range(n), key=lambda k: (load[k], k))
        units[i].append(s)
        load[i] += _images(s)
    return [{"label": unit_label(u), "studies": u, "images": load[i]} for i, u in enumerate(units) if u]


@dataclass
class UnitResult:
    """What one unit did: per-study outcome by UID (no patient data)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    #: Studies of other units of the run this task took over (also in ``done``).
    stolen: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"studies_done": len(self.done), "studies_taken_over": len(self.stolen),
                "studies_claimed_elsewhere": len(self.skipped), "studies_failed": len(self.failed),
                "failed": self.failed}


def migrate_unit(ctx: Any, studies: list[dict[str, Any]], token: str, *, final_attempt: bool = True,
                 steal: Callable[[], list[dict[str, Any]]] | None = None) -> UnitResult:
    """Migrate each study of the unit in order: claim, extract, transform, load, release.

    A study claimed by another run is left to it. A study whose step raises keeps its claim (this
    unit's retry resumes it; the lease expires otherwise) and the next study goes on.
    ``final_attempt`` is passed to the steps, which quarantine instead of re-queueing on the last try.

    ``steal``: when the unit's own studies are done, take over studies of the same run that no
    task has claimed yet (``steal()`` lists them), lowest priority first, until none is left, so
    no task idles while another still has a queue (image counts are only a proxy for time). The
    claim is the same row lock as always: a study is migrated by one task, whichever gets it;
    its owner finds it claimed (or finished) and moves on. Each study is tried once per task.
    """
    from pacsmig.migrate.pipeline import claim, extract_study, load_study, release, transform_study

    result = UnitResult()
    tried: set[str] = set()

    def run(uid: str) -> bool:
        tried.add(uid)
        with Ledger(ctx.ledger_dsn) as ledger:
            row = ledger.study(uid)
            if row is None:
                result.failed[uid] = "LedgerError: the study is not in the ledger (run pacs_plan first)"
                log.warning("study %s is not in the ledger", uid)
                return False
            if row["state"] in ("loaded", "verified", "review"):  # finished by a task that took it over
                result.skipped.append(uid)
                return False
            if not claim(ledger, uid, token):
                log.info("study %s is claimed by another run: left to it", uid)
                result.skipped.append(uid)
                return False
        try:
            extract_study(ctx, uid, final_attempt=final_attempt)
            transform_study(ctx, uid)
            load_study(ctx, uid, final_attempt=final_attempt)
        except Exception as exc:  # noqa: BLE001 - one study's failure must not stop the unit
            result.failed[uid] = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("study %s failed: %s", uid, result.failed[uid])
            return False
        with Ledger(ctx.ledger_dsn) as ledger:
            release(ledger, uid, token)
        result.done.append(uid)
        return True

    for study in studies:
        run(study["study_instance_uid"])
    while steal is not None:
        candidates = [s["study_instance_uid"] for s in reversed(steal()) if s["study_instance_uid"] not in tried]
        if not candidates:
            break
        for uid in candidates:
            if uid not in tried and run(uid):
                result.stolen.append(uid)
    # A study taken over by another task shows up here as skipped: not this task's failure.
    return result
