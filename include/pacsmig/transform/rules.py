"""The declarative coercion rules engine: ordered YAML rules that set, copy, fix and map DICOM values.

A rule file (see ``include/rules/README.md``) is validated when loaded: an unknown operation,
field, keyword or VR raises :class:`~pacsmig.errors.TransformError` naming the rule, so a typo
never turns into a silently skipped rule. Private elements are addressed by private creator and
element offset, never by absolute tag, because the slot a block lands in differs between files.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydicom.charset import convert_encodings, encode_string
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from pacsmig.errors import TransformError
from pacsmig.transform import values as V

logger = logging.getLogger(__name__)

COERCE = "COERCE"
CORRECT = "CORRECT"
REASONS = (COERCE, CORRECT)

#: Elements no rule may touch: identity (UIDs), encoding, pixels, and our own provenance record.
PROTECTED_KEYWORDS = frozenset({
    "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SpecificCharacterSet",
    "OriginalAttributesSequence", "PixelData", "FloatPixelData", "DoubleFloatPixelData",
    "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
})
_PROTECTED_TAGS = frozenset(int(tag_for_keyword(k)) for k in PROTECTED_KEYWORDS)


@dataclass
class Change:
    """One recorded modification of a top-level attribute.

    ``tag`` is where the element is in this dataset (``(gggg,eeee)``); ``keyword`` names it
    slot-independently (``CREATOR (gggg,xxee)`` for private elements). ``old`` / ``new`` are plain
    Python values (``None`` = absent). ``reason`` is ``COERCE`` or ``CORRECT``.
    """

    tag: str
    keyword: str
    action: str
    old: Any
    new: Any
    rule_id: str
    reason: str
    #: The element as it was before this change (None if absent): what the Modified Attributes
    #: Sequence records.
    original: DataElement | None = field(default=None, repr=False, compare=False)
    #: The old value broke its VR (too long, invalid date): recorded as Nonconforming.
    nonconforming: bool = field(default=False, repr=False, compare=False)
    #: The original value's encoded bytes, for nonconforming values.
    original_bytes: bytes | None = field(default=None, repr=False, compare=False)
    private_creator: str | None = field(default=None, repr=False, compare=False)
    vr: str = field(default="", repr=False, compare=False)

    @property
    def tag_int(self) -> int:
        """The tag as an int."""
        group, element = self.tag.strip("()").split(",")
        return (int(group, 16) << 16) | int(element, 16)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the public fields (bytes as hex)."""
        return {"tag": self.tag, "keyword": self.keyword, "action": self.action, "old": _jsonable(self.old),
                "new": _jsonable(self.new), "rule_id": self.rule_id, "reason": self.reason}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def tag_str(tag: int) -> str:
    """``(gggg,eeee)``."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


# --- element references --------------------------------------------------------------------
@dataclass(frozen=True)
class StandardRef:
    """A standard (public) element, by keyword or tag."""

    tag: int

    @property
    def keyword(self) -> str:
        return keyword_for_tag(self.tag) or tag_str(self.tag)

    @property
    def vr(self) -> str:
        return dictionary_VR(self.tag)

    @property
    def vm(self) -> str:
        return dictionary_VM(self.tag)

    def find(self, ds: Dataset) -> int | None:
        return self.tag if self.tag in ds else None

    def target(self, ds: Dataset) -> int:
        return self.tag

    def describe(self) -> str:
        return self.keyword


@dataclass(frozen=True)
class PrivateRef:
    """A private element, by group, private creator and element offset (0x00-0xFF) in the block."""

    group: int
    creator: str
    offset: int
    vr_hint: str | None = None

    @property
    def keyword(self) -> str:
        return f"{self.creator} ({self.group:04X},xx{self.offset:02X})"

    @property
    def vr(self) -> str:
        if self.vr_hint:
            return self.vr_hint
        from pydicom._private_dict import private_dictionaries

        entry = private_dictionaries.get(self.creator, {}).get(f"{self.group:04X}xx{self.offset:02X}")
        return entry[0] if entry else "UN"

    @property
    def vm(self) -> str:
        return "1-n"

    def find(self, ds: Dataset) -> int | None:
        try:
            block = ds.private_block(self.group, self.creator)
        except KeyError:
            return None
        tag = int(block.get_tag(self.offset))
        return tag if tag in ds else None

    def target(self, ds: Dataset) -> int:
        return int(ds.private_block(self.group, self.creator, create=True).get_tag(self.offset))

    def describe(self) -> str:
        return self.keyword


ElementRef = StandardRef | PrivateRef


def _int_field(value: Any, name: str, rule_id: str) -> int:
    if isinstance(value, bool):
        raise TransformError(f"rule {rule_id}: {name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0) if value.lower().startswith("0x") else int(value, 16)
        except ValueError:
            pass
    raise TransformError(f"rule {rule_id}: {name} must be an integer (e.g. 0x0019), got {value!r}")


def parse_ref(spec: Any, rule_id: str, *, vr: str | None = None) -> ElementRef:
    """Parse an element reference: a keyword, ``(gggg,eeee)``, or ``{group, creator, offset}``."""
    if isinstance(spec, dict):
        unknown = set(spec) - {"group", "creator", "offset"}
        missing = {"group", "creator", "offset"} - set(spec)
        if unknown or missing:
            raise TransformError(f"rule {rule_id}: private element reference needs exactly group, creator, "
                                 f"offset (unknown {sorted(unknown)}, missing {sorted(missing)})")
        group = _int_field(spec["group"], "group", rule_id)
        offset = _int_field(spec["offset"], "offset", rule_id)
        creator = spec["creator"]
        if group % 2 == 0 or not 0x0009 <= group <= 0xFFFF:
            raise TransformError(f"rule {rule_id}: private group must be odd, got 0x{group:04X}")
        if not 0 <= offset <= 0xFF:
            raise TransformError(f"rule {rule_id}: offset must be 0x00-0xFF, got 0x{offset:X}")
        if not isinstance(creator, str) or not creator.strip():
            raise TransformError(f"rule {rule_id}: creator must be a non-empty string")
        return PrivateRef(group, creator, offset, vr)
    if isinstance(spec, str):
        text = spec.strip()
        tag: int | None
        if re.fullmatch(r"\(?[0-9A-Fa-f]{4},?[0-9A-Fa-f]{4}\)?", text):
            digits = re.sub(r"[^0-9A-Fa-f]", "", text)
            tag = int(digits, 16)
        else:
            tag = tag_for_keyword(text)
            if tag is None:
                raise TransformError(f"rule {rule_id}: unknown DICOM keyword {text!r}")
        tag = int(tag)
        if BaseTag(tag).is_private:
            raise TransformError(f"rule {rule_id}: {tag_str(tag)} is private; address private elements by "
                                 "{group, creator, offset}, never by absolute tag")
        if tag >> 16 == 0x0002:
            raise TransformError(f"rule {rule_id}: file meta elements {tag_str(tag)} are not rule targets")
        if tag in _PROTECTED_TAGS or tag >> 16 == 0x7FE0:
            raise TransformError(f"rule {rule_id}: {keyword_for_tag(tag) or tag_str(tag)} is protected "
                                 "(identity, encoding or pixel data)")
        try:
            dictionary_VR(tag)
        except KeyError:
            raise TransformError(f"rule {rule_id}: {tag_str(tag)} is not in the DICOM dictionary") from None
        return StandardRef(tag)
    raise TransformError(f"rule {rule_id}: element reference must be a keyword, tag or "
                         f"{{group, creator, offset}}, got {spec!r}")


# --- conditions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    """All of the given tests must hold (an absent ``when`` always holds)."""

    modality: tuple[str, ...] = ()
    manufacturer_regex: re.Pattern[str] | None = None
    manufacturer_names: tuple[str, ...] = ()
    private_creators: tuple[tuple[int, str], ...] = ()
    present: tuple[ElementRef, ...] = ()
    absent: tuple[ElementRef, ...] = ()

    KEYS = frozenset({"modality", "manufacturer", "private_creator", "present", "absent"})

    @classmethod
    def parse(cls, spec: Any, rule_id: str) -> Condition:
        if spec is None:
            return cls()
        if not isinstance(spec, dict):
            raise TransformError(f"rule {rule_id}: 'when' must be a mapping")
        unknown = set(spec) - cls.KEYS
        if unknown:
            raise TransformError(f"rule {rule_id}: unknown condition(s) {sorted(unknown)}; "
                                 f"known: {sorted(cls.KEYS)}")
        modality = tuple(m.strip().upper() for m in _str_list(spec.get("modality"), "modality", rule_id))
        regex: re.Pattern[str] | None = None
        names: tuple[str, ...] = ()
        manufacturer = spec.get("manufacturer")
        if isinstance(manufacturer, str):
            try:
                regex = re.compile(manufacturer, re.IGNORECASE)
            except re.error as exc:
                raise TransformError(f"rule {rule_id}: manufacturer regex {manufacturer!r}: {exc}") from exc
        elif manufacturer is not None:
            names = tuple(n.strip().casefold() for n in _str_list(manufacturer, "manufacturer", rule_id))
        creators = []
        pcs = spec.get("private_creator")
        for pc in ([] if pcs is None else pcs if isinstance(pcs, list) else [pcs]):
            if not isinstance(pc, dict) or set(pc) != {"group", "creator"}:
                raise TransformError(f"rule {rule_id}: private_creator needs exactly group and creator")
            group = _int_field(pc["group"], "group", rule_id)
            if group % 2 == 0:
                raise TransformError(f"rule {rule_id}: private group must be odd, got 0x{group:04X}")
            creators.append((group, str(pc["creator"])))
        present = tuple(parse_ref(r, rule_id) for r in _list(spec.get("present")))
        absent = tuple(parse_ref(r, rule_id) for r in _list(spec.get("absent")))
        return cls(modality, regex, names, tuple(creators), present, absent)

    def holds(self, ds: Dataset, lookup: _Lookup | None = None) -> bool:
        """Whether ``ds`` satisfies every test (``lookup``: answers shared with other rules)."""
        lookup = lookup if lookup is not None and lookup.ds is ds else _Lookup(ds)
        if self.modality and lookup.text("Modality").upper() not in self.modality:
            return False
        if self.manufacturer_regex is not None or self.manufacturer_names:
            manufacturer = lookup.text("Manufacturer")
            if self.manufacturer_regex is not None and not self.manufacturer_regex.search(manufacturer):
                return False
            if self.manufacturer_names and manufacturer.casefold() not in self.manufacturer_names:
                return False
        for group, creator in self.private_creators:
            if not lookup.has_creator(group, creator):
                return False
            try:
                ds.private_block(group, creator)
            except KeyError:
                return False
        if any(not _has_value(ds, ref, lookup) for ref in self.present):
            return False
        return all(not _has_value(ds, ref, lookup) for ref in self.absent)


class _Lookup:
    """What the rules of one :meth:`RuleSet.apply` ask of a dataset again and again, asked once.

    Valid for one version of the dataset: :meth:`RuleSet.apply` starts a new one after every rule
    that changed something, so no rule sees an answer from before an earlier rule's change.
    Elements are inspected without decoding their values where the answer does not need them
    (VR of a raw element, private creators of a group), which also leaves them to be written
    back as the bytes they were read from.
    """

    __slots__ = ("_creators", "_scan", "_text", "ds")

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self._text: dict[str, str] = {}
        self._creators: dict[int, list[Any]] = {}
        self._scan: list[tuple[int, str | None]] | None = None

    def text(self, keyword: str) -> str:
        """``str(ds.keyword)`` stripped, '' when absent or empty."""
        if keyword not in self._text:
            self._text[keyword] = str(self.ds.get(keyword, "") or "").strip()
        return self._text[keyword]

    def has_creator(self, group: int, creator: str) -> bool:
        """Whether a private block of ``creator`` exists in ``group`` (as ``Dataset.private_block``)."""
        values = self._creators.get(group)
        if values is None:
            # the same slice and comparison pydicom's private_block uses
            values = self._creators[group] = [el.value for el in self.ds[(group, 0x10):(group, 0x100)]]
        return any(v == creator for v in values)

    def scan(self) -> list[tuple[int, str | None]]:
        """``(tag, VR)`` of the top-level public elements a fix rule may look at, in dataset order.

        The VR is the one decoding would give (None when only decoding can tell: explicit UN).
        """
        if self._scan is None:
            self._scan = []
            for tag in list(self.ds.keys()):
                tag = int(tag)
                if tag & 0x10000 or tag >> 16 in (0x0002, 0xFFFE) or tag in _PROTECTED_TAGS:
                    continue  # private (odd group), file meta, delimiters, protected
                self._scan.append((tag, _vr_of(self.ds, tag)))
        return self._scan


def _vr_of(ds: Dataset, tag: int) -> str | None:
    """The VR ``ds[tag]`` would have, without decoding the element; None if decoding must decide.

    Mirrors pydicom's ``raw_element_vr`` hook for public tags: implicit VR takes the dictionary's
    (an unknown tag becomes UL for group lengths, else UN), an explicit VR other than UN is kept.
    Ambiguous dictionary VRs (``US or SS``...) are returned as they are; none is a text VR.
    """
    element = ds.get_item(tag)
    vr = element.VR
    if not element.is_raw:
        return vr
    if vr is None:
        try:
            return dictionary_VR(tag)
        except KeyError:
            return "UL" if tag & 0xFFFF == 0 else "UN"
    return None if vr == "UN" else vr


def _has_value(ds: Dataset, ref: ElementRef, lookup: _Lookup | None = None) -> bool:
    """Present means present with a value: an empty Type 2 element is as good as absent."""
    if isinstance(ref, PrivateRef) and lookup is not None and not lookup.has_creator(ref.group, ref.creator):
        return False
    tag = ref.find(ds)
    if tag is None:
        return False
    value = ds[tag].value
    return not (value is None or value == "" or value == b"" or (isinstance(value, list) and not value))


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _str_list(value: Any, name: str, rule_id: str) -> list[str]:
    items = _list(value)
    if not all(isinstance(v, str) for v in items):
        raise TransformError(f"rule {rule_id}: {name} must be a string or a list of strings")
    return items


# --- rules ----------------------------------------------------------------------------------
COMMON_KEYS = frozenset({"id", "description", "op", "reason", "when", "on_error"})
OP_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # op: (required, optional)
    "set": (frozenset({"element", "value"}), frozenset({"vr"})),
    "copy": (frozenset({"from", "to"}), frozenset({"vr", "from_vr"})),
    "move": (frozenset({"from", "to"}), frozenset({"vr", "from_vr"})),
    "delete": (frozenset({"element"}), frozenset()),
    "map-value": (frozenset({"element", "map"}), frozenset({"default"})),
    "regex": (frozenset({"element", "pattern", "replace"}), frozenset({"count"})),
    "truncate": (frozenset(), frozenset({"element", "vr"})),
    "normalize-datetime": (frozenset(), frozenset({"element", "vr", "on_invalid"})),
}
DEFAULT_REASON = {"truncate": CORRECT, "normalize-datetime": CORRECT}


@dataclass
class Rule:
    """One validated rule; :meth:`apply` changes a dataset in place and returns what changed."""

    id: str
    op: str
    reason: str
    when: Condition
    params: dict[str, Any]
    on_error: str = "fail"
    description: str = ""

    @classmethod
    def parse(cls, spec: Any, index: int) -> Rule:
        if not isinstance(spec, dict):
            raise TransformError(f"rule #{index + 1}: must be a mapping")
        rule_id = spec.get("id")
        if not isinstance(rule_id, str) or not rule_id.strip():
            raise TransformError(f"rule #{index + 1}: 'id' (a non-empty string) is required")
        op = spec.get("op")
        if op not in OP_KEYS:
            raise TransformError(f"rule {rule_id}: unknown op {op!r}; known: {sorted(OP_KEYS)}")
        required, optional = OP_KEYS[op]
        keys = set(spec)
        unknown = keys - COMMON_KEYS - required - optional
        if unknown:
            raise TransformError(f"rule {rule_id}: unknown field(s) {sorted(unknown)} for op {op}")
        missing = required - keys
        if missing:
            raise TransformError(f"rule {rule_id}: op {op} needs {sorted(missing)}")
        reason = spec.get("reason", DEFAULT_REASON.get(op, COERCE))
        if reason not in REASONS:
            raise TransformError(f"rule {rule_id}: reason must be one of {REASONS}, got {reason!r}")
        on_error = spec.get("on_error", "fail")
        if on_error not in ("fail", "skip"):
            raise TransformError(f"rule {rule_id}: on_error must be 'fail' or 'skip', got {on_error!r}")
        try:
            params = _parse_params(op, spec, rule_id)
        except TransformError as exc:
            if str(exc).startswith(f"rule {rule_id}:"):
                raise
            raise TransformError(f"rule {rule_id}: {exc}") from exc
        return cls(rule_id, op, reason, Condition.parse(spec.get("when"), rule_id), params, on_error,
                   str(spec.get("description", "")))

    def apply(self, ds: Dataset, lookup: _Lookup | None = None) -> list[Change]:
        """Apply to ``ds`` if the condition holds; raises :class:`TransformError` naming the rule.

        ``lookup`` (from :meth:`RuleSet.apply`) must describe ``ds`` as it is now.
        """
        lookup = lookup if lookup is not None and lookup.ds is ds else _Lookup(ds)
        if not self.when.holds(ds, lookup):
            return []
        try:
            return _OPS[self.op](self, ds, lookup)
        except TransformError as exc:
            message = str(exc) if str(exc).startswith(f"rule {self.id}:") else f"rule {self.id}: {exc}"
            if self.on_error == "skip":
                logger.warning("%s (skipped, instance %s)", message, ds.get("SOPInstanceUID", "?"))
                return []
            raise TransformError(message) from exc


def _vr_field(value: Any, rule_id: str) -> str:
    if not isinstance(value, str) or value not in V.MAX_LENGTH and value not in V.INT_RANGES \
            and value not in V.FLOAT_VRS and value not in V.TEXT_VRS:
        raise TransformError(f"rule {rule_id}: unsupported VR {value!r}")
    return value


def _parse_params(op: str, spec: dict[str, Any], rule_id: str) -> dict[str, Any]:
    p: dict[str, Any] = {}
    vr = _vr_field(spec["vr"], rule_id) if op in ("set", "copy", "move") and "vr" in spec else None
    if op == "set":
        p["element"] = parse_ref(spec["element"], rule_id, vr=vr)
        _require_vr(p["element"], rule_id)
        p["value"] = spec["value"]
        # A constant that cannot be stored is a rule-file bug: catch it at load time.
        if p["value"] is not None:
            V.convert(V.values_of(p["value"]), "LO" if isinstance(p["value"], str) else "FD",
                      p["element"].vr, p["element"].vm)
    elif op in ("copy", "move"):
        p["from"] = parse_ref(spec["from"], rule_id)
        p["to"] = parse_ref(spec["to"], rule_id, vr=vr)
        p["from_vr"] = _vr_field(spec["from_vr"], rule_id) if "from_vr" in spec else None
        _require_vr(p["to"], rule_id)
        if p["from"] == p["to"]:
            raise TransformError(f"rule {rule_id}: from and to are the same element")
    elif op == "delete":
        p["element"] = parse_ref(spec["element"], rule_id)
    elif op == "map-value":
        p["element"] = parse_ref(spec["element"], rule_id)
        mapping = spec["map"]
        if not isinstance(mapping, dict) or not mapping:
            raise TransformError(f"rule {rule_id}: map must be a non-empty mapping of old -> new")
        p["map"] = {str(k): ("" if v is None else str(v)) for k, v in mapping.items()}
        p["default"] = None if spec.get("default") is None else str(spec["default"])
        _require_text(p["element"], rule_id)
    elif op == "regex":
        p["element"] = parse_ref(spec["element"], rule_id)
        _require_text(p["element"], rule_id)
        try:
            p["pattern"] = re.compile(str(spec["pattern"]))
        except re.error as exc:
            raise TransformError(f"rule {rule_id}: pattern {spec['pattern']!r}: {exc}") from exc
        p["replace"] = str(spec["replace"])
        try:
            p["pattern"].sub(p["replace"], "")
        except (re.error, IndexError) as exc:
            raise TransformError(f"rule {rule_id}: replace {p['replace']!r}: {exc}") from exc
        p["count"] = _int_field(spec.get("count", 0), "count", rule_id)
    else:  # truncate, normalize-datetime
        allowed = V.TRUNCATABLE_VRS if op == "truncate" else V.DATETIME_VRS
        if ("element" in spec) == ("vr" in spec):
            raise TransformError(f"rule {rule_id}: op {op} needs exactly one of element or vr")
        if "element" in spec:
            ref = parse_ref(spec["element"], rule_id)
            if isinstance(ref, PrivateRef):
                raise TransformError(f"rule {rule_id}: {op} applies to standard elements only "
                                     "(private values are kept as the vendor wrote them)")
            if ref.vr not in allowed:
                raise TransformError(f"rule {rule_id}: {ref.keyword} has VR {ref.vr}; "
                                     f"{op} handles {sorted(allowed)}")
            p["elements"] = (ref,)
            p["vrs"] = frozenset()
        else:
            vrs = _str_list(spec["vr"], "vr", rule_id)
            bad = sorted(set(vrs) - allowed)
            if bad or not vrs:
                raise TransformError(f"rule {rule_id}: {op} handles VRs {sorted(allowed)}, got {bad or vrs}")
            p["elements"] = ()
            p["vrs"] = frozenset(vrs)
        if op == "normalize-datetime":
            p["on_invalid"] = spec.get("on_invalid", "empty")
            if p["on_invalid"] not in ("empty", "delete"):
                raise TransformError(f"rule {rule_id}: on_invalid must be 'empty' or 'delete'")
    return p


def _require_vr(ref: ElementRef, rule_id: str) -> None:
    if ref.vr in ("UN", "SQ", "OB", "OW", "OF", "OD", "OL", "OV", "AT", "UR") or ref.vr not in (
            V.TEXT_VRS | V.FLOAT_VRS | set(V.INT_RANGES)):
        raise TransformError(f"rule {rule_id}: cannot write {ref.describe()} (VR {ref.vr}); "
                             "give 'vr' for a private target")


def _require_text(ref: ElementRef, rule_id: str) -> None:
    vr = ref.vr
    if vr not in V.TEXT_VRS and vr != "UN":
        raise TransformError(f"rule {rule_id}: {ref.describe()} has VR {vr}; this op works on text values")


# --- operations -----------------------------------------------------------------------------
def _snapshot(ds: Dataset, tag: int) -> DataElement | None:
    return copy.deepcopy(ds[tag]) if tag in ds else None


def _change(rule: Rule, ds: Dataset, tag: int, ref: ElementRef, before: DataElement | None,
            action: str, **extra: Any) -> Change:
    after = ds[tag].value if tag in ds else None
    vr = ds[tag].VR if tag in ds else (before.VR if before is not None else ref.vr)
    return Change(tag=tag_str(tag), keyword=ref.describe(), action=action,
                  old=None if before is None else V.plain(before.value), new=V.plain(after),
                  rule_id=rule.id, reason=rule.reason, original=before,
                  private_creator=ref.creator if isinstance(ref, PrivateRef) else None, vr=vr, **extra)


def _write(ds: Dataset, ref: ElementRef, value: Any) -> int:
    tag = ref.target(ds)
    if value is None and ref.vr in V.TEXT_VRS:
        value = ""  # "set to empty" keeps a Type 2 attribute present
    if tag in ds:
        ds[tag].value = value
    else:
        ds.add(DataElement(tag, ref.vr, value))
    return tag


def _same(ds: Dataset, tag: int, value: Any) -> bool:
    """Whether the element already holds ``value`` (compared as text, value by value)."""
    if tag not in ds:
        return False
    return [str(v) for v in V.values_of(ds[tag].value)] == [str(v) for v in V.values_of(value)]


def _op_set(rule: Rule, ds: Dataset, lookup: _Lookup | None = None) -> list[Change]:
    ref: ElementRef = rule.params["element"]
    raw = rule.params["value"]
    value = None if raw is None else V.convert(
        V.values_of(raw), "LO" if isinstance(raw, str) else "FD", ref.vr, ref.vm)
    tag = ref.find(ds)
    if tag is not None and _same(ds, tag, value):
        return []
    before = _snapshot(ds, tag) if tag is not None else None
    tag = _write(ds, ref, value)
    return [_change(rule, ds, tag, ref, before, "set")]


def _op_copy(rule: Rule, ds: Dataset, lookup: _Lookup | None = None) -> list[Change]:
    src: ElementRef = rule.params["from"]
    dst: ElementRef = rule.params["to"]
    src_tag = src.find(ds)
    if src_tag is None:
        return []
    vals, src_vr = V.source_values(ds[src_tag], ds, rule.params["from_vr"] or (
        src.vr if isinstance(src, PrivateRef) and src.vr != "UN" else None))
    if not vals:
        return []  # an empty source carries nothing to copy; a move leaves it in place
    value = V.convert(vals, src_vr, dst.vr, dst.vm)
    changes: list[Change] = []
    dst_tag = dst.find(ds)
    if not (dst_tag is not None and _same(ds, dst_tag, value)):
        before = _snapshot(ds, dst_tag) if dst_tag is not None else None
        dst_tag = _write(ds, dst, value)
        changes.append(_change(rule, ds, dst_tag, dst, before, rule.op))
    if rule.op == "move":
        before = _snapshot(ds, src_tag)
        del ds[src_tag]
        changes.append(_change(rule, ds, src_tag, src, before, "move-from"))
    return changes


def _op_delete(rule: Rule, ds: Dataset, lookup: _Lookup | None = None) -> list[Change]:
    ref: ElementRef = rule.params["element"]
    tag = ref.find(ds)
    if tag is None:
        return []
    before = _snapshot(ds, tag)
    del ds[tag]
    return [_change(rule, ds, tag, ref, before, "delete")]


def _text_values(ds: Dataset, tag: int) -> tuple[list[str], bool]:
    element = ds[tag]
    vals, _ = V.source_values(element, ds)
    return [str(v) for v in vals], element.VR in V.SINGLE_VALUE_TEXT_VRS


def _rewrite_text(rule: Rule, ds: Dataset, fn: Callable[[str], str]) -> list[Change]:
    ref: ElementRef = rule.params["element"]
    tag = ref.find(ds)
    if tag is None:
        return []
    vals, _single = _text_values(ds, tag)
    new_vals = [fn(v) for v in vals]
    if new_vals == vals:
        return []
    before = _snapshot(ds, tag)
    vr = ds[tag].VR if ds[tag].VR != "UN" else "LO"
    checked = [V.convert_one(v, "LO", vr) if v else "" for v in new_vals]
    ds[tag].value = checked[0] if len(checked) == 1 else checked
    return [_change(rule, ds, tag, ref, before, rule.op)]


def _op_map(rule: Rule, ds: Dataset, lookup: _Lookup | None = None) -> list[Change]:
    mapping: dict[str, str] = rule.params["map"]
    default: str | None = rule.params["default"]

    def fn(value: str) -> str:
        key = value.strip()
        if key in mapping:
            return mapping[key]
        return default if default is not None else value

    return _rewrite_text(rule, ds, fn)


def _op_regex(rule: Rule, ds: Dataset, lookup: _Lookup | None = None) -> list[Change]:
    pattern: re.Pattern[str] = rule.params["pattern"]
    replace, count = rule.params["replace"], rule.params["count"]
    return _rewrite_text(rule, ds, lambda v: pattern.sub(replace, v, count=count))


def _candidates(rule: Rule, ds: Dataset, lookup: _Lookup) -> Iterable[tuple[int, ElementRef]]:
    """Top-level standard elements a fix rule looks at (private ones are never fixed)."""
    for ref in rule.params["elements"]:
        tag = ref.find(ds)
        if tag is not None:
            yield tag, ref
    vrs = rule.params["vrs"]
    if vrs:
        for tag, vr in lookup.scan():
            if tag in ds and (vr in vrs or (vr is None and ds[tag].VR in vrs)):
                yield tag, StandardRef(tag)


def _raw_value(ds: Dataset, tag: int) -> bytes | None:
    """The undecoded bytes of ``ds[tag]`` (b'' for an empty one), None once it has been decoded."""
    element = ds.get_item(tag)
    if not element.is_raw:
        return None
    return element.value or b""


def _fits(raw: bytes, vr: str) -> bool:
    """Whether a raw value is certainly within ``vr``'s length limit: decoding yields at most one
    character per byte, so a value of at most ``limit`` bytes cannot hold a longer value (for PN,
    a longer component group)."""
    return len(raw) <= V.MAX_LENGTH[vr]


def _valid_raw_datetime(raw: bytes, vr: str) -> bool:
    """Whether a raw DA/TM/DT value certainly holds only valid values (False: decode and check)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return False
    if "\0" in text:
        return False
    return all(V.is_valid_datetime(v, vr) for v in text.split("\\"))


