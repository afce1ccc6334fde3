"""Parse and validate inbound HL7 v2 ADT messages and build their original-mode ACKs.

Acknowledgment policy (HL7 v2 chapter 2, original mode; see :class:`AckCode`):

- ``AA`` — the event is committed to the ledger (or was already: a resend of the same MSH-10).
- ``AE`` — the message is malformed (unparseable, no MSH-10, no PID-3, an A40 without MRG-1, a
  control ID reused for different content) or the ledger is unavailable. The sender keeps the
  message and may resend it; nothing was stored.
- ``AR`` — the message fails header validation: not ADT, or an ADT event we do not handle
  (only A01/A04/A05/A08/A40 are accepted). Feeds should route only those events to pacsmig.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import hl7
import hl7.exceptions

from pacsmig.config import mpi_issuer
from pacsmig.errors import PacsmigError

#: Admission-like events that trigger a prefetch of the patient's priors.
ADMISSION_EVENTS: tuple[str, ...] = ("A01", "A04", "A05")
#: Events stored for reconciliation (update, merge) but not triggering a prefetch.
UPDATE_EVENTS: tuple[str, ...] = ("A08", "A40")
SUPPORTED_EVENTS: frozenset[str] = frozenset(ADMISSION_EVENTS + UPDATE_EVENTS)

#: The application / facility pacsmig answers as when the inbound MSH-5/6 are empty.
OUR_APPLICATION = "PACSMIG"
DEFAULT_VERSION = "2.5.1"
DEFAULT_SEPARATORS = "|^~\\&"


class AckCode(enum.StrEnum):
    """MSA-1 acknowledgment codes (HL7 table 0008, original mode)."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class ErrorCode(enum.IntEnum):
    """ERR-3 / ERR-1.4 condition codes (HL7 table 0357)."""

    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_INTERNAL_ERROR = 207


_ERROR_TEXT = {
    ErrorCode.SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE_ERROR: "Data type error",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ErrorCode.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    ErrorCode.APPLICATION_INTERNAL_ERROR: "Application internal error",
}


