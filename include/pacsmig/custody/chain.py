"""Walk, verify and anchor the hash-chained custody log so alteration, insertion and removal are caught.

The chain alone catches any change to an entry or its removal from the middle; removal of the
*tail* leaves a shorter but consistent chain, which is why anchors (the chain head at a moment)
are also written outside the database, to ``validation/custody_anchors.jsonl``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from pacsmig import config
from pacsmig.ledger import _CUSTODY_LOCK_KEY, GENESIS_HASH, Ledger, custody_entry_hash

logger = logging.getLogger(__name__)

#: The custody event of an anchor entry.
ANCHOR_EVENT = "anchor"
ANCHOR_FILE = "custody_anchors.jsonl"


@dataclass(frozen=True)
class ChainProblem:
    """The first thing wrong with the chain, named by the entry it concerns."""

    seq: int
    kind: str  # altered | inserted | removed | anchor_missing | anchor_mismatch
    message: str


@dataclass
class ChainReport:
    """What a walk of the chain found."""

    entries: int = 0
    head_seq: int | None = None
    head_hash: str = GENESIS_HASH
    anchors_checked: int = 0
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Anchor:
    """A recorded chain head: the anchor entry itself and the head it vouches for."""

    anchor_seq: int
    anchor_hash: str
    head_seq: int | None
    head_hash: str
    entries: int
    written_at: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def default_anchor_path() -> Path:
    """``$PACSMIG_DATA_DIR/validation/custody_anchors.jsonl``."""
    return config.sub_dir("validation") / ANCHOR_FILE


def read_anchors(path: Path) -> list[Anchor]:
    """The anchors recorded in ``path`` (missing file: none)."""
    if not path.exists():
        return []
    anchors = []
    for line in path.read_text().splitlines():
        if line.strip():
            anchors.append(Anchor(**json.loads(line)))
    return anchors


def write_anchor(ledger: Ledger, path: Path | None = None, reason: str = "validate",
                 details: dict[str, Any] | None = None) -> Anchor:
    """Append an ``anchor`` custody entry holding the current chain head, and record it in ``path``.

    Parameters
    ----------
    ledger
        The ledger whose chain is anchored.
    path
        The anchor file (default :func:`default_anchor_path`); the line is appended after commit.
    reason
        Why the anchor was taken (``validate``, ``periodic`` ...).
    details
        Extra facts to record in the anchor entry (run id, range).
    """
    with ledger.transaction() as cur:
        # Same lock append_custody takes: the head read here is the anchor's predecessor.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CUSTODY_LOCK_KEY,))
        cur.execute("SELECT seq, entry_hash FROM custody ORDER BY seq DESC LIMIT 1")
        head = cur.fetchone()
        cur.execute("SELECT count(*) AS n FROM custody")
        count = int(cur.fetchone()["n"])
        body = {"reason": reason, "head_seq": head["seq"] if head else None,
                "head_hash": head["entry_hash"] if head else GENESIS_HASH, "entries": count,
                **(details or {})}
        anchor_hash = ledger.append_custody(cur, None, ANCHOR_EVENT, body)
        cur.execute("SELECT seq, created_at FROM custody WHERE entry_hash = %s", (anchor_hash,))
        row = cur.fetchone()
    anchor = Anchor(anchor_seq=int(row["seq"]), anchor_hash=anchor_hash, head_seq=body["head_seq"],
                    head_hash=body["head_hash"], entries=count,
                    written_at=row["created_at"].astimezone(UTC).isoformat())
    path = path or default_anchor_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(anchor.to_json() + "\n")
    logger.info("custody anchor seq %s over %d entries (head seq %s)", anchor.anchor_seq, count,
                anchor.head_seq)
    return anchor


def anchor_if_due(ledger: Ledger, every: int = 1000, path: Path | None = None) -> Anchor | None:
    """Write an anchor when ``every`` entries or more were appended since the last one."""
    rows = ledger.query("SELECT coalesce(max(seq), 0) AS last FROM custody WHERE event = %s",
                        (ANCHOR_EVENT,))
    since = ledger.query("SELECT count(*) AS n FROM custody WHERE seq > %s", (rows[0]["last"],))
    if int(since[0]["n"]) >= every:
        return write_anchor(ledger, path, reason="periodic")
    return None


def verify_chain(ledger: Ledger, anchors: list[Anchor] | None = None,
                 stop_at_first: bool = True) -> ChainReport:
    """Re-walk the whole chain from genesis; report the first altered, inserted or removed entry.

    Parameters
    ----------
    ledger
        The ledger to check (read only; a server-side cursor streams the entries).
    anchors
        Anchors recorded outside the database; each must still be in the chain, unchanged.
    stop_at_first
        Stop at the first problem (what ``pacsmig custody verify`` reports) or collect all.

    Examples
    --------
    >>> report = verify_chain(Ledger(dsn))            # doctest: +SKIP
    >>> report.ok, report.entries                     # doctest: +SKIP
    (True, 1234)
    """
    report = ChainReport()
    by_seq = {a.anchor_seq: a for a in anchors or []}
    seen_anchor: set[int] = set()
    prev: dict[str, Any] | None = None
    prev_prev_hash: str | None = None

    def fail(seq: int, kind: str, message: str) -> bool:
        report.problems.append(ChainProblem(seq, kind, message))
        return stop_at_first

    with ledger.conn.cursor(name="pacsmig_custody_walk") as cur:
        cur.itersize = 5000
        cur.execute("SELECT seq, study_instance_uid, event, actor, details, created_at, prev_hash, "
                    "entry_hash FROM custody ORDER BY seq")
        for seq, study, event, actor_, details, created_at, prev_hash, entry_hash in cur:
            row = {"seq": int(seq), "prev_hash": prev_hash, "entry_hash": entry_hash}
            report.entries += 1
            recomputed = custody_entry_hash(prev_hash, int(seq), study, event, actor_, details, created_at)
            expected_prev = prev["entry_hash"] if prev else GENESIS_HASH
            if recomputed != entry_hash:
                if fail(seq, "altered", f"entry seq {seq} ({event}) was altered: its content does not "
                        "match its entry_hash"):
                    break
            elif prev_hash != expected_prev:
                if prev is not None and prev_hash == prev["prev_hash"]:
                    stop = fail(prev["seq"], "inserted",
                                f"entry seq {prev['seq']} was inserted: seq {seq} chains past it to "
                                "the entry before it")
                elif prev is not None and prev_hash == prev_prev_hash:
                    stop = fail(prev["seq"], "inserted",
                                f"entries before seq {seq} were inserted (seq {seq} chains to an "
                                "earlier entry)")
                elif prev is None:
                    stop = fail(seq, "removed", f"entries before seq {seq} were removed: the first "
                                "entry does not chain to genesis")
                else:
                    stop = fail(seq, "removed",
                                f"entries between seq {prev['seq']} and seq {seq} were removed (or seq "
                                f"{prev['seq']} was rewritten): seq {seq} chains to a hash no entry has")
                if stop:
                    break
            anchor = by_seq.get(int(seq))
            if anchor is not None:
                seen_anchor.add(int(seq))
                report.anchors_checked += 1
                if anchor.anchor_hash != entry_hash and fail(
                        seq, "anchor_mismatch", f"anchor entry seq {seq} differs from the anchor "
                        "recorded outside the ledger"):
                    break
            prev_prev_hash = prev["prev_hash"] if prev else None
            prev = row
            report.head_seq = int(seq)
            report.head_hash = entry_hash
    if not report.problems or not stop_at_first:
        for anchor in sorted(by_seq.values(), key=lambda a: a.anchor_seq):
            if anchor.anchor_seq not in seen_anchor:
                report.problems.append(ChainProblem(
                    anchor.anchor_seq, "anchor_missing",
                    f"anchor entry seq {anchor.anchor_seq} (recorded {anchor.written_at}, head seq "
                    f"{anchor.head_seq}) is missing from the ledger: entries were removed"))
                if stop_at_first:
                    break
    ledger.conn.rollback()  # end the read transaction the named cursor opened
    return report


def format_report(report: ChainReport) -> str:
    """One line for humans (and the CLI)."""
    if report.ok:
        return (f"custody chain intact: {report.entries} entries, head seq {report.head_seq}, "
                f"{report.anchors_checked} anchor(s) checked")
    first = report.problems[0]
    return f"CUSTODY CHAIN BROKEN at seq {first.seq} [{first.kind}]: {first.message}"


