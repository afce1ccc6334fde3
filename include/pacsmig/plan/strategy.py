"""Migration strategies: big bang (all, then delta) or prefetch-relevant (live cutover, newest first).

The plan is a file (``$PACSMIG_DATA_DIR/plan/plan.json``) with the partitions by study date, the
ETA at the measured (or configured) throughput, and the exact backfill commands to run.
"""

from __future__ import annotations

import enum
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from pacsmig.ledger import Ledger

log = logging.getLogger(__name__)

#: Priorities in the ledger (higher first). ADT admissions are above everything background.
PRIORITY_ADMISSION = 100
PRIORITY_RECENT = 20
PRIORITY_BACKGROUND = 0


class Strategy(enum.StrEnum):
    BIG_BANG = "big_bang"
    PREFETCH = "prefetch"


@dataclass
class Plan:
    strategy: str
    studies_total: int
    studies_queued: int
    instances_queued: int
    date_min: str | None
    date_max: str | None
    undated_studies: int
    partitions: list[dict[str, Any]]
    throughput_images_per_s: float
    throughput_source: str
    eta_hours: float
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def backfill_range(dmin: date, dmax: date, cron: str = "@monthly") -> tuple[date, date]:
    """``--from-date/--to-date`` covering study dates ``dmin..dmax`` with pacs_migrate's data-interval
    timetable: a backfill takes the runs whose logical date (the interval's START) lies in the range,
    so the range runs from the start of the partition holding ``dmin`` to that holding ``dmax``."""
    if cron in ("@daily", "0 0 * * *"):
        return dmin, dmax
    if cron in ("@yearly", "@annually"):
        return date(dmin.year, 1, 1), date(dmax.year, 1, 1)
    return dmin.replace(day=1), dmax.replace(day=1)


def measured_throughput(ledger: Ledger) -> float | None:
    """Instances per second actually loaded so far, from the ledger's load timestamps (None if too few)."""
    rows = ledger.query(
        "SELECT count(*) AS n, extract(epoch FROM max(loaded_at) - min(received_at)) AS secs "
        "FROM instances WHERE loaded_at IS NOT NULL")
    n, secs = int(rows[0]["n"] or 0), float(rows[0]["secs"] or 0.0)
    return n / secs if n >= 100 and secs > 0 else None


def apply_strategy(ledger: Ledger, strategy: Strategy | str, *, recent_years: int = 2,
                   today: date | None = None) -> int:
    """Queue the discovered studies with the strategy's priorities; returns how many were queued.

    ``today`` is the reference for "recent" (the DAG passes its logical date: never ``now()``).
    """
    strategy = Strategy(strategy)
    today = today or date.today()
    cutoff = date(today.year - recent_years, today.month, min(today.day, 28))
    with ledger.transaction() as cur:
        if strategy is Strategy.BIG_BANG:
            cur.execute("UPDATE studies SET state = 'queued', priority = %s, updated_at = now() "
                        "WHERE state = 'discovered' RETURNING study_instance_uid, priority",
                        (PRIORITY_BACKGROUND,))
        else:
            # Prefetch-relevant: patients with a current or upcoming encounter first, then the
            # newest studies; the rest of the history migrates in the background, newest first.
            cur.execute(
                "UPDATE studies s SET state = 'queued', updated_at = now(), priority = CASE "
                " WHEN EXISTS (SELECT 1 FROM adt_events e JOIN mpi_crosswalk x "
                "   ON x.mpi_patient_id = e.mpi_patient_id WHERE e.event_type IN ('A01','A04','A05') "
                "   AND x.patient_id = s.patient_id "
                "   AND x.issuer_of_patient_id = COALESCE(s.issuer_of_patient_id, '')) THEN %s "
                " WHEN s.study_date >= %s THEN %s ELSE %s END "
                "WHERE s.state = 'discovered' RETURNING study_instance_uid, priority",
                (PRIORITY_ADMISSION, cutoff, PRIORITY_RECENT, PRIORITY_BACKGROUND))
        rows = cur.fetchall()
        ledger.append_custody_many(cur, [
            (r["study_instance_uid"], "state:queued",
             {"from": "discovered", "to": "queued", "strategy": strategy.value, "priority": r["priority"]})
            for r in rows])
    log.info("strategy %s queued %d studies", strategy.value, len(rows))
    return len(rows)


def build_plan(ledger: Ledger, strategy: Strategy | str, *, throughput_images_per_s: float = 150.0,
               partition: str = "month") -> Plan:
    """Partitions by study date with counts, ETA, and the backfill commands for this strategy."""
    strategy = Strategy(strategy)
    trunc = {"month": "month", "year": "year", "day": "day"}[partition]
    parts = ledger.query(
        f"SELECT date_trunc('{trunc}', study_date)::date AS start, count(*) AS studies, "
        "coalesce(sum(expected_instances), 0) AS instances FROM studies "
        "WHERE state NOT IN ('verified', 'loaded') AND study_date IS NOT NULL GROUP BY 1 ORDER BY 1")
    totals = ledger.query(
        "SELECT count(*) AS total, count(*) FILTER (WHERE state = 'queued') AS queued, "
        "coalesce(sum(expected_instances) FILTER (WHERE state = 'queued'), 0) AS instances, "
        "min(study_date) AS dmin, max(study_date) AS dmax, "
        "count(*) FILTER (WHERE study_date IS NULL AND state NOT IN ('verified','loaded')) AS undated "
        "FROM studies")[0]
    measured = measured_throughput(ledger)
    rate = measured or throughput_images_per_s
    eta_hours = float(totals["instances"]) / rate / 3600 if rate else float("inf")
    dmin, dmax = totals["dmin"], totals["dmax"]
    commands: list[str] = []
    notes: list[str] = []
    if dmin and dmax:
        start, end = backfill_range(dmin, dmax, os.environ.get("PACSMIG_PARTITION_CRON", "@monthly"))
        backfill = (f"airflow backfill create --dag-id pacs_migrate --from-date {start.isoformat()} "
                    f"--to-date {end.isoformat()}")
        if strategy is Strategy.PREFETCH:
            backfill += " --run-backwards"
            notes.append("Live cutover: the new archive takes new studies now; pacs_prefetch pulls the "
                         "priors of admitted patients ahead of this background backfill (newest first).")
        else:
            notes.append("Big bang: after the bulk backfill, run pacs_audit then pacs_plan again: the "
                         "delta (studies that arrived or changed on the legacy side) is re-queued, "
                         "then migrate it with the delta command below.")
        commands.append(backfill)
    if totals["undated"]:
        commands.append("airflow dags trigger pacs_migrate --conf '{\"undated\": true}'")
        notes.append(f"{totals['undated']} studies have no StudyDate: no date partition covers them, "
                     "the undated command migrates them.")
    commands.append("airflow dags trigger pacs_migrate --conf '{\"all_queued\": true}'  # delta pass")
    return Plan(
        strategy=strategy.value, studies_total=int(totals["total"]), studies_queued=int(totals["queued"]),
        instances_queued=int(totals["instances"]), date_min=str(dmin) if dmin else None,
        date_max=str(dmax) if dmax else None, undated_studies=int(totals["undated"]),
        partitions=[{"start": str(p["start"]), "studies": int(p["studies"]),
                     "instances": int(p["instances"])} for p in parts],
        throughput_images_per_s=round(rate, 1), throughput_source="measured" if measured else "configured",
        eta_hours=round(eta_hours, 2), commands=commands, notes=notes)


def write_plan(plan: Plan, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "plan.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(plan.to_json())
    tmp.replace(path)
    return path
