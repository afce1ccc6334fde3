"""ADT parsing, MPI identifier choice and original-mode ACKs, without network or database."""

from datetime import UTC, datetime

import hl7
import pytest

from pacsmig.adt.messages import (
    AckCode,
    AdtError,
    ErrorCode,
    ack_for_error,
    build_ack,
    fingerprint,
    parse_adt,
    parse_header,
)
from pacsmig.adt.send import build_adt, parse_ack

MPI = "HOSPITAL_MPI"
TS = datetime(2024, 3, 1, 8, 30, tzinfo=UTC)


def _error(text: str) -> AdtError:
    with pytest.raises(AdtError) as info:
        parse_adt(text, issuer=MPI)
    return info.value


@pytest.mark.parametrize("event", ["A01", "A04", "A05", "A08"])
def test_supported_events_parse(event: str) -> None:
    msg = build_adt(event, "M100", f"C-{event}", issuer=MPI, timestamp=TS, patient_name="DOE^JANE")
    parsed = parse_adt(msg, issuer=MPI)
    assert (parsed.event_type, parsed.mpi_patient_id, parsed.control_id) == (event, "M100", f"C-{event}")
    assert parsed.mpi_matched and parsed.prior_patient_id is None
    assert parsed.raw_message == msg


def test_mpi_identifier_is_picked_among_repetitions() -> None:
    msg = build_adt("A01", "M7", "C1", issuer=MPI, local_ids=[("L1", "SITE_A"), ("L2", "SITE_B")])
    parsed = parse_adt(msg, issuer=MPI)
    assert parsed.mpi_patient_id == "M7" and parsed.mpi_matched
    assert [i.id for i in parsed.identifiers] == ["L1", "L2", "M7"]
    assert [i.authority for i in parsed.identifiers] == ["SITE_A", "SITE_B", MPI]


def test_mpi_matched_by_universal_id_and_first_id_fallback() -> None:
    base = "MSH|^~\\&|ADT|H|PACSMIG|R|20240101||ADT^A01|C9|P|2.5.1\rPID|1||{}\r"
    by_universal = parse_adt(base.format("L1^^^SITE~M1^^^X&2.16.840.1.1&ISO"), issuer="2.16.840.1.1")
    assert (by_universal.mpi_patient_id, by_universal.mpi_matched) == ("M1", True)
    fallback = parse_adt(base.format("L1^^^SITE~L2^^^OTHER"), issuer=MPI)
    assert (fallback.mpi_patient_id, fallback.mpi_matched) == ("L1", False)


def test_escaped_identifier_is_unescaped() -> None:
    msg = "MSH|^~\\&|ADT|H|PACSMIG|R|20240101||ADT^A01|C9|P|2.5.1\rPID|1||AB\\T\\1^^^HOSPITAL_MPI\r"
    assert parse_adt(msg, issuer=MPI).mpi_patient_id == "AB&1"


def test_a40_keeps_every_merge_pair() -> None:
    msg = build_adt("A40", "M2", "C40", prior_patient_id="M1", issuer=MPI, timestamp=TS)
    parsed = parse_adt(msg, issuer=MPI)
    assert (parsed.mpi_patient_id, parsed.prior_patient_id) == ("M2", "M1")
    two = msg + "PID|2||M4^^^HOSPITAL_MPI\rMRG|M3^^^HOSPITAL_MPI\r"
    assert parse_adt(two, issuer=MPI).merges == (("M2", "M1"), ("M4", "M3"))
    assert parse_adt(two, issuer=MPI).details()["merges"][1] == {"patient_id": "M4", "prior_patient_id": "M3"}


def test_a40_without_mrg_is_an_error() -> None:
    msg = build_adt("A40", "M2", "C40", prior_patient_id="M1", issuer=MPI)
    exc = _error(msg.replace("MRG|M1^^^HOSPITAL_MPI^MR\r", ""))
    assert (exc.ack, exc.code, exc.location) == (AckCode.ERROR, ErrorCode.SEGMENT_SEQUENCE_ERROR, "MRG")
    exc = _error(msg.replace("MRG|M1^^^HOSPITAL_MPI^MR", "MRG|"))
    assert (exc.code, exc.location) == (ErrorCode.REQUIRED_FIELD_MISSING, "MRG^1^1")


def test_newline_separated_segments_are_accepted() -> None:
    msg = build_adt("A04", "M5", "C5", issuer=MPI).replace("\r", "\r\n")
    assert parse_adt(msg, issuer=MPI).mpi_patient_id == "M5"


def test_event_from_evn_when_msh9_has_no_trigger() -> None:
    msg = "MSH|^~\\&|ADT|H|PACSMIG|R|20240101||ADT|C3|P|2.2\rEVN|A05|20240101\rPID|1||M3^^^HOSPITAL_MPI\r"
    assert parse_adt(msg, issuer=MPI).event_type == "A05"