def _encoded(ds: Dataset, element: DataElement) -> bytes:
    """The value's bytes in the dataset's character set (what NonconformingDataElementValue keeps)."""
    vals = [str(v) for v in V.values_of(element.value)]
    return encode_string("\\".join(vals), convert_encodings(ds.get("SpecificCharacterSet")))


def _op_truncate(rule: Rule, ds: Dataset, lookup: _Lookup | None = None) -> list[Change]:
    changes = []
    lookup = lookup or _Lookup(ds)
    for tag, ref in _candidates(rule, ds, lookup):
        raw, vr = _raw_value(ds, tag), _vr_of(ds, tag)
        if raw is not None and vr in V.TRUNCATABLE_VRS and _fits(raw, vr):
            continue  # short enough as read: no need to decode it
        element = ds[tag]
        if element.VR not in V.TRUNCATABLE_VRS or isinstance(element.value, bytes):
            continue
        limit = V.MAX_LENGTH[element.VR]
        vals = [str(v) for v in V.values_of(element.value)]
        if element.VR == "PN":
            new_vals = ["=".join(g[:limit] for g in v.split("=")) for v in vals]
        else:
            new_vals = [v[:limit] for v in vals]
        if new_vals == vals:
            continue
        before = _snapshot(ds, tag)
        original_bytes = _encoded(ds, element)
        element.value = new_vals[0] if len(new_vals) == 1 else new_vals
        changes.append(_change(rule, ds, tag, ref, before, "truncate", nonconforming=True,
                               original_bytes=original_bytes))
    return changes