class AdtError(PacsmigError):
    """An ADT message could not be accepted; carries what its ACK must say.

    The text never contains patient data: it names fields, not their values.
    """

    def __init__(self, text: str, *, code: ErrorCode, ack: AckCode = AckCode.ERROR,
                 location: str = "", header: Header | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.ack = ack
        self.location = location
        self.header = header


@dataclass(frozen=True)
class Header:
    """The MSH fields an ACK and the ledger need, as raw (still escaped) field text."""

    separators: str = DEFAULT_SEPARATORS
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_datetime: str = ""
    message_type: str = ""
    event_type: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = DEFAULT_VERSION


@dataclass(frozen=True)
class Identifier:
    """One CX repetition of PID-3 / MRG-1: the ID and its assigning authority (CX.4 as HD)."""

    id: str
    authority: str = ""
    authority_universal_id: str = ""
    type_code: str = ""

    def assigned_by(self, issuer: str) -> bool:
        """Whether the assigning authority (namespace or universal ID) is ``issuer``."""
        return bool(issuer) and issuer in (self.authority, self.authority_universal_id)


@dataclass(frozen=True)
class AdtEvent:
    """A validated ADT event, ready to store."""

    header: Header
    event_type: str
    mpi_patient_id: str
    #: Whether ``mpi_patient_id`` carried the MPI assigning authority (else: first PID-3 ID).
    mpi_matched: bool
    identifiers: tuple[Identifier, ...]
    raw_message: str
    #: A40: the prior (merged-away) ID of the first PID/MRG group.
    prior_patient_id: str | None = None
    #: A40: every (surviving, prior) pair, one per PID/MRG group.
    merges: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def control_id(self) -> str:
        return self.header.control_id

    def details(self) -> dict[str, Any]:
        """What goes into ``adt_events.details`` (JSON)."""
        body: dict[str, Any] = {
            "sending_application": self.header.sending_application,
            "sending_facility": self.header.sending_facility,
            "message_datetime": self.header.message_datetime,
            "message_type": self.header.message_type,
            "processing_id": self.header.processing_id,
            "version": self.header.version,
            "mpi_matched": self.mpi_matched,
            "identifiers": [
                {"id": i.id, "authority": i.authority, "universal_id": i.authority_universal_id,
                 "type_code": i.type_code} for i in self.identifiers],
            "fingerprint": fingerprint(self.raw_message),
        }
        if self.merges:
            body["merges"] = [{"patient_id": s, "prior_patient_id": p} for s, p in self.merges]
        return body


# --- parsing -------------------------------------------------------------------------------------
def normalise(text: str) -> str:
    """Segments separated by ``\\r`` only (senders often use ``\\n`` or ``\\r\\n``), no padding."""
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x00 \t")
    return "\r".join(s for s in text.split("\r") if s.strip())


def fingerprint(text: str) -> str:
    """A content hash that ignores MSH-7, so a resend re-stamped by the sender still matches."""
    segments = normalise(text).split("\r")
    if segments and segments[0].startswith("MSH") and len(segments[0]) > 3:
        sep = segments[0][3]
        fields = segments[0].split(sep)
        if len(fields) > 6:
            fields[6] = ""  # MSH-7; split index is HL7 number - 1 because MSH-1 is the separator
        segments[0] = sep.join(fields)
    return hashlib.sha256("\r".join(segments).encode()).hexdigest()


def _field(segment: hl7.Segment, number: int) -> str:
    """Raw text of field ``number`` (HL7 numbering), or '' if the segment is shorter."""
    try:
        return str(segment(number))
    except IndexError:
        return ""


def _segments(message: hl7.Message, segment_id: str) -> list[hl7.Segment]:
    return [s for s in message if str(s[0]) == segment_id]


def parse_header(text: str) -> Header:
    """The MSH of ``text`` without parsing the rest (used to answer even unparseable messages).

    Raises
    ------
    AdtError
        If the text does not start with an MSH segment.
    """
    first = normalise(text).split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        raise AdtError("message does not start with an MSH segment", code=ErrorCode.SEGMENT_SEQUENCE_ERROR,
                       location="MSH")
    sep = first[3]
    fields = [""] + first.split(sep)  # fields[n] is MSH-n: MSH-1 is the separator itself
    fields[1] = sep
    encoding = fields[2] if len(fields) > 2 else ""
    if len(encoding) < 4:
        encoding = (encoding + DEFAULT_SEPARATORS[len(encoding) + 1:])[:4]
    fields += [""] * (13 - len(fields))
    components = fields[9].split(encoding[0])
    return Header(
        separators=sep + encoding[:4],
        sending_application=fields[3], sending_facility=fields[4],
        receiving_application=fields[5], receiving_facility=fields[6],
        message_datetime=fields[7], message_type=components[0].strip(),
        event_type=(components[1].strip() if len(components) > 1 else ""),
        control_id=fields[10].strip(), processing_id=fields[11] or "P",
        version=fields[12].split(encoding[0])[0].strip() or DEFAULT_VERSION,
    )


def _identifiers(message: hl7.Message, text: str) -> list[Identifier]:
    """The CX repetitions of one field's raw text, unescaped, empty ones dropped."""
    sep = message.separators
    out: list[Identifier] = []
    for rep in text.split(sep[2]):  # separators = "\r|~^&": [2] repetition, [3] component
        comps = rep.split(sep[3])
        ident = message.unescape(comps[0]).strip()
        if not ident:
            continue
        authority = comps[3].split(sep[4]) if len(comps) > 3 else [""]
        out.append(Identifier(
            id=ident,
            authority=message.unescape(authority[0]).strip(),
            authority_universal_id=message.unescape(authority[1]).strip() if len(authority) > 1 else "",
            type_code=message.unescape(comps[4]).strip() if len(comps) > 4 else ""))
    return out


def pick_mpi(identifiers: list[Identifier], issuer: str | None = None) -> tuple[Identifier, bool]:
    """The identifier assigned by the MPI (``issuer``, default :func:`pacsmig.config.mpi_issuer`).

    Falls back to the first identifier; the flag says whether the MPI one was found.
    """
    issuer = mpi_issuer() if issuer is None else issuer
    for ident in identifiers:
        if ident.assigned_by(issuer):
            return ident, True
    return identifiers[0], False


def parse_adt(text: str, *, issuer: str | None = None) -> AdtEvent:
    """Validate an inbound ADT message and extract the event to store.

    Parameters
    ----------
    text
        The message as received (MLLP framing removed).
    issuer
        The MPI assigning authority; default :func:`pacsmig.config.mpi_issuer`.

    Raises
    ------
    AdtError
        With the ACK code and HL7 error code the answer must carry.

    Examples
    --------
    >>> msg = ("MSH|^~\\\\&|ADT|HOSP|PACSMIG|RAD|20240101120000||ADT^A01|C1|P|2.5.1\\r"
    ...        "PID|1||L1^^^LOCAL~M1^^^HOSPITAL_MPI")
    >>> parse_adt(msg, issuer="HOSPITAL_MPI").mpi_patient_id
    'M1'
    """
    header = parse_header(text)
    if not header.control_id:
        raise AdtError("MSH-10 (message control ID) is missing", code=ErrorCode.REQUIRED_FIELD_MISSING,
                       location="MSH^1^10", header=header)
    if header.message_type != "ADT":
        raise AdtError(f"message type {header.message_type or '(empty)'} is not accepted, only ADT",
                       code=ErrorCode.UNSUPPORTED_MESSAGE_TYPE, ack=AckCode.REJECT, location="MSH^1^9",
                       header=header)
    try:
        message = hl7.parse(normalise(text))
    except (hl7.exceptions.ParseException, ValueError, IndexError) as exc:
        raise AdtError(f"message cannot be parsed ({type(exc).__name__})", code=ErrorCode.DATA_TYPE_ERROR,
                       header=header) from exc
    event_type = header.event_type
    if not event_type:
        # Before v2.3 the trigger event lived only in EVN-1.
        evn = _segments(message, "EVN")
        event_type = _field(evn[0], 1).strip() if evn else ""
    if event_type not in SUPPORTED_EVENTS:
        raise AdtError(f"ADT event {event_type or '(empty)'} is not accepted, only "
                       f"{'/'.join(sorted(SUPPORTED_EVENTS))}", code=ErrorCode.UNSUPPORTED_EVENT_CODE,
                       ack=AckCode.REJECT, location="MSH^1^9^1^2", header=header)
    pids = _segments(message, "PID")
    if not pids:
        raise AdtError("PID segment is missing", code=ErrorCode.SEGMENT_SEQUENCE_ERROR, location="PID",
                       header=header)
    identifiers = _identifiers(message, _field(pids[0], 3))
    if not identifiers:
        raise AdtError("PID-3 (patient identifier list) is missing", code=ErrorCode.REQUIRED_FIELD_MISSING,
                       location="PID^1^3", header=header)
    mpi, matched = pick_mpi(identifiers, issuer)
    merges: list[tuple[str, str]] = []
    if event_type == "A40":
        mrgs = _segments(message, "MRG")
        if not mrgs:
            raise AdtError("A40 without an MRG segment", code=ErrorCode.SEGMENT_SEQUENCE_ERROR,
                           location="MRG", header=header)
        # A40 repeats PID/MRG pairs, one per merged patient; pair them in order.
        for n, mrg in enumerate(mrgs):
            prior = _identifiers(message, _field(mrg, 1))
            if not prior:
                raise AdtError("MRG-1 (prior patient identifier list) is missing",
                               code=ErrorCode.REQUIRED_FIELD_MISSING, location=f"MRG^{n + 1}^1",
                               header=header)
            surviving = _identifiers(message, _field(pids[n], 3)) if n < len(pids) else []
            if not surviving:
                raise AdtError(f"PID {n + 1} (surviving patient of MRG {n + 1}) has no PID-3",
                               code=ErrorCode.REQUIRED_FIELD_MISSING, location=f"PID^{n + 1}^3",
                               header=header)
            merges.append((pick_mpi(surviving, issuer)[0].id, pick_mpi(prior, issuer)[0].id))
    return AdtEvent(header=header, event_type=event_type, mpi_patient_id=mpi.id, mpi_matched=matched,
                    identifiers=tuple(identifiers), raw_message=text,
                    prior_patient_id=merges[0][1] if merges else None, merges=tuple(merges))


# --- acknowledgments -----------------------------------------------------------------------------
def _escape(text: str, separators: str) -> str:
    """HL7-escape free text for an ACK field (separators as in MSH-1/2: ``|^~\\&``)."""
    fs, cs, rs, esc, ss = (separators + DEFAULT_SEPARATORS[len(separators):])[:5]
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in ((fs, "F"), (cs, "S"), (rs, "R"), (ss, "T")):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts) or (2, 5)


