"""The MLLP listener against real MLLP clients and the real PostgreSQL ledger."""

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from hl7.client import MLLPClient

from pacsmig.adt.listener import AdtListener, running_listener
from pacsmig.adt.send import MllpConnection, build_adt, parse_ack, send_adt
from testbed.orthanc import free_port

pytestmark = pytest.mark.integration
MPI = "HOSPITAL_MPI"


def _rows(dsn: str, sql: str = "SELECT * FROM adt_events ORDER BY id", params: tuple = ()) -> list[dict]:
    # A separate connection: what it sees is committed, not just written by the listener's session.
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        conn.close()


@pytest.fixture
def listener(ledger_dsn: str) -> Iterator[AdtListener]:
    with running_listener(ledger_dsn, port=0) as running:
        yield running


def test_a01_is_committed_before_the_ack(listener: AdtListener, ledger_dsn: str) -> None:
    ack = parse_ack(send_adt("127.0.0.1", listener.port, build_adt("A01", "M1", "CTRL-A01", issuer=MPI,
                                                                    patient_name="DOE^JANE")))
    rows = _rows(ledger_dsn)  # queried the moment the ACK arrived
    assert (ack.code, ack.control_id, ack.message_type) == ("AA", "CTRL-A01", "ACK^A01")
    assert len(rows) == 1
    row = rows[0]
    assert (row["message_control_id"], row["event_type"], row["mpi_patient_id"]) == ("CTRL-A01", "A01", "M1")
    assert "DOE^JANE" in row["raw_message"] and row["processed_at"] is None
    assert row["details"]["mpi_matched"] is True


def test_hl7_package_client_gets_an_ack(listener: AdtListener, ledger_dsn: str) -> None:
    with MLLPClient("127.0.0.1", listener.port) as client:
        raw = client.send_message(build_adt("A04", "M2", "CTRL-A04", issuer=MPI))
    assert parse_ack(raw.strip(b"\x0b\x1c\r").decode()).code == "AA"
    assert [r["event_type"] for r in _rows(ledger_dsn)] == ["A04"]


def test_malformed_messages_get_ae_and_store_nothing(listener: AdtListener, ledger_dsn: str) -> None:
    bad = [
        "this is not HL7",
        "MSH|^~\\&|ADT|H|PACSMIG|R|20240101||ADT^A01||P|2.5.1\rPID|1||M1^^^HOSPITAL_MPI\r",  # no MSH-10
        "MSH|^~\\&|ADT|H|PACSMIG|R|20240101||ADT^A01|C-NOPID|P|2.5.1\rPID|1||\r",  # no PID-3
    ]
    with MllpConnection("127.0.0.1", listener.port) as conn:
        answers = [parse_ack(conn.send(m)) for m in bad]
        # The connection survives a bad message: the next good one is accepted.
        good = parse_ack(conn.send(build_adt("A01", "M1", "C-GOOD", issuer=MPI)))
    assert [a.code for a in answers] == ["AE", "AE", "AE"]
    assert all(a.text for a in answers)
    assert answers[2].control_id == "C-NOPID"
    assert good.code == "AA"
    assert [r["message_control_id"] for r in _rows(ledger_dsn)] == ["C-GOOD"]


def test_unsupported_type_is_rejected(listener: AdtListener, ledger_dsn: str) -> None:
    oru = "MSH|^~\\&|LAB|H|PACSMIG|R|20240101||ORU^R01|C-ORU|P|2.5.1\rPID|1||M1^^^HOSPITAL_MPI\r"
    a03 = build_adt("A01", "M1", "C-A03", issuer=MPI).replace("ADT^A01^ADT_A01", "ADT^A03^ADT_A03")
    assert parse_ack(send_adt("127.0.0.1", listener.port, oru)).code == "AR"
    assert parse_ack(send_adt("127.0.0.1", listener.port, a03)).code == "AR"
    assert _rows(ledger_dsn) == []


def test_resend_is_idempotent(listener: AdtListener, ledger_dsn: str) -> None:
    msg = build_adt("A01", "M1", "CTRL-DUP", issuer=MPI)
    first = parse_ack(send_adt("127.0.0.1", listener.port, msg))
    again = parse_ack(send_adt("127.0.0.1", listener.port, msg))
    assert (first.code, again.code) == ("AA", "AA")
    assert len(_rows(ledger_dsn)) == 1
    # Same control ID, different patient: accepting it would silently drop one of the two.
    clash = parse_ack(send_adt("127.0.0.1", listener.port, build_adt("A01", "M9", "CTRL-DUP", issuer=MPI)))
    assert clash.code == "AE"
    assert [r["mpi_patient_id"] for r in _rows(ledger_dsn)] == ["M1"]


def test_a40_and_a08_are_stored(listener: AdtListener, ledger_dsn: str) -> None:
    a40 = build_adt("A40", "M-SURVIVOR", "C-A40", prior_patient_id="M-OLD", issuer=MPI)
    a08 = build_adt("A08", "M-SURVIVOR", "C-A08", issuer=MPI)
    assert parse_ack(send_adt("127.0.0.1", listener.port, a40)).code == "AA"
    assert parse_ack(send_adt("127.0.0.1", listener.port, a08)).code == "AA"
    rows = {r["event_type"]: r for r in _rows(ledger_dsn)}
    assert rows["A40"]["mpi_patient_id"] == "M-SURVIVOR"
    assert rows["A40"]["prior_patient_id"] == "M-OLD"
    assert rows["A40"]["details"]["merges"] == [{"patient_id": "M-SURVIVOR", "prior_patient_id": "M-OLD"}]
    assert rows["A08"]["prior_patient_id"] is None