@pytest.mark.parametrize(("text", "ack", "code"), [
    ("not hl7 at all", AckCode.ERROR, ErrorCode.SEGMENT_SEQUENCE_ERROR),
    ("", AckCode.ERROR, ErrorCode.SEGMENT_SEQUENCE_ERROR),
    ("MSH|^~\\&|ADT|H|PACSMIG|R|20240101||ADT^A01||P|2.5.1\rPID|1||M1^^^HOSPITAL_MPI\r",
     AckCode.ERROR, ErrorCode.REQUIRED_FIELD_MISSING),
    ("MSH|^~\\&|ADT|H|PACSMIG|R|20240101||ADT^A01|C1|P|2.5.1\rPID|1||\r",
     AckCode.ERROR, ErrorCode.REQUIRED_FIELD_MISSING),
    ("MSH|^~\\&|ADT|H|PACSMIG|R|20240101||ADT^A01|C1|P|2.5.1\rPV1|1|I\r",
     AckCode.ERROR, ErrorCode.SEGMENT_SEQUENCE_ERROR),
    ("MSH|^~\\&|LAB|H|PACSMIG|R|20240101||ORU^R01|C1|P|2.5.1\rPID|1||M1\r",
     AckCode.REJECT, ErrorCode.UNSUPPORTED_MESSAGE_TYPE),
    ("MSH|^~\\&|ADT|H|PACSMIG|R|20240101||ADT^A03|C1|P|2.5.1\rPID|1||M1\r",
     AckCode.REJECT, ErrorCode.UNSUPPORTED_EVENT_CODE),
])
def test_bad_messages_name_their_reason(text: str, ack: AckCode, code: ErrorCode) -> None:
    exc = _error(text)
    assert (exc.ack, exc.code) == (ack, code)
    answer = parse_ack(ack_for_error(exc))
    assert answer.code == ack.value
    assert answer.text  # MSA-3 says why


def test_error_text_never_carries_patient_data() -> None:
    exc = _error("MSH|^~\\&|ADT|H|PACSMIG|R|20240101||ADT^A01|C1|P|2.5.1\rPID|1||^^^X||SECRET^NAME\r")
    assert "SECRET" not in ack_for_error(exc) and "SECRET" not in str(exc)


def test_ack_swaps_sender_and_receiver_and_keeps_version() -> None:
    msg = build_adt("A01", "M1", "CTRL-1", issuer=MPI, sending_application="EPIC",
                    sending_facility="MAIN", receiving_application="PACSMIG", receiving_facility="RAD",
                    version="2.4")
    ack = build_ack(parse_header(msg), AckCode.ACCEPT, timestamp=TS)
    parsed = hl7.parse(ack)
    msh = parsed.segment("MSH")
    assert [str(msh(n)) for n in (3, 4, 5, 6)] == ["PACSMIG", "RAD", "EPIC", "MAIN"]
    assert str(msh(9)) == "ACK^A01"
    assert str(msh(12)) == "2.4"
    assert str(msh(10)) and str(msh(10)) != "CTRL-1"
    assert str(parsed.segment("MSA")(1)) == "AA" and str(parsed.segment("MSA")(2)) == "CTRL-1"
    assert not [s for s in parsed if str(s[0]) == "ERR"]


def test_error_ack_err_segment_by_version() -> None:
    v25 = build_adt("A01", "M1", "C1", issuer=MPI)
    exc = _error(v25.replace("M1^^^HOSPITAL_MPI^MR", ""))
    err = hl7.parse(ack_for_error(exc)).segment("ERR")
    assert str(err(2)) == "PID^1^3"
    assert str(err(3)).startswith("101^")
    assert str(err(4)) == "E"
    old = _error(v25.replace("M1^^^HOSPITAL_MPI^MR", "").replace("|2.5.1", "|2.3"))
    err = hl7.parse(ack_for_error(old)).segment("ERR")
    assert str(err(1)).startswith("PID^1^3^101&")


def test_ack_escapes_separators_in_text() -> None:
    ack = build_ack(None, AckCode.ERROR, text="bad | field ^ here", error=ErrorCode.DATA_TYPE_ERROR)
    msa = hl7.parse(ack).segment("MSA")
    assert len(msa) == 4  # the text did not create extra fields
    assert str(msa(3)) == "bad \\F\\ field \\S\\ here"


def test_fingerprint_ignores_only_the_timestamp() -> None:
    a = build_adt("A01", "M1", "C1", issuer=MPI, timestamp=TS)
    b = a.replace("|20240301083000||ADT", "|20250101000000||ADT")  # the sender re-stamped MSH-7
    assert b != a
    c = build_adt("A01", "M2", "C1", issuer=MPI, timestamp=TS)
    assert fingerprint(a) == fingerprint(b) == fingerprint(a.replace("\r", "\n"))
    assert fingerprint(a) != fingerprint(c)


def test_build_adt_is_valid_hl7() -> None:
    msg = build_adt("A05", "M1", "C1", issuer=MPI, timestamp=TS, birth_date="19700101", sex="F")
    parsed = hl7.parse(msg)
    assert str(parsed.segment("MSH")(9)) == "ADT^A05^ADT_A05"
    assert str(parsed.segment("PID")(7)) == "19700101"
    assert str(parsed.segment("PV1")(2)) == "P"
    with pytest.raises(ValueError, match="prior_patient_id"):
        build_adt("A40", "M1", "C1")
