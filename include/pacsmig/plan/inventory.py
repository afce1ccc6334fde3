"""Load the audit inventory into the ledger: new studies are discovered, changed ones re-queued.

This is also the delta sync: re-running it after a new audit adds the studies that arrived on the
legacy side and re-queues those whose instance count changed (state back to ``queued``, custody
entry ``changed_at_source``), whatever state they had reached.
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pacsmig.ledger import Ledger, Reason, StudyState

log = logging.getLogger(__name__)

#: Columns of inventory.parquet the ledger keeps (DESIGN.md interface).
_COLUMNS = ["study_instance_uid", "patient_id", "issuer_of_patient_id", "accession_number",
            "study_date", "modalities", "n_series", "n_instances"]


@dataclass(frozen=True)
class InventoryLoad:
    """What loading an inventory changed."""

    new: int
    changed: int
    unchanged: int
    total: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _normalise(inventory: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("study_instance_uid", "n_instances") if c not in inventory.columns]
    if missing:
        raise ValueError(f"inventory lacks required columns {missing}")
    df = inventory.reindex(columns=_COLUMNS).copy()
    df = df.dropna(subset=["study_instance_uid"]).drop_duplicates("study_instance_uid", keep="last")
    df["modalities"] = df["modalities"].map(_modalities_text)
    df["study_date"] = pd.to_datetime(df["study_date"], errors="coerce", format="mixed").dt.date
    for col in ("n_series", "n_instances"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


def _modalities_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, str):
        return value
    return "\\".join(str(v) for v in value)


def load_inventory(ledger: Ledger, inventory: pd.DataFrame | Path, *, source: str = "legacy_pacs"
                   ) -> InventoryLoad:
    """Upsert an inventory into ``studies``; custody ``queried`` for new, ``changed_at_source`` for changed."""
    if isinstance(inventory, Path):
        inventory = pd.read_parquet(inventory)
    df = _normalise(inventory)
    buf = io.StringIO()
    df.to_csv(buf, index=False, header=False, na_rep="\\N", sep="\t")
    buf.seek(0)
    with ledger.transaction() as cur:
        cur.execute("CREATE TEMP TABLE inv (study_instance_uid text, patient_id text, "
                    "issuer_of_patient_id text, accession_number text, study_date date, modalities text, "
                    "n_series integer, n_instances integer) ON COMMIT DROP")
        cur.copy_expert("COPY inv FROM STDIN WITH (FORMAT text, NULL '\\N')", buf)
        cur.execute(
            "INSERT INTO studies (study_instance_uid, patient_id, issuer_of_patient_id, accession_number, "
            "study_date, modalities, expected_series, expected_instances, state) "
            "SELECT study_instance_uid, patient_id, NULLIF(issuer_of_patient_id, ''), "
            "NULLIF(accession_number, ''), study_date, modalities, n_series, n_instances, 'discovered' "
            "FROM inv ON CONFLICT (study_instance_uid) DO NOTHING "
            "RETURNING study_instance_uid, expected_series, expected_instances")
        new = cur.fetchall()
        cur.execute(
            "WITH changed AS (SELECT s.study_instance_uid, s.state AS old_state, "
            "s.expected_instances AS old_instances FROM studies s JOIN inv i USING (study_instance_uid) "
            "WHERE s.expected_instances IS DISTINCT FROM i.n_instances FOR UPDATE OF s) "
            "UPDATE studies s SET expected_instances = i.n_instances, expected_series = i.n_series, "
            "state = CASE WHEN s.state IN ('discovered', 'held') THEN s.state ELSE 'queued' END, "
            "reason = CASE WHEN s.state IN ('discovered', 'held') THEN s.reason ELSE %s END, "
            "updated_at = now() FROM inv i, changed c "
            "WHERE s.study_instance_uid = i.study_instance_uid AND c.study_instance_uid = s.study_instance_uid "
            "RETURNING s.study_instance_uid, c.old_state, c.old_instances, i.n_instances",
            (Reason.CHANGED_AT_SOURCE.value,))
        changed = cur.fetchall()
        entries: list[tuple[str | None, str, dict[str, Any]]] = [
            (r["study_instance_uid"], "queried",
             {"source": source, "expected_series": r["expected_series"],
              "expected_instances": r["expected_instances"]}) for r in new]
        entries += [
            (r["study_instance_uid"], "changed_at_source",
             {"source": source, "from_state": r["old_state"], "old_instances": r["old_instances"],
              "new_instances": r["n_instances"], "reason": Reason.CHANGED_AT_SOURCE.value})
            for r in changed]
        ledger.append_custody_many(cur, entries)
    result = InventoryLoad(new=len(new), changed=len(changed),
                           unchanged=len(df) - len(new) - len(changed), total=len(df))
    log.info("inventory loaded into ledger: %s", result.to_dict())
    return result


def queue(ledger: Ledger, *, where: str = "state = 'discovered'", params: tuple[Any, ...] = (),
          priority: int | None = None) -> int:
    """Move discovered studies to ``queued`` (optionally setting their priority), with custody."""
    with ledger.transaction() as cur:
        cur.execute(
            f"UPDATE studies SET state = 'queued', priority = COALESCE(%s, priority), updated_at = now() "
            f"WHERE {where} RETURNING study_instance_uid, priority", (priority, *params))
        rows = cur.fetchall()
        ledger.append_custody_many(cur, [
            (r["study_instance_uid"], f"state:{StudyState.QUEUED.value}",
             {"from": "discovered", "to": "queued", "priority": r["priority"]}) for r in rows])
    return len(rows)
