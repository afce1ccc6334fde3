"""Value Representation rules the coercion engine needs: reading odd private values, converting to a VR."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import PersonName
from pydicom.values import convert_value

from pacsmig.errors import TransformError

#: Maximum characters per value (PS3.5 Table 6.2-1); PN counts per component group.
MAX_LENGTH: dict[str, int] = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240,
    "PN": 64, "SH": 16, "ST": 1024, "TM": 14, "UI": 64,
}
#: VRs whose over-long values may be cut without changing what a value means syntactically.
TRUNCATABLE_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST"})
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                      "UC", "UI", "UR", "UT"})
#: Text VRs that carry exactly one value (backslash is an ordinary character there).
SINGLE_VALUE_TEXT_VRS = frozenset({"LT", "ST", "UR", "UT"})
INT_RANGES: dict[str, tuple[int, int]] = {
    "IS": (-(2**31), 2**31 - 1), "US": (0, 2**16 - 1), "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1), "SL": (-(2**31), 2**31 - 1), "UV": (0, 2**64 - 1), "SV": (-(2**63), 2**63 - 1),
}
FLOAT_VRS = frozenset({"FL", "FD"})
DATETIME_VRS = frozenset({"DA", "TM", "DT"})

_TM_RE = re.compile(r"^(?P<h>\d{2})(?P<m>\d{2})?(?P<s>\d{2})?(?P<f>\.\d{1,6})?$")
_DT_RE = re.compile(r"^(?P<date>\d{4}(?:\d{2}(?:\d{2})?)?)(?P<time>\d{2}(?:\d{4}|\d{2})?(?:\.\d{1,6})?)?"
                    r"(?P<tz>[+-]\d{4})?$")


def values_of(value: Any) -> list[Any]:
    """An element value as a list of its values (empty for an empty value)."""
    if value is None or value == "" or value == b"":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def plain(value: Any) -> Any:
    """A DICOM value as plain Python (str, int, float, bytes, lists, dicts) for change records."""
    if isinstance(value, DicomSequence):
        return [{el.keyword or str(el.tag): plain(el.value) for el in item} for item in value]
    if isinstance(value, MultiValue | list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, float):
        # DSfloat keeps its original string; plain floats stay floats.
        return str(value) if type(value) is not float else value
    if isinstance(value, int) and type(value) is not int and type(value) is not bool:
        return int(value)
    return value


def decode_raw(element: DataElement, as_vr: str, ds: Dataset) -> Any:
    """Interpret an element stored as UN/OB bytes with the VR it really has (``as_vr``)."""
    raw_bytes = element.value if isinstance(element.value, bytes) else b""
    raw = RawDataElement(element.tag, as_vr, len(raw_bytes), raw_bytes, 0,
                         bool(getattr(ds, "is_implicit_VR", False) or False),
                         bool(getattr(ds, "is_little_endian", True) is not False), True, False)
    try:
        return convert_value(as_vr, raw, convert_encodings(ds.get("SpecificCharacterSet")))
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same: unreadable value
        raise TransformError(f"cannot read {element.tag} as {as_vr}: {exc}") from exc


def source_values(element: DataElement, ds: Dataset, from_vr: str | None = None) -> tuple[list[Any], str]:
    """The values of ``element`` and the VR they are in, decoding UN/OB bytes when needed.

    ``from_vr`` (or, for a private element, the private dictionary's VR) says how to read bytes.
    Without either, bytes are read as ASCII text.
    """
    vr = element.VR
    value = element.value
    if isinstance(value, bytes) and vr in ("UN", "OB", "OW"):
        as_vr = from_vr
        if as_vr is None and element.tag.is_private and element.private_creator:
            try:
                from pydicom.datadict import private_dictionary_VR

                as_vr = private_dictionary_VR(element.tag, element.private_creator)
            except KeyError:
                as_vr = None
        if as_vr is None:
            try:
                text = value.decode("ascii").strip("\x00 ")
            except UnicodeDecodeError as exc:
                raise TransformError(f"{element.tag}: {vr} bytes are not text; give from_vr") from exc
            return ([v.strip() for v in text.split("\\")] if text else []), "LO"
        return values_of(decode_raw(element, as_vr, ds)), as_vr
    return values_of(value), vr


def _number(value: Any, source_vr: str) -> float:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError) as exc:
        raise TransformError(f"{value!r} is not a number") from exc
    if not math.isfinite(number):
        raise TransformError(f"{value!r} is not a finite number")
    if source_vr == "FL":
        # A float32 printed at float64 precision invents digits the device never measured.
        number = float(str(np.float32(number)))
    return number


def _ds_string(value: Any, source_vr: str) -> str:
    if isinstance(value, str) and source_vr in ("DS", "IS", "LO", "SH", "CS", "UN", "OB"):
        text = value.strip()
        _number(text, source_vr)
        if len(text) <= 16:
            return text  # keep the device's own digits
    number = _number(value, source_vr)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    text = repr(number)
    if len(text) > 16:
        from pydicom.valuerep import format_number_as_ds

        text = format_number_as_ds(number)
    return text


def convert_one(value: Any, source_vr: str, target_vr: str) -> Any:
    """Convert one value to ``target_vr``, refusing anything that would lose information."""
    if target_vr == "DS":
        return _ds_string(value, source_vr)
    if target_vr in INT_RANGES:
        number = _number(value, source_vr)
        if not number.is_integer():
            raise TransformError(f"{value!r} is not an integer, cannot store it as {target_vr}")
        lo, hi = INT_RANGES[target_vr]
        if not lo <= int(number) <= hi:
            raise TransformError(f"{value!r} is out of range for {target_vr}")
        return int(number)
    if target_vr in FLOAT_VRS:
        return _number(value, source_vr)
    if target_vr in TEXT_VRS:
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, float) and source_vr in FLOAT_VRS:
            text = _ds_string(value, source_vr)
        else:
            text = str(value).strip() if target_vr != "PN" else str(value)
        limit = MAX_LENGTH.get(target_vr)
        if target_vr == "PN":
            if any(len(group) > 64 for group in text.split("=")):
                raise TransformError("a PN component group is longer than 64 characters")
        elif limit is not None and len(text) > limit:
            raise TransformError(f"value of {len(text)} characters is longer than {target_vr} "
                                 f"allows ({limit})")
        if target_vr in DATETIME_VRS and text and not is_valid_datetime(text, target_vr):
            # no value in the message: dates here may be birth dates
            raise TransformError(f"value is not a valid {target_vr}")
        return text
    raise TransformError(f"conversion to VR {target_vr} is not supported")


def convert(values: Sequence[Any], source_vr: str, target_vr: str, target_vm: str = "1-n") -> Any:
    """Convert a list of values to an element value of ``target_vr`` with multiplicity ``target_vm``."""
    converted = [convert_one(v, source_vr, target_vr) for v in values]
    if target_vm == "1" and len(converted) > 1:
        raise TransformError(f"{len(converted)} values for a single-valued {target_vr} element")
    if not converted:
        return None
    return converted[0] if len(converted) == 1 else converted


def is_valid_datetime(text: str, vr: str) -> bool:
    """Whether ``text`` is a valid DA, TM or DT value (PS3.5 6.2)."""
    text = text.strip()
    if vr == "DA":
        return _valid_date(text)
    if vr == "TM":
        return _valid_time(text)
    match = _DT_RE.match(text)
    if not match:
        return False
    date_part = match["date"]
    if len(date_part) == 8 and not _valid_date(date_part):
        return False
    if len(date_part) == 6 and not 1 <= int(date_part[4:6]) <= 12:
        return False
    if match["time"] and not _valid_time(match["time"]):
        return False
    tz = match["tz"]
    return not tz or (int(tz[1:3]) <= 14 and int(tz[3:5]) < 60)


def _valid_date(text: str) -> bool:
    if len(text) != 8 or not text.isdigit():
        return False
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return False
    return int(text[:4]) >= 1800  # year 0000/0001 placeholders are "unknown", not dates


def _valid_time(text: str) -> bool:
    match = _TM_RE.match(text)
    if not match:
        return False
    return (int(match["h"]) < 24 and (match["m"] is None or int(match["m"]) < 60)
            and (match["s"] is None or int(match["s"]) <= 60))


def normalise_datetime(text: str, vr: str) -> str | None:
    """A valid DA/TM/DT spelling of ``text`` or None when it cannot be read without guessing.

    Only unambiguous legacy forms are rewritten: ISO separators (``2020-01-31``, ``2020/01/31``,
    ACR-NEMA ``2020.01.31``) and ``12:30:05``-style times. Day/month order is never guessed.
    """
    text = text.strip()
    if is_valid_datetime(text, vr):
        return text
    if vr == "DA":
        match = re.fullmatch(r"(\d{4})[-/.](\d{2})[-/.](\d{2})", text)
        candidate = "".join(match.groups()) if match else None
    elif vr == "TM":
        match = re.fullmatch(r"(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?", text)
        candidate = "".join(g for g in match.groups() if g) if match else None
    else:
        match = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?", text)
        candidate = "".join(g for g in match.groups() if g) if match else None
    if candidate and is_valid_datetime(candidate, vr):
        return candidate
    return None