def new_control_id() -> str:
    """A fresh MSH-10 (20 characters: the ST length limit of v2.5)."""
    return uuid.uuid4().hex[:20]


def build_ack(header: Header | None, code: AckCode, *, text: str = "",
              error: ErrorCode | None = None, location: str = "",
              timestamp: datetime | None = None, control_id: str | None = None) -> str:
    """An original-mode ACK for ``header`` (or a generic one when the MSH was unreadable).

    MSH-3/4 and MSH-5/6 are swapped from the inbound message, MSH-9 is ``ACK^<event>``, MSH-11/12
    are copied; MSA-2 echoes MSH-10. For AE/AR, MSA-3 and an ERR segment carry the reason (ERR-2/3
    from v2.5 on, ERR-1 before).
    """
    header = header or Header(receiving_application=OUR_APPLICATION)
    seps = header.separators if len(header.separators) >= 5 else DEFAULT_SEPARATORS
    fs, cs = seps[0], seps[1]
    stamp = (timestamp or datetime.now(UTC)).strftime("%Y%m%d%H%M%S+0000")
    msh = fs.join([
        "MSH", seps[1:], header.receiving_application or OUR_APPLICATION, header.receiving_facility,
        header.sending_application, header.sending_facility, stamp, "",
        f"ACK{cs}{header.event_type}" if header.event_type else "ACK",
        control_id or new_control_id(), header.processing_id or "P", header.version or DEFAULT_VERSION,
    ])
    msa = ["MSA", str(code), header.control_id]
    segments = [msh]
    if code != AckCode.ACCEPT:
        error = error or ErrorCode.APPLICATION_INTERNAL_ERROR
        text = text or _ERROR_TEXT[error]
        msa.append(_escape(text[:80], seps))  # MSA-3 is ST(80); the full text goes to ERR
        segments.append(fs.join(msa))
        loc = location.split("^") if location else []
        if _version_tuple(header.version) >= (2, 5):
            segments.append(fs.join([
                "ERR", "", cs.join(loc), f"{int(error)}{cs}{_ERROR_TEXT[error]}{cs}HL70357", "E",
                "", "", "", _escape(text, seps)]))
        else:
            sub = seps[4]
            eld = (loc + ["", "", ""])[:3] + [f"{int(error)}{sub}{_escape(text, seps)}{sub}HL70357"]
            segments.append(fs.join(["ERR", cs.join(eld)]))
    else:
        segments.append(fs.join(msa))
    return "\r".join(segments) + "\r"


def ack_for_error(exc: AdtError) -> str:
    """The ACK answering a message that raised ``exc``."""
    return build_ack(exc.header, exc.ack, text=exc.text, error=exc.code, location=exc.location)
