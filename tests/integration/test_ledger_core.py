"""The ledger core on the real PostgreSQL: idempotent migrations, custody on every state change."""

import pytest

from pacsmig.errors import LedgerError
from pacsmig.ledger import GENESIS_HASH, Ledger, StudyState, custody_entry_hash


def test_migrate_is_idempotent(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        assert ledger.migrate() == []


def test_state_change_writes_chained_custody(ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        with ledger.transaction() as cur:
            cur.execute("INSERT INTO studies (study_instance_uid) VALUES ('1.2.3')")
        ledger.set_state("1.2.3", StudyState.QUEUED)
        ledger.set_state("1.2.3", StudyState.EXTRACTING, expect=[StudyState.QUEUED])
        with pytest.raises(LedgerError):
            ledger.set_state("1.2.3", StudyState.VERIFIED, expect=[StudyState.LOADED])
        rows = ledger.query("SELECT * FROM custody ORDER BY seq")
    assert [r["event"] for r in rows] == ["state:queued", "state:extracting"]
    prev = GENESIS_HASH
    for r in rows:
        assert r["prev_hash"] == prev
        assert r["entry_hash"] == custody_entry_hash(prev, r["seq"], r["study_instance_uid"], r["event"],
                                                     r["actor"], r["details"], r["created_at"])
        prev = r["entry_hash"]


def test_the_engine_works_as_a_role_that_cannot_rewrite_custody(ledger_dsn: str) -> None:
    import psycopg2

    with Ledger(ledger_dsn) as ledger:
        assert ledger.query("SELECT current_user AS u")[0]["u"] == "pacsmig_task"
        ledger.custody("queried", "1.2.3", {"n": 1})
        with pytest.raises(psycopg2.Error), ledger.transaction() as cur:
            cur.execute("UPDATE custody SET actor = 'someone else'")
        assert ledger.migrate() == []          # migrations still run, as the owner
        assert ledger.query("SELECT current_user AS u")[0]["u"] == "pacsmig_task"
