"""Chain of custody on the real PostgreSQL: append-only guard, and tampering caught and named."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg2
import pytest

from pacsmig.custody import chain
from pacsmig.custody.cli import main as custody_main
from pacsmig.ledger import GENESIS_HASH, Ledger, custody_entry_hash

pytestmark = pytest.mark.integration


def _fill(dsn: str, n: int = 6) -> None:
    with Ledger(dsn) as ledger:
        for i in range(n):
            ledger.custody("queried" if i % 2 else "extracted", f"1.2.3.{i % 3}", {"i": i, "ae": "LEGACY"})


def _superuser(dsn: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def _rows(dsn: str) -> list[tuple]:
    with _superuser(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT seq, entry_hash FROM custody ORDER BY seq")
        return cur.fetchall()


def _tamper(dsn: str, sql: str, params: tuple = ()) -> None:
    conn = _superuser(dsn)
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE custody DISABLE TRIGGER USER")
        cur.execute(sql, params)
        cur.execute("ALTER TABLE custody ENABLE TRIGGER USER")
    conn.close()


def _verify(dsn: str, anchors: list[chain.Anchor] | None = None) -> chain.ChainReport:
    with Ledger(dsn) as ledger:
        return chain.verify_chain(ledger, anchors)


def test_intact_chain_verifies_and_cli_exits_zero(
    ledger_dsn: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _fill(ledger_dsn)
    report = _verify(ledger_dsn)
    assert report.ok and report.entries == 6
    assert custody_main(["--dsn", ledger_dsn, "verify", "--anchors", str(tmp_path / "none.jsonl")]) == 0
    assert "intact: 6 entries" in capsys.readouterr().out


def test_update_delete_truncate_are_refused(ledger_dsn: str) -> None:
    _fill(ledger_dsn, 2)
    conn = _superuser(ledger_dsn)
    with conn.cursor() as cur:
        for sql in ("UPDATE custody SET event = 'x'", "DELETE FROM custody", "TRUNCATE custody"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="append-only"):
                cur.execute(sql)
    conn.close()
    assert len(_rows(ledger_dsn)) == 2


def test_task_role_may_append_but_not_rewrite(ledger_dsn: str) -> None:
    _fill(ledger_dsn, 2)
    conn = psycopg2.connect(ledger_dsn)
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE custody DISABLE TRIGGER USER")  # only the role may stop it now
        conn.commit()
        cur.execute("SET ROLE pacsmig_task")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("UPDATE custody SET event = 'forged' WHERE seq = 1")
        conn.rollback()
        cur.execute("SET ROLE pacsmig_task")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("DELETE FROM custody")
        conn.rollback()
        cur.execute("SET ROLE pacsmig_task")
        cur.execute("UPDATE studies SET priority = 1 WHERE false")  # ordinary DML is allowed
        conn.rollback()
        cur.execute("RESET ROLE")
        cur.execute("ALTER TABLE custody ENABLE TRIGGER USER")
        conn.commit()
    conn.close()
    # The pipeline, running as the task role, still appends entries.
    ledger = Ledger(ledger_dsn)
    with ledger.transaction() as cur:
        cur.execute("SET LOCAL ROLE pacsmig_task")
        ledger.append_custody(cur, "1.2.3", "loaded", {"ack": "stored"})
    ledger.close()
    assert _verify(ledger_dsn).entries == 3


def test_altered_entry_is_named(ledger_dsn: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _fill(ledger_dsn)
    seq = _rows(ledger_dsn)[3][0]
    _tamper(ledger_dsn, "UPDATE custody SET details = %s WHERE seq = %s", (json.dumps({"i": 99}), seq))
    report = _verify(ledger_dsn)
    assert not report.ok
    assert (report.problems[0].seq, report.problems[0].kind) == (seq, "altered")
    assert custody_main(["--dsn", ledger_dsn, "verify", "--no-anchors"]) == 1
    assert f"at seq {seq} [altered]" in capsys.readouterr().out


def test_altered_and_rehashed_entry_breaks_the_link(ledger_dsn: str) -> None:
    _fill(ledger_dsn)
    with Ledger(ledger_dsn) as ledger:
        row = ledger.query("SELECT * FROM custody ORDER BY seq OFFSET 2 LIMIT 1")[0]
    forged = custody_entry_hash(
        row["prev_hash"],
        row["seq"],
        row["study_instance_uid"],
        "forged",
        row["actor"],
        row["details"],
        row["created_at"],
    )
    _tamper(
        ledger_dsn,
        "UPDATE custody SET event = 'forged', entry_hash = %s WHERE seq = %s",
        (forged, row["seq"]),
    )
    report = _verify(ledger_dsn)
    assert report.problems[0].kind == "removed"  # the next entry chains to the original hash
    assert f"seq {row['seq']}" in report.problems[0].message


def test_inserted_entry_is_named(ledger_dsn: str) -> None:
    _fill(ledger_dsn, 3)
    with Ledger(ledger_dsn) as ledger:
        with ledger.transaction() as cur:  # leave a gap in the sequence, as rolled-back appends do
            cur.execute("SELECT nextval(pg_get_serial_sequence('custody', 'seq'))")
            gap = cur.fetchone()["nextval"]
        ledger.custody("extracted", "1.2.3.9", {"i": 3})
        before = ledger.query("SELECT * FROM custody WHERE seq < %s ORDER BY seq DESC LIMIT 1", (gap,))[0]
    # A forger who knows the algorithm inserts a well-formed entry into the gap.
    created = before["created_at"]
    entry = custody_entry_hash(before["entry_hash"], gap, "1.2.3.0", "loaded", "forger", {}, created)
    _tamper(
        ledger_dsn,
        "INSERT INTO custody (seq, study_instance_uid, event, actor, details, created_at, "
        "prev_hash, entry_hash) VALUES (%s, '1.2.3.0', 'loaded', 'forger', '{}', %s, %s, %s)",
        (gap, created, before["entry_hash"], entry),
    )
    report = _verify(ledger_dsn)
    assert (report.problems[0].seq, report.problems[0].kind) == (gap, "inserted")


def test_deleted_entry_is_named(ledger_dsn: str) -> None:
    _fill(ledger_dsn)
    rows = _rows(ledger_dsn)
    _tamper(ledger_dsn, "DELETE FROM custody WHERE seq = %s", (rows[2][0],))
    report = _verify(ledger_dsn)
    assert (report.problems[0].seq, report.problems[0].kind) == (rows[3][0], "removed")
    assert f"between seq {rows[1][0]} and seq {rows[3][0]}" in report.problems[0].message


def test_deleted_first_entry_is_caught(ledger_dsn: str) -> None:
    _fill(ledger_dsn, 3)
    rows = _rows(ledger_dsn)
    _tamper(ledger_dsn, "DELETE FROM custody WHERE seq = %s", (rows[0][0],))
    report = _verify(ledger_dsn)
    assert report.problems[0].kind == "removed" and "genesis" in report.problems[0].message


def test_truncated_tail_is_caught_by_the_anchor_file(
    ledger_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(ledger_dsn, 4)
    anchors_file = tmp_path / "anchors.jsonl"
    with Ledger(ledger_dsn) as ledger:
        anchor = chain.write_anchor(ledger, anchors_file)
        ledger.custody("verified", "1.2.3.0", {"n": 1})
    assert anchor.head_hash == _rows(ledger_dsn)[3][1]
    assert _verify(ledger_dsn, chain.read_anchors(anchors_file)).anchors_checked == 1
    # Remove the anchor and everything after it: the shorter chain is consistent in itself ...
    _tamper(ledger_dsn, "DELETE FROM custody WHERE seq >= %s", (anchor.anchor_seq,))
    assert _verify(ledger_dsn).ok
    # ... but not with the anchor recorded outside the database.
    report = _verify(ledger_dsn, chain.read_anchors(anchors_file))
    assert (report.problems[0].seq, report.problems[0].kind) == (anchor.anchor_seq, "anchor_missing")
    assert custody_main(["--dsn", ledger_dsn, "verify", "--anchors", str(anchors_file)]) == 1
    assert "anchor_missing" in capsys.readouterr().out


def test_anchor_if_due(ledger_dsn: str, tmp_path: Path) -> None:
    _fill(ledger_dsn, 3)
    with Ledger(ledger_dsn) as ledger:
        assert chain.anchor_if_due(ledger, every=5, path=tmp_path / "a.jsonl") is None
        first = chain.anchor_if_due(ledger, every=3, path=tmp_path / "a.jsonl")
        assert first is not None and first.entries == 3
        assert chain.anchor_if_due(ledger, every=3, path=tmp_path / "a.jsonl") is None
    assert len(chain.read_anchors(tmp_path / "a.jsonl")) == 1
    assert _rows(ledger_dsn)[0][1] != GENESIS_HASH