def _op_normalize_datetime(rule: Rule, ds: Dataset, lookup: _Lookup | None = None) -> list[Change]:
    changes = []
    lookup = lookup or _Lookup(ds)
    for tag, ref in _candidates(rule, ds, lookup):
        raw, vr = _raw_value(ds, tag), _vr_of(ds, tag)
        if raw is not None and vr in V.DATETIME_VRS and _valid_raw_datetime(raw, vr):
            continue  # valid as read: no need to decode it
        element = ds[tag]
        if element.VR not in V.DATETIME_VRS:
            continue
        vals = [str(v) for v in V.values_of(element.value)]
        if all(V.is_valid_datetime(v, element.VR) for v in vals):
            continue
        fixed = [V.normalise_datetime(v, element.VR) for v in vals]
        before = _snapshot(ds, tag)
        original_bytes = _encoded(ds, element)
        if all(f is not None for f in fixed):
            element.value = fixed[0] if len(fixed) == 1 else fixed
            action = "normalize-datetime"
        elif rule.params["on_invalid"] == "delete":
            del ds[tag]
            action = "delete-invalid"
        else:
            element.value = ""
            action = "empty-invalid"
        changes.append(_change(rule, ds, tag, ref, before, action, nonconforming=True,
                               original_bytes=original_bytes))
    return changes


