"""Export the chain of custody as DICOM audit messages (PS3.15 A.5) and FHIR R4 AuditEvent NDJSON.

Per migrated study two events, built from its custody entries:

- "Begin Transferring DICOM Instances" (DCM 110102, action E) when extraction started;
- "DICOM Instances Transferred" (DCM 110104, action C: created at the destination) when the
  target confirmed every instance (the ``state:loaded`` entry).

Active participants: the legacy PACS (Source Role ID, DCM 110153), the target archive
(Destination Role ID, DCM 110152) and pacsmig as the requestor (its AE title; the task instance
that acted as AlternativeUserID). Participant objects: the study (110180, with accession and
SOP classes / counts) and the patient (RFC-3881 "Patient Number"). Patient names are not exported.
Exports are deterministic: the same custody entries give byte-identical files.
"""

from __future__ import annotations

import json
import socket
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pacsmig import config
from pacsmig.config import ConnectionSpec, DicomNode
from pacsmig.errors import CustodyError
from pacsmig.ledger import Ledger

DCM = "DCM"
FHIR_DCM = "http://dicom.nema.org/resources/ontology/DCM"
BEGIN_TRANSFERRING = ("110102", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
SOURCE_ROLE = ("110153", "Source Role ID")
DESTINATION_ROLE = ("110152", "Destination Role ID")
STUDY_UID_TYPE = ("110180", "Study Instance UID")
#: Application server process tier (PS3.15 A.5.1.2.1).
AUDIT_SOURCE_TYPE = "4"
_NAMESPACE = uuid.UUID("6b1f1c3e-6f0c-4d7e-9a53-70616373a0d1")


@dataclass(frozen=True)
class Participant:
    """One active participant (an AE, a process, a system)."""

    user_id: str
    role: tuple[str, str] | None
    requestor: bool
    host: str = ""
    alternative_user_id: str = ""


@dataclass(frozen=True)
class AuditRecord:
    """One audit event, independent of its encoding (DICOM XML or FHIR)."""

    event: tuple[str, str]
    action: str
    when: datetime
    outcome: str
    study_instance_uid: str
    accession_number: str
    patient_id: str
    sop_classes: dict[str, int]
    participants: tuple[Participant, ...]
    custody_seq: int
    outcome_description: str = ""
    source_id: str = config.MODIFYING_SYSTEM
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """A stable id (same custody entry -> same id)."""
        return str(uuid.uuid5(_NAMESPACE, f"{self.study_instance_uid}/{self.event[0]}/{self.custody_seq}"))


def _host_kind(host: str) -> str:
    try:
        socket.inet_aton(host)
        return "2"
    except OSError:
        return "1"


def _target_participant(target: ConnectionSpec | None) -> Participant:
    if target is None:
        return Participant("target_archive", DESTINATION_ROLE, False)
    if target.conn_type == "dicom":
        return Participant(
            str(target.extra.get("ae_title") or target.conn_id), DESTINATION_ROLE, False, target.host
        )
    if target.conn_type in ("http", "https"):
        port = f":{target.port}" if target.port else ""
        url = f"{target.schema or 'http'}://{target.host}{port}{target.extra.get('dicomweb_path', '')}"
        return Participant(url, DESTINATION_ROLE, False, target.host)
    bucket = target.extra.get("bucket", "")
    return Participant(
        f"s3://{bucket}/{target.extra.get('prefix', '')}",
        DESTINATION_ROLE,
        False,
        urlsplit(str(target.extra.get("endpoint_url", ""))).hostname or "",
    )


def study_records(
    ledger: Ledger,
    study_instance_uid: str,
    source: DicomNode | None = None,
    target: ConnectionSpec | None = None,
) -> list[AuditRecord]:
    """The audit events of one study, from its custody entries (none if it never moved)."""
    study = ledger.study(study_instance_uid)
    if study is None:
        raise CustodyError(f"unknown study {study_instance_uid}")
    entries = ledger.query(
        "SELECT seq, event, actor, details, created_at FROM custody "
        "WHERE study_instance_uid = %s ORDER BY seq",
        (study_instance_uid,),
    )
    classes = Counter(
        {
            r["sop_class_uid"] or "": int(r["n"])
            for r in ledger.query(
                "SELECT sop_class_uid, count(*) AS n FROM instances WHERE study_instance_uid = %s "
                "AND target_status <> 'quarantined' GROUP BY sop_class_uid",
                (study_instance_uid,),
            )
        }
    )
    src = Participant(
        source.ae_title if source else "legacy_pacs", SOURCE_ROLE, False, source.host if source else ""
    )
    dst = _target_participant(target)
    patient = study.get("mpi_patient_id") or study.get("patient_id") or ""
    records: list[AuditRecord] = []

    def add(
        entry: dict[str, Any], event: tuple[str, str], action: str, outcome: str = "0", description: str = ""
    ) -> None:
        me = Participant(
            source.calling_ae_title if source else config.DEFAULT_CALLING_AE,
            None,
            True,
            socket.gethostname(),
            entry["actor"],
        )
        records.append(
            AuditRecord(
                event,
                action,
                entry["created_at"],
                outcome,
                study_instance_uid,
                study.get("accession_number") or "",
                patient,
                dict(sorted(classes.items())),
                (src, dst, me),
                int(entry["seq"]),
                description,
            )
        )

    begin = next((e for e in entries if e["event"] in ("state:extracting", "extracted")), None)
    if begin is not None:
        add(begin, BEGIN_TRANSFERRING, "E")
    loaded = [e for e in entries if e["event"] == "state:loaded"]
    if loaded:
        add(loaded[-1], INSTANCES_TRANSFERRED, "C")
    failed = [e for e in entries if e["event"] == "state:quarantined"]
    if failed and not loaded:
        reason = (failed[-1]["details"] or {}).get("reason", "quarantined")
        add(failed[-1], INSTANCES_TRANSFERRED, "C", "4", f"study quarantined: {reason}")
    return records


# --- DICOM audit message XML -------------------------------------------------------------------
def _code(parent: ET.Element, tag: str, code: tuple[str, str], system: str = DCM) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code[0], "codeSystemName": system, "originalText": code[1]}
    )


