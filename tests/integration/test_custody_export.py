"""Custody exports: DICOM audit XML valid against the PS3.15 schema, FHIR AuditEvent, syslog, evidence."""

from __future__ import annotations

import json
import socket
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from validate_arrange import make_archive, record_migrated

from pacsmig.config import ConnectionSpec, DicomNode
from pacsmig.custody import syslog
from pacsmig.custody.cli import main as custody_main
from pacsmig.custody.evidence import build_bundle, verify_bundle, write_bundle
from pacsmig.custody.export import export_studies, study_records, to_dicom_xml, to_fhir, validate_dicom_xml
from pacsmig.ledger import Ledger

pytestmark = pytest.mark.integration

SOURCE = DicomNode(host="10.1.2.3", port=104, ae_title="LEGACY", calling_ae_title="PACSMIG")
TARGET = ConnectionSpec(
    "target_archive", "http", "vna.example", 8042, schema="http", extra={"dicomweb_path": "/dicom-web"}
)


@pytest.fixture
def migrated(ledger_dsn: str, tmp_path: Path):  # noqa: ANN201
    archive = make_archive(tmp_path / "archive")
    mr = archive.instances["mr"][0]
    record_migrated(
        ledger_dsn,
        archive,
        changes={
            mr.sop: [
                {
                    "tag": "(0010,0020)",
                    "keyword": "PatientID",
                    "action": "replace",
                    "old": "PAT2",
                    "new": "MPI-2",
                    "rule_id": "mpi",
                    "reason": "MPI crosswalk",
                }
            ]
        },
    )
    return archive


def test_audit_messages_follow_the_standard(migrated, ledger_dsn: str) -> None:
    ct = migrated.studies["ct"]["uid"]
    with Ledger(ledger_dsn) as ledger:
        records = study_records(ledger, ct, SOURCE, TARGET)
    assert [r.event[0] for r in records] == ["110102", "110104"]
    for record in records:
        text = to_dicom_xml(record)
        assert validate_dicom_xml(text) == []
        root = ET.fromstring(text.split("\n", 1)[1])
        assert root.find("EventIdentification/EventID").get("codeSystemName") == "DCM"
        roles = {
            ap.find("RoleIDCode").get("csd-code"): ap.get("UserID")
            for ap in root.findall("ActiveParticipant")
            if ap.find("RoleIDCode") is not None
        }
        assert roles == {"110153": "LEGACY", "110152": "http://vna.example:8042/dicom-web"}
        requestor = [ap for ap in root.findall("ActiveParticipant") if ap.get("UserIsRequestor") == "true"]
        assert [ap.get("UserID") for ap in requestor] == ["PACSMIG"]
        objects = {
            po.find("ParticipantObjectIDTypeCode").get("csd-code"): po
            for po in root.findall("ParticipantObjectIdentification")
        }
        assert objects["110180"].get("ParticipantObjectID") == ct
        assert (
            objects["110180"].get("ParticipantObjectTypeCode"),
            objects["110180"].get("ParticipantObjectTypeCodeRole"),
        ) == ("2", "3")
        sop = objects["110180"].find("ParticipantObjectDescription/SOPClass")
        assert (sop.get("UID"), sop.get("NumberOfInstances")) == ("1.2.840.10008.5.1.4.1.1.2", "3")
        assert objects["2"].get("ParticipantObjectID") == "PAT1"
        assert objects["2"].find("ParticipantObjectName") is None  # no patient names in exports
    actions = [r.action for r in records]
    assert actions == ["E", "C"]


