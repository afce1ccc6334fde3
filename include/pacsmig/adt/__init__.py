"""HL7 v2 ADT intake: the MLLP listener, ADT storage in the ledger, and the prefetch queue.

Modules: :mod:`~pacsmig.adt.messages` (parse, validate, ACK), :mod:`~pacsmig.adt.store` (ledger
rows, pending admissions, priorities), :mod:`~pacsmig.adt.listener` (``pacsmig adt-listener``),
:mod:`~pacsmig.adt.send` (build and send messages).
"""

from __future__ import annotations

from pacsmig.adt.messages import ADMISSION_EVENTS, SUPPORTED_EVENTS, AckCode, AdtError, AdtEvent, parse_adt
from pacsmig.adt.send import build_adt, parse_ack, send_adt
from pacsmig.adt.store import (
    handle_admissions,
    mark_processed,
    patient_studies,
    pending_admissions,
    prioritise,
    store_event,
)

__all__ = [
    "ADMISSION_EVENTS", "SUPPORTED_EVENTS", "AckCode", "AdtError", "AdtEvent", "parse_adt",
    "build_adt", "parse_ack", "send_adt",
    "handle_admissions", "mark_processed", "patient_studies", "pending_admissions", "prioritise",
    "store_event",
]
