"""Write recorded changes into the Original Attributes Sequence (0400,0561), PS3.3 C.12.1.1.9.

One item per reason (COERCE, CORRECT) per run, each with exactly one Modified Attributes Sequence
item holding the prior value of every top-level attribute that reason replaced, added or removed.
Added attributes appear with a zero-length value. A value changed because it broke its VR (too
long, invalid date) appears with a zero-length value too, and its original bytes go in the
Nonconforming Modified Attributes Sequence, so no original value is ever lost.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from pacsmig.config import MODIFYING_SYSTEM
from pacsmig.transform.rules import Change

_ISSUER = 0x00100021
_PATIENT_ID = 0x00100020


def dicom_datetime(when: datetime) -> str:
    """DT with microseconds and UTC offset (a naive ``when`` is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.strftime("%z") or "+0000"
    return when.strftime("%Y%m%d%H%M%S.%f") + offset


def _empty(tag: int, vr: str) -> DataElement:
    if vr == "SQ":
        return DataElement(tag, vr, DicomSequence())
    return DataElement(tag, vr, None)


def _put(item: Dataset, change: Change, element: DataElement) -> None:
    """Place ``element`` in ``item``; a private one goes in a block of the same creator."""
    tag = BaseTag(element.tag)
    if tag.is_private and change.private_creator:
        block = item.private_block(tag.group, change.private_creator, create=True)
        block.add_new(tag.element & 0xFF, element.VR, element.value)
    else:
        item.add(element)


def modified_item(changes: Sequence[Change],
                  original_issuer: DataElement | None = None) -> tuple[Dataset, list[Dataset]]:
    """The Modified Attributes item and Nonconforming items for one reason's changes."""
    item = Dataset()
    nonconforming: list[Dataset] = []
    seen: set[int] = set()
    for change in changes:
        tag = change.tag_int
        if tag in seen:
            continue  # the first change of a run holds the value before the run
        seen.add(tag)
        if change.original is None:
            _put(item, change, _empty(tag, change.vr or "UN"))
        elif change.nonconforming:
            _put(item, change, _empty(tag, change.original.VR))
            entry = Dataset()
            entry.SelectorAttribute = tag
            entry.NonconformingDataElementValue = change.original_bytes or b""
            nonconforming.append(entry)
        else:
            _put(item, change, copy.deepcopy(change.original))
    # PS3.3: with Patient ID replaced, its issuer (even unchanged) says which ID it was.
    if _PATIENT_ID in seen and _ISSUER not in seen:
        item.add(copy.deepcopy(original_issuer) if original_issuer is not None else _empty(_ISSUER, "LO"))
    return item, nonconforming


def record_original_attributes(ds: Dataset, changes: Sequence[Change], when: datetime,
                               modifying_system: str = MODIFYING_SYSTEM,
                               original_issuer: DataElement | None = None) -> int:
    """Append one Original Attributes item per reason in ``changes``; returns the items added.

    Existing items are preserved (the standard requires it).
    """
    by_reason: dict[str, list[Change]] = {}
    for change in changes:
        by_reason.setdefault(change.reason, []).append(change)
    if not by_reason:
        return 0
    if "OriginalAttributesSequence" not in ds:
        ds.OriginalAttributesSequence = DicomSequence()
    stamp = dicom_datetime(when)
    for reason, group in by_reason.items():
        mod, nonconforming = modified_item(group, original_issuer)
        entry = Dataset()
        entry.SourceOfPreviousValues = ""
        entry.AttributeModificationDateTime = stamp
        entry.ModifyingSystem = modifying_system
        entry.ReasonForTheAttributeModification = reason
        entry.ModifiedAttributesSequence = DicomSequence([mod])
        if nonconforming:
            entry.NonconformingModifiedAttributesSequence = DicomSequence(nonconforming)
        ds.OriginalAttributesSequence.append(entry)
    return len(by_reason)
