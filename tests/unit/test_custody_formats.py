"""Custody formats without a database: audit XML against the PS3.15 schema, FHIR shape, RFC 5424 framing."""

from __future__ import annotations

from datetime import UTC, datetime

from pacsmig.custody import syslog
from pacsmig.custody.evidence import bundle_digest, verify_bundle
from pacsmig.custody.export import (
    BEGIN_TRANSFERRING,
    DESTINATION_ROLE,
    SOURCE_ROLE,
    AuditRecord,
    Participant,
    to_dicom_xml,
    to_fhir,
    validate_dicom_xml,
)


def _record(outcome: str = "0", description: str = "") -> AuditRecord:
    return AuditRecord(
        BEGIN_TRANSFERRING,
        "E",
        datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        outcome,
        "1.2.3",
        "ACC1",
        "PID1",
        {"1.2.840.10008.5.1.4.1.1.2": 3},
        (
            Participant("LEGACY", SOURCE_ROLE, False, "10.0.0.1"),
            Participant("VNA", DESTINATION_ROLE, False, "vna.example"),
            Participant("PACSMIG", None, True, "worker1", "airflow:pacs_migrate.extract"),
        ),
        custody_seq=12,
        outcome_description=description,
    )


def test_xml_is_valid_and_stable() -> None:
    text = to_dicom_xml(_record())
    assert validate_dicom_xml(text) == []
    assert to_dicom_xml(_record()) == text
    assert 'csd-code="110102"' in text and 'NetworkAccessPointTypeCode="2"' in text
    failed = to_dicom_xml(_record("4", "study quarantined: malformed_instance"))
    assert validate_dicom_xml(failed) == [] and "<EventOutcomeDescription>" in failed


def test_fhir_ids_are_deterministic_per_custody_entry() -> None:
    a, b = to_fhir(_record()), to_fhir(_record())
    assert a["id"] == b["id"] and a["type"]["code"] == "110102" and a["action"] == "E"
    assert [ag["requestor"] for ag in a["agent"]] == [False, False, True]


def test_rfc5424_and_octet_counting() -> None:
    msg = syslog.format_rfc5424(
        "<AuditMessage/>",
        hostname="host one",
        procid="42",
        timestamp=datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
    )
    assert msg.startswith(
        b"<85>1 2025-01-02T03:04:05.123456+00:00 hostone pacsmig 42 IHE+RFC-3881 - \xef\xbb\xbf"
    )
    framed = syslog.frame(msg) + syslog.frame("é".encode())
    assert syslog.parse_frames(framed) == [msg, "é".encode()]
    assert framed.startswith(str(len(msg)).encode() + b" <85>")


def test_bundle_digest_covers_everything_but_itself() -> None:
    bundle = {"study": {"uid": "1"}, "instances": [{"h": "a"}]}
    bundle["digest"] = bundle_digest(bundle)
    assert verify_bundle(bundle)
    bundle["instances"][0]["h"] = "b"
    assert not verify_bundle(bundle)
