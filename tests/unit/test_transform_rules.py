"""Unit tests of the coercion rules engine: every op and condition, validation, provenance."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from transform_testkit import make_dataset, private_values

from pacsmig.errors import TransformError
from pacsmig.transform.provenance import record_original_attributes
from pacsmig.transform.rules import RuleSet, default_rules_path

GE = "GEMS_GDXE_FALCON_04"
SIE_GEN = "SIEMENS CT VA0  GEN"
WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def rules(*specs: dict) -> RuleSet:
    return RuleSet.from_dict({"version": 1, "rules": list(specs)}, "test")


def ge_dx(slot: int, dei: object = "345.6", vr: str = "DS", **attrs: object) -> Dataset:
    # Another creator takes the slots before GE's so the GE block really moves.
    blocks = [(0x0011, s, f"OTHER_{s:02X}", [(0x01, "LO", "x")]) for s in range(0x10, slot)]
    blocks.append((0x0011, slot, GE, [(0x33, vr, dei), (0x04, "CS", "STANDARD")]))
    return make_dataset(modality="DX", manufacturer="GE Healthcare", blocks=blocks, **attrs)


COPY_DEI = {"id": "dei", "op": "copy", "from": {"group": 0x0011, "creator": GE, "offset": 0x33},
            "to": "ExposureIndex", "when": {"absent": "ExposureIndex"}}


# --- private addressing ---------------------------------------------------------------------
@pytest.mark.parametrize("slot", [0x10, 0x11, 0x13])
def test_copy_finds_private_element_in_any_slot(slot: int) -> None:
    ds = ge_dx(slot)
    assert (0x0011 << 16 | slot << 8 | 0x33) in ds  # the block really is in that slot
    changes = rules(COPY_DEI).apply(ds)
    assert ds.ExposureIndex == 345.6
    assert ds["ExposureIndex"].VR == "DS" and str(ds.ExposureIndex) == "345.6"
    assert [(c.keyword, c.action, c.old, c.new, c.rule_id, c.reason) for c in changes] == [
        ("ExposureIndex", "copy", None, "345.6", "dei", "COERCE")]
    # copy keeps the private original
    assert private_values(ds)[(GE, 0x0011, 0x33)] == "345.6"


def test_absolute_private_tag_is_rejected() -> None:
    with pytest.raises(TransformError, match="rule bad: .*creator, offset"):
        rules({"id": "bad", "op": "delete", "element": "(0011,1033)"})


def test_un_private_value_converted_with_dictionary_vr() -> None:
    ds = ge_dx(0x12, dei=b"812.5 ", vr="UN")
    rules(COPY_DEI).apply(ds)
    assert str(ds.ExposureIndex) == "812.5"


def test_un_binary_value_read_with_from_vr() -> None:
    import struct

    ds = make_dataset(blocks=[(0x0019, 0x10, "ACME 1", [(0x05, "UN", struct.pack("<f", 12.5))])])
    rs = rules({"id": "fl", "op": "copy", "from": {"group": 0x0019, "creator": "ACME 1", "offset": 5},
                "from_vr": "FL", "to": "KVP"})
    rs.apply(ds)
    assert str(ds.KVP) == "12.5"


def test_fl_to_ds_does_not_invent_digits() -> None:
    ds = make_dataset(modality="MR",
                      blocks=[(0x2001, 0x10, "Philips Imaging DD 001", [(0x03, "FL", 1000.1)])])
    rules({"id": "b", "op": "copy", "from": {"group": 0x2001, "creator": "Philips Imaging DD 001",
                                             "offset": 3}, "to": "KVP"}).apply(ds)
    assert str(ds.KVP) == "1000.1"


def test_ds_to_is_refuses_fraction_and_skip_leaves_dataset() -> None:
    spec = {"id": "cur", "op": "copy", "from": {"group": 0x0019, "creator": SIE_GEN, "offset": 0x21},
            "to": "XRayTubeCurrent"}
    ds = make_dataset(blocks=[(0x0019, 0x10, SIE_GEN, [(0x21, "DS", "250.5")])])
    with pytest.raises(TransformError, match="rule cur: .*not an integer"):
        rules(spec).apply(ds)
    assert rules({**spec, "on_error": "skip"}).apply(ds) == []
    assert "XRayTubeCurrent" not in ds
    ds2 = make_dataset(blocks=[(0x0019, 0x11, SIE_GEN, [(0x21, "DS", "250.0")])])
    rules(spec).apply(ds2)
    assert ds2.XRayTubeCurrent == 250


# --- operations -----------------------------------------------------------------------------
def test_set_standard_and_private() -> None:
    ds = make_dataset()
    rs = rules({"id": "inst", "op": "set", "element": "InstitutionName", "value": "General Hospital"},
               {"id": "mark", "op": "set", "element": {"group": 0x0071, "creator": "PACSMIG", "offset": 0x01},
                "vr": "LO", "value": "migrated"})
    changes = rs.apply(ds)
    assert ds.InstitutionName == "General Hospital"
    assert ds.private_block(0x0071, "PACSMIG")[0x01].value == "migrated"
    assert [c.action for c in changes] == ["set", "set"]
    assert rs.apply(ds) == []  # already set: no change recorded twice


def test_set_private_needs_vr() -> None:
    with pytest.raises(TransformError, match="rule p: .*give 'vr'"):
        rules({"id": "p", "op": "set", "element": {"group": 0x0071, "creator": "X", "offset": 1}, "value": 1})


def test_move_private_to_standard_records_private_original() -> None:
    ds = ge_dx(0x12)
    changes = rules({"id": "mv", "op": "move", "from": {"group": 0x0011, "creator": GE, "offset": 0x33},
                     "to": "ExposureIndex"}).apply(ds)
    assert str(ds.ExposureIndex) == "345.6"
    assert (GE, 0x0011, 0x33) not in private_values(ds)
    assert [c.action for c in changes] == ["move", "move-from"]
    record_original_attributes(ds, changes, WHEN)
    mod = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    # the removed private element is kept, in a block of its own creator
    assert mod.private_block(0x0011, GE)[0x33].value == "345.6"
    assert "ExposureIndex" in mod and mod["ExposureIndex"].is_empty


def test_delete() -> None:
    ds = make_dataset(InstitutionName="Old Name")
    changes = rules({"id": "d", "op": "delete", "element": "InstitutionName"}).apply(ds)
    assert "InstitutionName" not in ds
    assert (changes[0].old, changes[0].new) == ("Old Name", None)


def test_map_value_multivalued_and_default() -> None:
    ds = make_dataset(BodyPartExamined="THORAX", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    rs = rules({"id": "bp", "op": "map-value", "element": "BodyPartExamined", "map": {"THORAX": "CHEST"}},
               {"id": "it", "op": "map-value", "element": "ImageType", "map": {"AXIAL": "AXIAL_"[:5]},
                "default": None},
               {"id": "it2", "op": "map-value", "element": "ImageType", "map": {"PRIMARY": "SECONDARY"}})
    changes = rs.apply(ds)
    assert ds.BodyPartExamined == "CHEST"
    assert list(ds.ImageType) == ["ORIGINAL", "SECONDARY", "AXIAL"]
    assert [c.rule_id for c in changes] == ["bp", "it2"]


def test_regex_substitute() -> None:
    ds = make_dataset(AccessionNumber="ACC-000123")
    changes = rules({"id": "acc", "op": "regex", "element": "AccessionNumber", "pattern": r"^ACC-0*",
                     "replace": "A"}).apply(ds)
    assert ds.AccessionNumber == "A123"
    assert changes[0].old == "ACC-000123"


def test_regex_result_must_fit_vr() -> None:
    ds = make_dataset(AccessionNumber="A1")
    with pytest.raises(TransformError, match="rule long: .*longer than SH"):
        rules({"id": "long", "op": "regex", "element": "AccessionNumber", "pattern": "A",
               "replace": "X" * 20}).apply(ds)


def test_truncate_lo_sh_pn_groups() -> None:
    ds = make_dataset(InstitutionName="I" * 70, StationName="S" * 20,
                      PatientName=("F" * 40 + "^" + "G" * 30) + "=" + "I" * 10)
    changes = rules({"id": "t", "op": "truncate", "vr": ["LO", "SH", "PN"]}).apply(ds)
    assert ds.InstitutionName == "I" * 64
    assert ds.StationName == "S" * 16
    alphabetic, ideographic = str(ds.PatientName).split("=")
    assert len(alphabetic) == 64 and ideographic == "I" * 10
    assert {c.keyword for c in changes} == {"InstitutionName", "StationName", "PatientName"}
    assert all(c.reason == "CORRECT" for c in changes)
    full = {c.keyword: c.old for c in changes}
    assert full["InstitutionName"] == "I" * 70  # the full original is recorded


def test_truncate_never_touches_private() -> None:
    ds = make_dataset(blocks=[(0x0019, 0x10, "ACME 1", [(0x01, "LO", "P" * 80)])])
    assert rules({"id": "t", "op": "truncate", "vr": ["LO"]}).apply(ds) == []
    assert private_values(ds)[("ACME 1", 0x0019, 0x01)] == "P" * 80


@pytest.mark.parametrize(("vr_keyword", "value", "expected", "action"), [
    ("StudyDate", "2020-01-31", "20200131", "normalize-datetime"),
    ("StudyDate", "2020.01.31", "20200131", "normalize-datetime"),
    ("StudyDate", "31/01/2020", "", "empty-invalid"),
    ("StudyDate", "20201341", "", "empty-invalid"),
    ("StudyTime", "10:15:30", "101530", "normalize-datetime"),
    ("StudyTime", "256000", "", "empty-invalid"),
    ("AcquisitionDateTime", "2020-01-31T10:15:30", "20200131101530", "normalize-datetime"),
])
def test_normalize_datetime(vr_keyword: str, value: str, expected: str, action: str) -> None:
    ds = make_dataset(**{vr_keyword: value})
    changes = rules({"id": "dt", "op": "normalize-datetime", "vr": ["DA", "TM", "DT"]}).apply(ds)
    assert getattr(ds, vr_keyword) == expected
    assert [(c.keyword, c.action, c.old) for c in changes] == [(vr_keyword, action, value)]


def test_normalize_datetime_delete_and_valid_untouched() -> None:
    ds = make_dataset(SeriesDate="unknown")
    rs = rules({"id": "dt", "op": "normalize-datetime", "vr": ["DA"], "on_invalid": "delete"})
    changes = rs.apply(ds)
    assert "SeriesDate" not in ds and ds.StudyDate == "20200131"
    assert [c.action for c in changes] == ["delete-invalid"]


# --- conditions -----------------------------------------------------------------------------
SET_MARK = {"id": "m", "op": "set", "element": "InstitutionName", "value": "hit"}


@pytest.mark.parametrize(("when", "hit"), [
    ({"modality": "CT"}, True),
    ({"modality": ["MR", "ct"]}, True),
    ({"modality": "MR"}, False),
    ({"manufacturer": "^siem"}, True),
    ({"manufacturer": "^GE"}, False),
    ({"manufacturer": ["Siemens", "Siemens Healthineers"]}, True),
    ({"manufacturer": ["SIEMENS AG"]}, False),
    ({"private_creator": {"group": 0x0019, "creator": SIE_GEN}}, True),
    ({"private_creator": {"group": 0x0021, "creator": SIE_GEN}}, False),
    ({"present": {"group": 0x0019, "creator": SIE_GEN, "offset": 0x21}}, True),
    ({"present": {"group": 0x0019, "creator": SIE_GEN, "offset": 0x22}}, False),
    ({"present": "StudyDate"}, True),
    ({"absent": "StudyDate"}, False),
    ({"absent": ["ExposureIndex", "KVP"]}, True),
    ({"modality": "CT", "absent": "StudyDate"}, False),
])
def test_conditions(when: dict, hit: bool) -> None:
    ds = make_dataset(blocks=[(0x0019, 0x11, SIE_GEN, [(0x21, "IS", 250)])])
    changes = rules({**SET_MARK, "when": when}).apply(ds)
    assert ("InstitutionName" in ds) is hit
    assert bool(changes) is hit


def test_empty_element_counts_as_absent() -> None:
    ds = make_dataset(ExposureIndex=None)
    ds2 = ge_dx(0x10)
    ds2.ExposureIndex = None
    rules(COPY_DEI).apply(ds2)
    assert str(ds2.ExposureIndex) == "345.6"
    assert rules({**SET_MARK, "when": {"present": "ExposureIndex"}}).apply(ds) == []


def test_xray_tube_current_only_when_absent() -> None:
    rs = RuleSet.from_yaml(default_rules_path())
    ds = make_dataset(blocks=[(0x0019, 0x10, SIE_GEN, [(0x21, "IS", 250)])], XRayTubeCurrent=180)
    rs.apply(ds)
    assert ds.XRayTubeCurrent == 180


# --- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "message"), [
    ({"id": "a", "op": "frobnicate"}, "rule a: unknown op"),
    ({"id": "b", "op": "delete", "element": "StudyDate", "colour": 1}, r"rule b: unknown field.*colour"),
    ({"id": "c", "op": "delete"}, r"rule c: op delete needs \['element'\]"),
    ({"id": "d", "op": "delete", "element": "NoSuchKeyword"}, "rule d: unknown DICOM keyword"),
    ({"id": "e", "op": "delete", "element": "SOPInstanceUID"}, "rule e: SOPInstanceUID is protected"),
    ({"id": "f", "op": "delete", "element": "PixelData"}, "rule f: PixelData is protected"),
    ({"id": "g", "op": "set", "element": "StudyDate", "value": "x", "reason": "WHIM"}, "rule g: reason"),
    ({"id": "h", "op": "regex", "element": "StudyID", "pattern": "(", "replace": ""}, "rule h: pattern"),
    ({"id": "i", "op": "set", "element": "KVP", "value": "high"}, "rule i: .*not a number"),
    ({"id": "j", "op": "delete", "element": "StudyDate", "when": {"weather": "sunny"}},
     "rule j: unknown cond"),
    ({"id": "k", "op": "copy", "from": {"group": 0x0018, "creator": "X", "offset": 1}, "to": "KVP"},
     "rule k: private group must be odd"),
    ({"id": "l", "op": "copy", "from": {"group": 0x0019, "creator": "X"}, "to": "KVP"}, r"rule l: .*missing"),
    ({"id": "m", "op": "truncate", "vr": ["DS"]}, "rule m: truncate handles"),
    ({"id": "n", "op": "truncate", "element": "StudyDate"}, "rule n: StudyDate has VR DA"),
    ({"id": "o", "op": "delete", "element": "(0002,0010)"}, "rule o: file meta"),
    ({"op": "delete", "element": "StudyDate"}, r"rule #1: 'id'"),
])
def test_invalid_rules_rejected_naming_the_rule(spec: dict, message: str) -> None:
    with pytest.raises(TransformError, match=message):
        rules(spec)


def test_duplicate_ids_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(TransformError, match="rule x: duplicate"):
        rules({"id": "x", "op": "delete", "element": "StudyID"},
              {"id": "x", "op": "delete", "element": "StudyID"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [\n")
    with pytest.raises(TransformError, match="cannot read rule file"):
        RuleSet.from_yaml(bad)
    bad.write_text("just: text\n")
    with pytest.raises(TransformError, match="'rules' list"):
        RuleSet.from_yaml(bad)


# --- default rules --------------------------------------------------------------------------
def test_default_rules_load_and_cover_required_mappings() -> None:
    rs = RuleSet.from_yaml(default_rules_path())
    by_id = {r.id: r for r in rs}
    required = {("GEMS_GDXE_FALCON_04", 0x33, "ExposureIndex"),
                ("SIEMENS DFR.01 ORIGINAL", 0x42, "ImageAndFluoroscopyAreaDoseProduct"),
                ("SIEMENS CT VA0  GEN", 0x21, "XRayTubeCurrent")}
    found = {(r.params["from"].creator, r.params["from"].offset, r.params["to"].keyword)
             for r in rs if r.op == "copy"}
    assert required <= found
    assert by_id["siemens-ct-tube-current"].when.absent[0].keyword == "XRayTubeCurrent"


@pytest.mark.parametrize(("modality", "manufacturer", "block", "keyword", "expected"), [
    ("DX", "GE Healthcare", (0x0011, GE, 0x33, "DS", "412.5"), "ExposureIndex", "412.5"),
    ("XA", "SIEMENS", (0x0017, "SIEMENS DFR.01 ORIGINAL", 0x42, "DS", "1234.5"),
     "ImageAndFluoroscopyAreaDoseProduct", "1234.5"),
    ("CT", "SIEMENS", (0x0019, SIE_GEN, 0x21, "IS", 310), "XRayTubeCurrent", "310"),
    ("CT", "SIEMENS", (0x0019, SIE_GEN, 0x26, "DS", "120"), "KVP", "120"),
    ("MR", "Philips Medical Systems", (0x2001, "Philips Imaging DD 001", 0x03, "FL", 1000.0),
     "DiffusionBValue", "1000.0"),
])
@pytest.mark.parametrize("slot", [0x10, 0x12])
def test_default_rules_fire(modality: str, manufacturer: str, block: tuple, keyword: str, expected: str,
                            slot: int) -> None:
    group, creator, offset, vr, value = block
    blocks = [(group, 0x10, "FILLER", [(0x01, "LO", "f")])] if slot > 0x10 else []
    blocks.append((group, slot, creator, [(offset, vr, value)]))
    ds = make_dataset(modality=modality, manufacturer=manufacturer, blocks=blocks)
    before = private_values(ds)
    changes = RuleSet.from_yaml(default_rules_path()).apply(ds)
    assert str(getattr(ds, keyword)) == expected
    assert keyword in {c.keyword for c in changes}
    assert private_values(ds) == before  # every private element still there, unchanged


# --- provenance -----------------------------------------------------------------------------
def test_original_attributes_sequence_one_item_per_reason() -> None:
    ds = ge_dx(0x11, InstitutionName="X" * 70, StudyDate="2020-01-31")
    ds.OriginalAttributesSequence = [Dataset()]  # an earlier system's item must be kept
    ds.OriginalAttributesSequence[0].ModifyingSystem = "OLDPACS"
    rs = rules({"id": "fix", "op": "truncate", "vr": ["LO"]},
               {"id": "dt", "op": "normalize-datetime", "vr": ["DA"]},
               COPY_DEI,
               {"id": "inst", "op": "set", "element": "InstitutionName", "value": "Renamed"})
    changes = rs.apply(ds)
    assert record_original_attributes(ds, changes, WHEN) == 2
    items = ds.OriginalAttributesSequence
    assert [i.ModifyingSystem for i in items] == ["OLDPACS", "PACSMIG", "PACSMIG"]
    correct, coerce = items[1], items[2]
    assert correct.ReasonForTheAttributeModification == "CORRECT"
    assert coerce.ReasonForTheAttributeModification == "COERCE"
    assert correct.AttributeModificationDateTime == "20240506070809.123456+0000"
    assert "SourceOfPreviousValues" in correct
    assert len(correct.ModifiedAttributesSequence) == 1
    mod = correct.ModifiedAttributesSequence[0]
    # nonconforming values: zero length in Modified, original bytes in Nonconforming
    assert mod["InstitutionName"].is_empty and mod["StudyDate"].is_empty
    nonconf = {int(i.SelectorAttribute): i.NonconformingDataElementValue
               for i in correct.NonconformingModifiedAttributesSequence}
    assert nonconf[0x00080080] == b"X" * 70
    assert nonconf[0x00080020] == b"2020-01-31"
    cmod = coerce.ModifiedAttributesSequence[0]
    assert cmod["ExposureIndex"].is_empty  # added: zero length
    assert cmod.InstitutionName == "X" * 64  # replaced: the value before this reason's change
    assert "NonconformingModifiedAttributesSequence" not in coerce


def test_no_changes_no_item() -> None:
    ds = make_dataset()
    assert record_original_attributes(ds, [], WHEN) == 0
    assert "OriginalAttributesSequence" not in ds


# --- answers shared between the rules of one apply ---------------------------------------------
def test_later_rules_see_what_earlier_rules_changed() -> None:
    """Creators, texts and the element scan are shared between rules, never across a change."""
    mark = {"group": 0x0029, "creator": "PACSMIG TEST", "offset": 0x01}
    rs = rules(
        {"id": "unless-mr", "op": "set", "element": "InstitutionName", "value": "CT only",
         "when": {"modality": "MR"}},
        {"id": "to-mr", "op": "set", "element": "Modality", "value": "MR"},
        {"id": "if-mr", "op": "set", "element": "StationName", "value": "now MR", "when": {"modality": "MR"}},
        {"id": "mark", "op": "set", "element": mark, "vr": "LO", "value": "x"},
        {"id": "if-marked", "op": "set", "element": "OperatorsName", "value": "Doe^J",
         "when": {"private_creator": {"group": 0x0029, "creator": "PACSMIG TEST"}, "present": mark}},
        {"id": "cut", "op": "truncate", "vr": ["LO"]},
        {"id": "drop", "op": "delete", "element": "SeriesDescription"},
        {"id": "cut-again", "op": "truncate", "vr": ["LO"]},
    )
    ds = make_dataset(modality="CT", StudyDescription="D" * 70, SeriesDescription="S" * 70)
    changes = rs.apply(ds)
    assert [(c.rule_id, c.keyword) for c in changes] == [
        ("to-mr", "Modality"), ("if-mr", "StationName"), ("mark", "PACSMIG TEST (0029,xx01)"),
        ("if-marked", "OperatorsName"), ("cut", "StudyDescription"), ("cut", "SeriesDescription"),
        ("drop", "SeriesDescription")]
    assert "InstitutionName" not in ds
    assert ds.StationName == "now MR" and ds.OperatorsName == "Doe^J"
    assert ds.StudyDescription == "D" * 64