def to_dicom_xml(record: AuditRecord) -> str:
    """The record as a PS3.15 A.5 ``AuditMessage`` (element order as the schema requires)."""
    root = ET.Element("AuditMessage")
    ev = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": record.action,
            "EventDateTime": record.when.astimezone(UTC).isoformat(),
            "EventOutcomeIndicator": record.outcome,
        },
    )
    _code(ev, "EventID", record.event)
    if record.outcome_description:
        ET.SubElement(ev, "EventOutcomeDescription").text = record.outcome_description
    for p in record.participants:
        attrs = {"UserID": p.user_id, "UserIsRequestor": "true" if p.requestor else "false"}
        if p.alternative_user_id:
            attrs["AlternativeUserID"] = p.alternative_user_id
        if p.host:
            attrs.update(NetworkAccessPointID=p.host, NetworkAccessPointTypeCode=_host_kind(p.host))
        ap = ET.SubElement(root, "ActiveParticipant", attrs)
        if p.role:
            _code(ap, "RoleIDCode", p.role)
    src = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": record.source_id})
    ET.SubElement(src, "AuditSourceTypeCode", {"csd-code": AUDIT_SOURCE_TYPE})
    if record.patient_id:
        po = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": record.patient_id,
                "ParticipantObjectTypeCode": "1",
                "ParticipantObjectTypeCodeRole": "1",
            },
        )
        _code(po, "ParticipantObjectIDTypeCode", ("2", "Patient Number"), "RFC-3881")
    po = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": record.study_instance_uid,
            "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3",
        },
    )
    _code(po, "ParticipantObjectIDTypeCode", STUDY_UID_TYPE)
    desc = ET.SubElement(po, "ParticipantObjectDescription")
    if record.accession_number:
        ET.SubElement(desc, "Accession", {"Number": record.accession_number})
    for uid, n in record.sop_classes.items():
        attrs = {"NumberOfInstances": str(n)}
        if uid:
            attrs["UID"] = uid
        ET.SubElement(desc, "SOPClass", attrs)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def validate_dicom_xml(text: str) -> list[str]:
    """Errors of ``text`` against the PS3.15 A.5.1 schema (empty list: valid). Needs lxml."""
    from lxml import etree

    from pacsmig.custody.audit_schema import AUDIT_MESSAGE_RNG

    schema = etree.RelaxNG(etree.fromstring(AUDIT_MESSAGE_RNG.encode()))
    doc = etree.fromstring(text.encode())
    if schema.validate(doc):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]


