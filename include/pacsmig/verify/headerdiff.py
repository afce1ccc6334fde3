"""Header diff: the target's header must equal the source's except for the changes the transform recorded.

What a target may legitimately add or alter, and is therefore not compared (kept short on purpose):

- the File Meta group (0002,xxxx): every archive rewrites it on receipt (transfer syntax,
  implementation class UID / version name, source AE title);
- group length elements (gggg,0000): retired outside group 0002, dropped or recomputed on re-encoding;
- dataset trailing padding (FFFC,FFFC);
- the pixel data elements (7FE0,0008/0009/0010): a lossless transcode re-encodes them, so they are
  verified by the transfer-syntax independent pixel hash instead.

The changes pacsmig itself made are taken from the custody ``transformed`` entries and from the
target's Original Attributes Sequence (0400,0561); the latter is itself the expected addition.
Findings name tags, never values (values may be patient data).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from pacsmig.verify.hashing import PIXEL_DATA_ELEMENTS

#: Pixel elements, verified by hash rather than by header comparison.
PIXEL_TAGS = frozenset(Tag(t) for t in PIXEL_DATA_ELEMENTS)
TRAILING_PADDING = Tag(0xFFFC, 0xFFFC)
ORIGINAL_ATTRIBUTES = Tag(0x0400, 0x0561)
MODIFIED_ATTRIBUTES = Tag(0x0400, 0x0550)
#: Actions of a recorded change after which the attribute must be absent at the target.
REMOVING_ACTIONS = frozenset({"delete", "remove", "removed", "deleted"})
_MAX_LISTED = 10


def parse_tag(value: Any) -> BaseTag | None:
    """A tag from the forms change records use: ``(0010,0020)``, ``0010,0020``, ``00100020``, int, keyword."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return Tag(value)
    text = str(value).strip()
    hexes = re.findall(r"[0-9A-Fa-f]{4}", text)
    if re.fullmatch(r"\(?\s*[0-9A-Fa-f]{4}\s*,?\s*[0-9A-Fa-f]{4}\s*\)?", text) and len(hexes) == 2:
        return Tag(int(hexes[0], 16), int(hexes[1], 16))
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        return Tag(int(text, 16))
    found = tag_for_keyword(text)
    return Tag(found) if found is not None else None


def tag_name(tag: BaseTag) -> str:
    """Keyword, or ``(gggg,eeee)`` for private / unknown tags."""
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def _ignored(tag: BaseTag) -> bool:
    return tag.group == 0x0002 or tag.element == 0x0000 or tag in PIXEL_TAGS or tag == TRAILING_PADDING


def _text(value: Any) -> str:
    return str(value).strip().rstrip("\x00").strip()


def normalise(elem: DataElement) -> Any:
    """A comparable form of an element's value (sequences recursively; padding ignored)."""
    if elem.VR == "SQ":
        return tuple(_normalise_dataset(item) for item in elem.value or [])
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).rstrip(b"\x00 ")
    if isinstance(value, MultiValue | list | tuple):
        return tuple(_text(v) for v in value)
    return _text(value)


def _normalise_dataset(ds: Dataset) -> tuple[tuple[int, Any], ...]:
    return tuple((int(t), normalise(ds[t])) for t in sorted(ds.keys()) if not _ignored(t))


def recorded_tags(changes: Iterable[dict[str, Any]]) -> dict[BaseTag, dict[str, Any]]:
    """Changes by tag (the last record of a tag wins, as the transform applied them in order)."""
    out: dict[BaseTag, dict[str, Any]] = {}
    for change in changes:
        tag = parse_tag(change.get("tag")) or parse_tag(change.get("keyword"))
        if tag is not None:
            out[tag] = change
    return out