_OPS: dict[str, Callable[[Rule, Dataset, _Lookup | None], list[Change]]] = {
    "set": _op_set, "copy": _op_copy, "move": _op_copy, "delete": _op_delete, "map-value": _op_map,
    "regex": _op_regex, "truncate": _op_truncate, "normalize-datetime": _op_normalize_datetime,
}


class RuleSet:
    """An ordered list of validated rules.

    Examples
    --------
    >>> rules = RuleSet.from_yaml(default_rules_path())
    >>> len(rules) > 0
    True
    """

    def __init__(self, rules: list[Rule], name: str = "") -> None:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise TransformError(f"rule {rule.id}: duplicate rule id in {name or 'rule set'}")
            seen.add(rule.id)
        self.rules = rules
        self.name = name

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self):  # noqa: ANN204 - Iterator[Rule]
        return iter(self.rules)

    @classmethod
    def from_dict(cls, spec: Any, name: str = "") -> RuleSet:
        """Build from the parsed YAML document (``{version: 1, rules: [...]}``)."""
        if not isinstance(spec, dict) or not isinstance(spec.get("rules"), list):
            raise TransformError(f"{name or 'rule file'}: expected a mapping with a 'rules' list")
        unknown = set(spec) - {"version", "description", "rules"}
        if unknown:
            raise TransformError(f"{name or 'rule file'}: unknown top-level field(s) {sorted(unknown)}")
        if spec.get("version", 1) != 1:
            raise TransformError(f"{name or 'rule file'}: unsupported version {spec.get('version')!r}")
        return cls([Rule.parse(r, i) for i, r in enumerate(spec["rules"])], name)

    @classmethod
    def from_yaml(cls, path: Path) -> RuleSet:
        """Load and validate a rule file.

        Parsed rule sets are kept per process, keyed by path and file content, so a worker
        transforming many studies parses the file once; an edited file is parsed again. Rule
        sets are not changed by :meth:`apply`, so sharing one is safe.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TransformError(f"{path}: cannot read rule file: {exc}") from exc
        key = (str(path), text)
        cached = _PARSED.get(key)
        if cached is not None:
            return cached
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TransformError(f"{path}: cannot read rule file: {exc}") from exc
        rules = cls.from_dict(spec, str(path))
        if len(_PARSED) >= 8:
            _PARSED.clear()
        _PARSED[key] = rules
        return rules

    def apply(self, ds: Dataset) -> list[Change]:
        """Apply every rule in order to ``ds`` (in place); returns the changes in order."""
        changes: list[Change] = []
        lookup = _Lookup(ds)
        for rule in self.rules:
            new = rule.apply(ds, lookup)
            if new:
                changes.extend(new)
                lookup = _Lookup(ds)  # the dataset changed: earlier answers may be stale
        return changes


#: Rule sets parsed by :meth:`RuleSet.from_yaml`, by (path, content).
_PARSED: dict[tuple[str, str], RuleSet] = {}


def default_rules_path() -> Path:
    """The shipped rule set: ``include/rules/default.yaml`` in a checkout, package data when installed."""
    checkout = Path(__file__).resolve().parents[2] / "rules" / "default.yaml"
    if checkout.is_file():
        return checkout
    from importlib import resources

    packaged = Path(str(resources.files("pacsmig.transform").joinpath("rule_files", "default.yaml")))
    if packaged.is_file():
        return packaged
    raise TransformError("default rule file not found (include/rules/default.yaml)")


__all__ = ["COERCE", "CORRECT", "Change", "Condition", "PrivateRef", "Rule", "RuleSet", "StandardRef",
           "default_rules_path", "parse_ref", "tag_str"]
