"""Send audit messages to a syslog collector over TCP: RFC 5424 messages, RFC 6587 octet-counting framing."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from datetime import UTC, datetime

from pacsmig.errors import CustodyError

logger = logging.getLogger(__name__)

#: facility 10 (security/authorization) x 8 + severity 5 (notice), as DICOM / IHE ATNA audit uses.
DEFAULT_PRI = 10 * 8 + 5
#: MSGID of DICOM audit messages in the IHE ATNA profile.
AUDIT_MSGID = "IHE+RFC-3881"
_BOM = b"\xef\xbb\xbf"


def format_rfc5424(message: str, app_name: str = "pacsmig", msgid: str = AUDIT_MSGID,
                   hostname: str | None = None, timestamp: datetime | None = None,
                   pri: int = DEFAULT_PRI, procid: str | None = None) -> bytes:
    """One RFC 5424 message: ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID - BOM MSG`` (UTF-8).

    Examples
    --------
    >>> from datetime import datetime, UTC
    >>> format_rfc5424("x", hostname="h", timestamp=datetime(2025, 1, 2, tzinfo=UTC), procid="7")[:48]
    b'<85>1 2025-01-02T00:00:00+00:00 h pacsmig 7 IHE+'
    """
    def field(value: str | None, limit: int) -> str:
        text = "".join(c for c in (value or "") if 33 <= ord(c) <= 126)[:limit]
        return text or "-"

    ts = (timestamp or datetime.now(UTC)).astimezone(UTC).isoformat()
    header = (f"<{pri}>1 {ts} {field(hostname or socket.gethostname(), 255)} {field(app_name, 48)} "
              f"{field(procid or str(os.getpid()), 128)} {field(msgid, 32)} -")
    return header.encode("ascii") + b" " + _BOM + message.encode("utf-8")


def frame(message: bytes) -> bytes:
    """Octet-counting framing (RFC 6587 3.4.1): ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def send(host: str, port: int, messages: Iterable[str], timeout: float = 10.0,
         app_name: str = "pacsmig") -> int:
    """Send every message on one TCP connection; returns how many were sent.

    Raises
    ------
    CustodyError
        The collector could not be reached or closed the connection.
    """
    sent = 0
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for text in messages:
                sock.sendall(frame(format_rfc5424(text, app_name=app_name)))
                sent += 1
    except OSError as exc:
        raise CustodyError(f"syslog collector {host}:{port}: {exc} after {sent} messages") from exc
    logger.info("sent %d audit messages to syslog %s:%s", sent, host, port)
    return sent


def parse_frames(data: bytes) -> list[bytes]:
    """Split an octet-counted stream back into messages (a collector's side; used by tests)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        out.append(data[space + 1:space + 1 + length])
        pos = space + 1 + length
    return out