def original_attributes_tags(target: Dataset, source: Dataset) -> set[BaseTag]:
    """Tags the target's Original Attributes Sequence records as modified beyond the source's own items."""
    items = list(target.get(ORIGINAL_ATTRIBUTES, DataElement(ORIGINAL_ATTRIBUTES, "SQ", [])).value or [])
    already = len(source.get(ORIGINAL_ATTRIBUTES, DataElement(ORIGINAL_ATTRIBUTES, "SQ", [])).value or [])
    tags: set[BaseTag] = set()
    for item in items[already:]:
        for modified in item.get(MODIFIED_ATTRIBUTES, DataElement(MODIFIED_ATTRIBUTES, "SQ", [])).value or []:
            tags.update(t for t in modified.keys())
    return tags


def _normalise_item(item: dict[str, Any]) -> tuple[tuple[int, Any], ...]:
    """A recorded sequence item in :func:`_normalise_dataset`'s form (keywords to tags)."""
    ds = Dataset()
    for keyword, value in item.items():
        setattr(ds, keyword, value)
    return _normalise_dataset(ds)


def _new_value_matches(change: dict[str, Any], elem: DataElement) -> bool:
    if "new" not in change or change["new"] is None:
        return True
    expected = change["new"]
    actual = normalise(elem)
    if elem.VR == "SQ" and isinstance(expected, list | tuple) and all(isinstance(v, dict) for v in expected):
        # A sequence's new value is recorded as items of {keyword: value} (e.g. OtherPatientIDsSequence).
        return tuple(_normalise_item(v) for v in expected) == actual
    if isinstance(expected, list | tuple):
        return tuple(_text(v) for v in expected) == (actual if isinstance(actual, tuple) else (actual,))
    if isinstance(actual, tuple):
        return "\\".join(actual) == _text(expected)
    if isinstance(actual, bytes):
        return actual == _text(expected).encode()
    return actual == _text(expected)


def header_diff(source: Dataset, target: Dataset, changes: Iterable[dict[str, Any]] = ()) -> list[str]:
    """Differences between the source and target headers that no recorded change explains.

    Parameters
    ----------
    source
        The instance as received from the legacy PACS (the staged file).
    target
        The instance as the target returns it.
    changes
        The recorded changes for this instance (custody ``transformed`` details ``changes``).

    Returns
    -------
    list of str
        One finding per unexplained difference, naming the tag (never its value); empty when the
        headers agree.

    Examples
    --------
    >>> from pydicom.dataset import Dataset
    >>> a, b = Dataset(), Dataset()
    >>> a.PatientID, b.PatientID = "X1", "MPI9"
    >>> header_diff(a, b)
    ['PatientID differs']
    >>> header_diff(a, b, [{"tag": "(0010,0020)", "action": "replace", "new": "MPI9"}])
    []
    """
    recorded = recorded_tags(changes)
    via_oas = original_attributes_tags(target, source)
    findings: list[str] = []
    for tag in sorted(set(source.keys()) | set(target.keys())):
        if _ignored(tag):
            continue
        name = tag_name(tag)
        in_source, in_target = tag in source, tag in target
        if tag == ORIGINAL_ATTRIBUTES:
            if in_source and not in_target:
                findings.append(f"{name} missing at target")
            elif in_target and not (recorded or via_oas) and normalise(target[tag]) != (
                    normalise(source[tag]) if in_source else ()):
                findings.append(f"{name} changed with no change recorded")
            continue
        if tag in recorded:
            change = recorded[tag]
            removing = str(change.get("action", "")).lower() in REMOVING_ACTIONS
            if removing and in_target:
                findings.append(f"{name} recorded as removed but present at target")
            elif not removing and not in_target:
                findings.append(f"{name} recorded as changed but missing at target")
            elif not removing and not _new_value_matches(change, target[tag]):
                findings.append(f"{name} differs from the recorded new value")
            continue
        if tag in via_oas:
            continue
        if not in_target:
            findings.append(f"{name} missing at target")
        elif not in_source:
            findings.append(f"{name} added by target")
        elif normalise(source[tag]) != normalise(target[tag]):
            findings.append(f"{name} differs")
    return findings


def summarise(findings: list[str]) -> str:
    """The findings as one detail string (bounded length)."""
    more = f"; +{len(findings) - _MAX_LISTED} more" if len(findings) > _MAX_LISTED else ""
    return "; ".join(findings[:_MAX_LISTED]) + more
