"""Private-tag audit: every private creator and element in sampled instances, named and classified.

A private element is identified by ``(private_creator, group, element_offset)``, never by its
absolute tag: a creator's block is reserved in whatever free slot ``(gggg,0010-00FF)`` the writer
found, so ``(0019,1021)`` in one file is ``(0019,1121)`` in the next. The name comes from pydicom's
private dictionary (keys like ``'0019xx21'``); an element carrying a clinical value (dose, exposure,
DAP, kVp, mAs, acquisition parameters: keyword match on that name) is marked as needing a coercion
rule, because the target archive and its viewers only read the standard attributes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydicom import dcmread
from pydicom.datadict import get_private_entry
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

logger = logging.getLogger(__name__)

PRIVATE_TAG_COLUMNS = [
    "private_creator",
    "group",
    "element_offset",
    "tag_mask",
    "vr",
    "name",
    "known",
    "count",
    "instances",
    "slots",
    "groups_seen",
    "nested",
    "clinical",
    "needs_coercion_rule",
]

#: Words in a dictionary name that mean the element carries a clinical (dose/acquisition) value.
CLINICAL_PATTERN = re.compile(
    r"\b(dose|doses|dosage|exposure|exposures|dap|dose area product|kvp|kv|mas|ma|milliamp\w*|"
    r"tube current|tube voltage|generator voltage|voltage|ctdi\w*|dlp|air ?kerma|kerma|radiation|"
    r"fluoro(scopy)? time|filter (type|material)|pitch|rotation time|acquisition|"
    r"repetition time|echo time|flip angle|inversion time|b[- ]?factor|b[- ]?value|diffusion|sar|"
    r"field strength|table (speed|feed)|contrast (agent|bolus|volume)|injection)\b",
    re.IGNORECASE,
)

#: Names pydicom gives elements whose meaning the vendor never published.
_UNKNOWN_NAMES = {"", "unknown", "private data", "private"}


def is_clinical(name: str) -> bool:
    """True when a private element's dictionary name says it carries a dose/acquisition value.

    Examples
    --------
    >>> is_clinical("Dose Area Product"), is_clinical("Generator Voltage current"), is_clinical("Unknown")
    (True, True, False)
    """
    return name.strip().lower() not in _UNKNOWN_NAMES and bool(CLINICAL_PATTERN.search(name))


def private_name(creator: str, group: int, offset: int) -> tuple[str, str] | None:
    """``(VR, name)`` from pydicom's private dictionary, or None when the creator/element is unknown."""
    tag = (group << 16) | 0x1000 | offset  # any block slot: the dictionary masks it as 'xx'
    try:
        vr, _vm, name, _retired = get_private_entry(tag, creator)
    except KeyError:
        return None
    return vr, name


def _group_key(ds: Dataset) -> str:
    """``MODALITY/Manufacturer/Model`` of an instance (the private blocks vary by device)."""
    return "/".join(
        str(ds.get(k, "") or "").strip() for k in ("Modality", "Manufacturer", "ManufacturerModelName")
    )


@dataclass
class _Seen:
    vr: set[str] = field(default_factory=set)
    count: int = 0
    instances: set[int] = field(default_factory=set)
    slots: set[int] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    nested: bool = False


def _walk(
    ds: Dataset, index: int, group_key: str, found: dict[tuple[str, int, int], _Seen], nested: bool
) -> None:
    for elem in ds:
        tag: BaseTag = elem.tag
        if elem.VR == "SQ":
            for item in elem.value or []:
                _walk(item, index, group_key, found, True)
        if not tag.is_private or tag.element < 0x1000:
            continue  # creator elements (gggg,0010-00FF) and group lengths are not data
        slot = tag.element >> 8
        creator_tag = (tag.group << 16) | slot
        creator = str(ds[creator_tag].value).strip() if creator_tag in ds else ""
        key = (creator, tag.group, tag.element & 0xFF)
        seen = found.setdefault(key, _Seen())
        seen.vr.add(str(elem.VR))
        seen.count += 1
        seen.instances.add(index)
        seen.slots.add(slot)
        seen.groups.add(group_key)
        seen.nested = seen.nested or nested


def audit_datasets(datasets: Iterable[Dataset]) -> pd.DataFrame:
    """One row per ``(private_creator, group, element_offset)`` across ``datasets``.

    Columns: :data:`PRIVATE_TAG_COLUMNS`. ``count`` is occurrences, ``instances`` how many datasets
    carry it, ``slots`` the block slots seen (``"0x10;0x11"``: the same element in different slots),
    ``groups_seen`` the ``MODALITY/Manufacturer/Model`` groups. An element without its creator
    element gets ``private_creator == ""`` (an orphan: it cannot be addressed safely at all).
    """
    found: dict[tuple[str, int, int], _Seen] = {}
    for index, ds in enumerate(datasets):
        _walk(ds, index, _group_key(ds), found, nested=False)
    rows = []
    for (creator, group, offset), seen in sorted(found.items()):
        entry = private_name(creator, group, offset) if creator else None
        vr_seen = ";".join(sorted(seen.vr))
        name = entry[1] if entry else ""
        clinical = is_clinical(name)
        rows.append(
            {
                "private_creator": creator,
                "group": group,
                "element_offset": offset,
                "tag_mask": f"({group:04X},xx{offset:02X})",
                "vr": entry[0] if entry and entry[0] not in ("", "UN") else vr_seen,
                "name": name,
                "known": entry is not None,
                "count": seen.count,
                "instances": len(seen.instances),
                "slots": ";".join(f"0x{s:02X}" for s in sorted(seen.slots)),
                "groups_seen": ";".join(sorted(seen.groups)),
                "nested": seen.nested,
                "clinical": clinical,
                "needs_coercion_rule": clinical,
            }
        )
    return pd.DataFrame(rows, columns=PRIVATE_TAG_COLUMNS)


def audit_files(paths: Iterable[Path]) -> pd.DataFrame:
    """:func:`audit_datasets` over Part-10 files (headers only; pixel data is not read)."""

    def datasets() -> Iterable[Dataset]:
        for path in paths:
            yield dcmread(path, stop_before_pixels=True)

    return audit_datasets(datasets())


def write_private_tags(paths: Iterable[Path], out: Path) -> dict[str, int]:
    """Audit sampled files and write ``private_tags.csv``; returns summary counts."""
    table = audit_files(paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(out)
    summary = {
        "elements": len(table),
        "creators": int(table["private_creator"].nunique()),
        "needs_coercion_rule": int(table["needs_coercion_rule"].sum()),
        "unknown": int((~table["known"].astype(bool)).sum()),
    }
    logger.info("private tags: %s", summary)
    return summary