def test_database_down_is_never_aa() -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/pacsmig"
    with running_listener(dead, port=0) as running:
        ack = parse_ack(send_adt("127.0.0.1", running.port, build_adt("A01", "M1", "C-DOWN", issuer=MPI)))
    assert ack.code in ("AE", "AR")
    assert ack.control_id == "C-DOWN"
    assert "not stored" in ack.text


def test_concurrent_clients(listener: AdtListener, ledger_dsn: str) -> None:
    clients, per_client = 8, 5
    answers: dict[str, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients)

    def client(n: int) -> None:
        try:
            with MllpConnection("127.0.0.1", listener.port) as conn:
                barrier.wait()
                for i in range(per_client):
                    cid = f"C-{n}-{i}"
                    answers[cid] = parse_ack(conn.send(build_adt("A01", f"M{n}", cid, issuer=MPI))).code
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(answers) == clients * per_client and set(answers.values()) == {"AA"}
    stored = {r["message_control_id"] for r in _rows(ledger_dsn)}
    assert stored == set(answers)


def test_cli_serves_and_stops_on_sigterm(ledger_dsn: str) -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "pacsmig.cli", "adt-listener", "--port", "0",
                             "--dsn", ledger_dsn], cwd=repo, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = None
        assert proc.stderr is not None
        for line in proc.stderr:  # wait for the listening line, not a fixed time
            if "ADT listener on" in line:
                port = int(line.rsplit(":", 1)[1])
                break
        assert port, "the listener never reported its port"
        idle = MllpConnection("127.0.0.1", port)  # an idle connection must not hold up shutdown
        ack = send_adt("127.0.0.1", port, build_adt("A05", "M1", "C-CLI", issuer=MPI))
        assert parse_ack(ack).code == "AA"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        idle.close()
        log = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped" in log
    assert "M1" not in log  # control IDs and event types only, never patient IDs
    assert [r["message_control_id"] for r in _rows(ledger_dsn)] == ["C-CLI"]


def test_stop_finishes_the_message_in_flight(ledger_dsn: str) -> None:
    db = ledger_dsn.rsplit("/", 1)[1]
    blocker = psycopg2.connect(ledger_dsn)
    watcher = psycopg2.connect(ledger_dsn)
    watcher.autocommit = True
    result: dict[str, str] = {}
    with running_listener(ledger_dsn, port=0) as running:
        idle = MllpConnection("127.0.0.1", running.port)
        with blocker.cursor() as cur:  # hold the insert inside the listener until we let go
            cur.execute("LOCK TABLE adt_events IN EXCLUSIVE MODE")
        sender = threading.Thread(target=lambda: result.update(ack=send_adt(
            "127.0.0.1", running.port, build_adt("A01", "M1", "C-FLIGHT", issuer=MPI))))
        sender.start()
        with watcher.cursor() as cur:  # wait until the listener's INSERT is blocked on our lock
            for _ in range(600):
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                            "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO adt_events%%'", (db,))
                if cur.fetchone()[0]:
                    break
                threading.Event().wait(0.05)
            else:
                pytest.fail("the listener's insert never reached the database")
        stopping = running.stop_threadsafe()
        assert running.stop_requested.wait(30)
        assert not stopping.done()  # the stop waits for the message being committed
        blocker.commit()  # release the lock
        stopping.result(timeout=60)
        sender.join(60)
        idle.close()
    blocker.close()
    watcher.close()
    assert parse_ack(result["ack"]).code == "AA"
    assert [r["message_control_id"] for r in _rows(ledger_dsn)] == ["C-FLIGHT"]


def test_broken_framing_is_answered_and_the_connection_survives(listener: AdtListener,
                                                                ledger_dsn: str) -> None:
    from pacsmig.adt.send import frame

    with MllpConnection("127.0.0.1", listener.port) as conn:
        conn.sock.sendall(b"MSH|no start block\x1c\r")  # no <VT>
        unframed = parse_ack(conn.read_ack())
        conn.sock.sendall(b"\x0b\x1c\r")  # an empty frame
        empty = parse_ack(conn.read_ack())
        # Two frames in one write: both answered, in order.
        conn.sock.sendall(frame(build_adt("A01", "M1", "C-P1", issuer=MPI))
                          + frame(build_adt("A01", "M2", "C-P2", issuer=MPI)))
        first, second = parse_ack(conn.read_ack()), parse_ack(conn.read_ack())
    assert (unframed.code, empty.code) == ("AE", "AE")
    assert "MLLP" in unframed.text and "MSH" in empty.text
    assert [(first.code, first.control_id), (second.code, second.control_id)] == [("AA", "C-P1"),
                                                                                  ("AA", "C-P2")]
    assert [r["message_control_id"] for r in _rows(ledger_dsn)] == ["C-P1", "C-P2"]
