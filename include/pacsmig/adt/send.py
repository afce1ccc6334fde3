"""Build ADT messages and send them over MLLP (tests, ``make demo``, and manual feeds)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pacsmig.adt.messages import DEFAULT_VERSION, AdtError, ErrorCode
from pacsmig.config import mpi_issuer

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"

# Message structure (MSH-9.3) and patient class (PV1-2) per event.
_STRUCTURE = {"A01": "ADT_A01", "A04": "ADT_A01", "A05": "ADT_A05", "A08": "ADT_A01", "A40": "ADT_A39"}
_PATIENT_CLASS = {"A01": "I", "A04": "O", "A05": "P", "A08": "I"}


def build_adt(event: str, mpi_patient_id: str, control_id: str, *,
              prior_patient_id: str | None = None,
              local_ids: Sequence[tuple[str, str]] = (),
              issuer: str | None = None,
              patient_name: str = "",
              birth_date: str = "",
              sex: str = "",
              sending_application: str = "ADT",
              sending_facility: str = "HOSPITAL",
              receiving_application: str = "PACSMIG",
              receiving_facility: str = "RADIOLOGY",
              timestamp: datetime | None = None,
              version: str = DEFAULT_VERSION,
              message_type: str = "ADT") -> str:
    """An HL7 v2 ADT message (segments joined by ``\\r``).

    Parameters
    ----------
    event
        Trigger event: ``A01`` admit, ``A04`` register, ``A05`` pre-admit, ``A08`` update,
        ``A40`` merge (then ``prior_patient_id`` goes to MRG-1).
    mpi_patient_id
        PID-3, assigned by ``issuer`` (default :func:`pacsmig.config.mpi_issuer`).
    local_ids
        Further PID-3 repetitions as ``(patient_id, assigning_authority)`` pairs (listed first, so
        receivers must pick the MPI one by authority, not by position).

    Examples
    --------
    >>> msg = build_adt("A01", "MPI123", "CTRL1", timestamp=datetime(2024, 1, 1, tzinfo=UTC))
    >>> msg.split("\\r")[0]
    'MSH|^~\\\\&|ADT|HOSPITAL|PACSMIG|RADIOLOGY|20240101000000||ADT^A01^ADT_A01|CTRL1|P|2.5.1'
    """
    if event == "A40" and not prior_patient_id:
        raise ValueError("an A40 (merge) needs prior_patient_id")
    issuer = mpi_issuer() if issuer is None else issuer
    stamp = (timestamp or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    ids = [f"{pid}^^^{authority}^MR" for pid, authority in local_ids]
    ids.append(f"{mpi_patient_id}^^^{issuer}^MR")
    structure = _STRUCTURE.get(event, f"ADT_{event}")
    segments = [
        f"MSH|^~\\&|{sending_application}|{sending_facility}|{receiving_application}|{receiving_facility}|"
        f"{stamp}||{message_type}^{event}^{structure}|{control_id}|P|{version}",
        f"EVN|{event}|{stamp}",
        f"PID|1||{'~'.join(ids)}||{patient_name}||{birth_date}|{sex}",
    ]
    if event == "A40":
        segments.append(f"MRG|{prior_patient_id}^^^{issuer}^MR")
    else:
        segments.append(f"PV1|1|{_PATIENT_CLASS.get(event, 'U')}")
    return "\r".join(segments) + "\r"


def frame(message: str, encoding: str = "utf-8") -> bytes:
    """MLLP-wrap a message: ``<VT> message <FS><CR>``."""
    return START_BLOCK + message.encode(encoding) + END_BLOCK


def send_adt(host: str, port: int, message: str, *, timeout: float = 30.0) -> str:
    """Send one message over MLLP and return the ACK text (framing removed).

    Raises
    ------
    AdtError
        If the connection closes or times out before a complete ACK arrives.
    """
    with MllpConnection(host, port, timeout=timeout) as conn:
        return conn.send(message)


class MllpConnection:
    """One MLLP connection for several messages in a row (original mode: one ACK each).

    Examples
    --------
    >>> with MllpConnection("127.0.0.1", 2575) as conn:  # doctest: +SKIP
    ...     ack = conn.send(build_adt("A01", "MPI1", "C1"))
    """

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Bytes after the end of one ACK belong to the next (a pipelining sender reads several).
        self._buffer = b""

    def send(self, message: str) -> str:
        """Send one message and wait for its ACK."""
        self.sock.sendall(frame(message))
        return self.read_ack()

    def read_ack(self) -> str:
        """The next ACK on this connection (framing removed)."""
        try:
            while END_BLOCK not in self._buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise AdtError("connection closed before the ACK was complete",
                                   code=ErrorCode.APPLICATION_INTERNAL_ERROR)
                self._buffer += chunk
        except TimeoutError as exc:
            raise AdtError("no ACK within the timeout", code=ErrorCode.APPLICATION_INTERNAL_ERROR) from exc
        block, self._buffer = self._buffer.split(END_BLOCK, 1)
        start = block.find(START_BLOCK)
        return block[start + 1:].decode("utf-8", errors="replace")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MllpConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Ack:
    """The parts of an ACK a sender acts on."""

    code: str
    control_id: str
    text: str
    message_type: str


def parse_ack(ack: str) -> Ack:
    """MSA-1, MSA-2, MSA-3 and MSH-9 of an ACK.

    Examples
    --------
    >>> parse_ack("MSH|^~\\\\&|A|B|C|D|20240101||ACK^A01|X|P|2.5.1\\rMSA|AA|C1\\r").code
    'AA'
    """
    segments = [s for s in ack.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH"):
        raise AdtError("not an ACK: no MSH", code=ErrorCode.SEGMENT_SEQUENCE_ERROR)
    sep = segments[0][3]
    msh = segments[0].split(sep)
    msa = next((s.split(sep) for s in segments if s.startswith("MSA")), None)
    if msa is None:
        raise AdtError("not an ACK: no MSA", code=ErrorCode.SEGMENT_SEQUENCE_ERROR)
    msa += [""] * (4 - len(msa))
    return Ack(code=msa[1], control_id=msa[2], text=msa[3], message_type=msh[8] if len(msh) > 8 else "")