def test_schema_rejects_a_malformed_message(migrated, ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        record = study_records(ledger, migrated.studies["ct"]["uid"], SOURCE, TARGET)[1]
    text = to_dicom_xml(record)
    broken = text.replace('EventOutcomeIndicator="0"', 'EventOutcomeIndicator="3"')
    assert validate_dicom_xml(broken)
    reordered = text.replace("<AuditSourceIdentification", "<X").replace(
        "</AuditSourceIdentification>", "</X>"
    )
    assert validate_dicom_xml(reordered)


def test_fhir_auditevent_r4_shape(migrated, ledger_dsn: str) -> None:
    with Ledger(ledger_dsn) as ledger:
        records = study_records(ledger, migrated.studies["us"]["uid"], SOURCE, TARGET)
    event = to_fhir(records[1])
    assert event["resourceType"] == "AuditEvent"
    assert event["type"] == {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "110104",
        "display": "DICOM Instances Transferred",
    }
    assert event["action"] == "C" and event["outcome"] == "0" and event["recorded"].endswith("+00:00")
    assert all(isinstance(a["requestor"], bool) for a in event["agent"])
    assert {a["type"]["coding"][0]["code"] for a in event["agent"] if "type" in a} == {"110152", "110153"}
    assert event["source"]["observer"]["display"] == "PACSMIG"
    entity_types = sorted(e["type"]["code"] for e in event["entity"])
    assert entity_types == ["1", "2"]
    assert to_fhir(records[1]) == event  # deterministic


def test_export_files_and_cli(migrated, ledger_dsn: str, tmp_path: Path) -> None:
    uids = sorted(s["uid"] for s in migrated.studies.values())
    with Ledger(ledger_dsn) as ledger:
        result = export_studies(ledger, uids, tmp_path / "audit", SOURCE, TARGET)
    assert result["messages"] == 2 * len(uids)
    lines = Path(result["ndjson"]).read_text().splitlines()
    assert len(lines) == 2 * len(uids) and all(json.loads(x)["resourceType"] == "AuditEvent" for x in lines)
    first = Path(result["xml"][0]).read_text()
    with Ledger(ledger_dsn) as ledger:
        again = export_studies(ledger, uids, tmp_path / "audit2", SOURCE, TARGET)
    assert Path(again["xml"][0]).read_text() == first
    assert (
        custody_main(["--dsn", ledger_dsn, "export", "--study", uids[0], "--out", str(tmp_path / "cli")]) == 0
    )
    assert len(list((tmp_path / "cli").glob("*.xml"))) == 2


def test_syslog_over_tcp_with_octet_counting(migrated, ledger_dsn: str, tmp_path: Path) -> None:
    with Ledger(ledger_dsn) as ledger:
        texts = export_studies(ledger, [migrated.studies["mr"]["uid"]], tmp_path / "a", SOURCE, TARGET)[
            "texts"
        ]
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = bytearray()

    def collect() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.extend(chunk)

    thread = threading.Thread(target=collect)
    thread.start()
    assert syslog.send("127.0.0.1", port, texts) == 2
    thread.join(timeout=10)
    server.close()
    frames = syslog.parse_frames(bytes(received))
    assert len(frames) == 2
    for frame, text in zip(frames, texts, strict=True):
        header, _, body = frame.partition(b" \xef\xbb\xbf")
        pri_version, ts, host, app, procid, msgid, sd = header.decode().split(" ")
        assert pri_version == "<85>1" and app == "pacsmig" and msgid == "IHE+RFC-3881" and sd == "-"
        assert "T" in ts and host
        assert body.decode() == text


def test_syslog_unreachable_collector_is_an_error() -> None:
    from pacsmig.errors import CustodyError

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(CustodyError, match="syslog collector"):
        syslog.send("127.0.0.1", port, ["x"], timeout=2)


def test_evidence_bundle_digest(migrated, ledger_dsn: str, tmp_path: Path) -> None:
    mr = migrated.studies["mr"]["uid"]
    with Ledger(ledger_dsn) as ledger:
        bundle = build_bundle(ledger, mr)
        path = write_bundle(ledger, mr, tmp_path)
    assert verify_bundle(bundle) and verify_bundle(path)
    assert len(bundle["instances"]) == len(migrated.instances["mr"])
    assert all(i["source_pixel_hash"] for i in bundle["instances"])
    assert bundle["applied_changes"][0]["changes"][0]["keyword"] == "PatientID"
    assert len(bundle["target_acknowledgements"]) == len(migrated.instances["mr"])
    assert [e["event"] for e in bundle["custody"]][-1] == "state:loaded"
    tampered = json.loads(path.read_text())
    tampered["instances"][0]["source_pixel_hash"] = "0" * 64
    assert not verify_bundle(tampered)
    assert custody_main(["--dsn", ledger_dsn, "evidence", "--study", mr, "--out", str(tmp_path / "e")]) == 0
    assert verify_bundle(tmp_path / "e" / f"{mr}.evidence.json")