# --- FHIR R4 AuditEvent -------------------------------------------------------------------------
def to_fhir(record: AuditRecord) -> dict[str, Any]:
    """The record as a FHIR R4 AuditEvent resource (the DICOM-to-FHIR mapping of the standard)."""
    agents = []
    for p in record.participants:
        agent: dict[str, Any] = {"who": {"identifier": {"value": p.user_id}}, "requestor": p.requestor}
        if p.role:
            agent["type"] = {"coding": [{"system": FHIR_DCM, "code": p.role[0], "display": p.role[1]}]}
        if p.alternative_user_id:
            agent["altId"] = p.alternative_user_id
        if p.host:
            agent["network"] = {"address": p.host, "type": _host_kind(p.host)}
        agents.append(agent)
    entities: list[dict[str, Any]] = []
    if record.patient_id:
        entities.append(
            {
                "what": {"identifier": {"value": record.patient_id}},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                    "display": "Person",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                    "display": "Patient",
                },
            }
        )
    study: dict[str, Any] = {
        "what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{record.study_instance_uid}"}},
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
            "code": "2",
            "display": "System Object",
        },
        "role": {
            "system": "http://terminology.hl7.org/CodeSystem/object-role",
            "code": "3",
            "display": "Report",
        },
        "detail": [
            {"type": "SOPClass", "valueString": f"{uid} x{n}"} for uid, n in record.sop_classes.items()
        ],
    }
    if record.accession_number:
        study["detail"].insert(0, {"type": "AccessionNumber", "valueString": record.accession_number})
    entities.append(study)
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": record.id,
        "type": {"system": FHIR_DCM, "code": record.event[0], "display": record.event[1]},
        "action": record.action,
        "recorded": record.when.astimezone(UTC).isoformat(),
        "outcome": record.outcome,
        "agent": agents,
        "source": {
            "observer": {"display": record.source_id},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": AUDIT_SOURCE_TYPE,
                    "display": "Application Server",
                }
            ],
        },
        "entity": entities,
    }
    if record.outcome_description:
        resource["outcomeDesc"] = record.outcome_description
    return resource


# --- writing ----------------------------------------------------------------------------------
def export_studies(
    ledger: Ledger,
    study_uids: list[str],
    out_dir: Path,
    source: DicomNode | None = None,
    target: ConnectionSpec | None = None,
) -> dict[str, Any]:
    """Write ``<study>.<event id>.xml`` per event and ``auditevents.ndjson`` for all of them.

    Returns counts, paths and the records' XML texts (for a syslog sender).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    xml_paths: list[str] = []
    messages: list[str] = []
    ndjson = out_dir / "auditevents.ndjson"
    with ndjson.open("w") as fh:
        for uid in study_uids:
            for record in study_records(ledger, uid, source, target):
                text = to_dicom_xml(record)
                path = out_dir / f"{uid}.{record.event[0]}.xml"
                path.write_text(text)
                xml_paths.append(str(path))
                messages.append(text)
                fh.write(json.dumps(to_fhir(record), sort_keys=True, separators=(",", ":")) + "\n")
    return {
        "studies": len(study_uids),
        "messages": len(messages),
        "xml": xml_paths,
        "ndjson": str(ndjson),
        "texts": messages,
    }
