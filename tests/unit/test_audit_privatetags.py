"""Private-tag audit on datasets built here, with one creator's block in different slots."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsmig.audit.privatetags import audit_datasets, is_clinical, private_name


def _ct(slot: int, other_slot: int) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "CT", "SIEMENS", "SOMATOM"
    ds.add_new((0x0019, slot), "LO", "SIEMENS CT VA0  GEN")
    ds.add_new((0x0019, (slot << 8) | 0x21), "IS", "250")  # Exposure current
    ds.add_new((0x0019, (slot << 8) | 0x26), "DS", "120")  # Generator Voltage current
    ds.add_new((0x0019, other_slot), "LO", "SIEMENS CT VA0  COAD")
    ds.add_new((0x0019, (other_slot << 8) | 0x54), "DS", "0.5")  # Rotation Time
    return ds


def test_blocks_are_keyed_by_creator_and_offset_not_slot() -> None:
    table = audit_datasets([_ct(0x10, 0x11), _ct(0x12, 0x10)])
    keyed = {(r.private_creator, r.group, r.element_offset): r for r in table.itertuples()}
    gen = keyed[("SIEMENS CT VA0  GEN", 0x0019, 0x21)]
    assert (gen.count, gen.instances, gen.slots) == (2, 2, "0x10;0x12")
    assert gen.name == "Exposure current" and gen.vr == "IS" and gen.known
    assert gen.clinical and gen.needs_coercion_rule and gen.tag_mask == "(0019,xx21)"
    assert keyed[("SIEMENS CT VA0  GEN", 0x0019, 0x26)].needs_coercion_rule
    rotation = keyed[("SIEMENS CT VA0  COAD", 0x0019, 0x54)]
    assert rotation.slots == "0x10;0x11" and rotation.groups_seen == "CT/SIEMENS/SOMATOM"
    assert len(table) == 3  # creator elements themselves are not data elements


def test_unknown_orphan_and_nested_elements_are_reported() -> None:
    ds = Dataset()
    ds.Modality = "MR"
    ds.add_new((0x0029, 0x0010), "LO", "ACME PRIVATE 1")
    ds.add_new((0x0029, 0x1001), "LO", "x")  # creator not in pydicom's dictionary
    ds.add_new((0x0031, 0x1005), "LO", "y")  # no creator element at all
    item = Dataset()
    item.add_new((0x2001, 0x0010), "LO", "Philips Imaging DD 001")
    item.add_new((0x2001, 0x1003), "FL", 1000.0)  # Diffusion B-Factor, inside a sequence
    ds.ReferencedImageSequence = Sequence([item])
    table = audit_datasets([ds])
    rows = {(r.private_creator, r.group, r.element_offset): r for r in table.itertuples()}
    assert not rows[("ACME PRIVATE 1", 0x0029, 0x01)].known
    assert ("", 0x0031, 0x05) in rows
    nested = rows[("Philips Imaging DD 001", 0x2001, 0x03)]
    assert nested.nested and nested.name == "Diffusion B-Factor" and nested.needs_coercion_rule


def test_dictionary_lookup_and_clinical_keywords() -> None:
    assert private_name("SIEMENS DFR.01 ORIGINAL", 0x0017, 0x42) == ("DS", "Dose Area Product")
    assert private_name("NO SUCH CREATOR", 0x0017, 0x42) is None
    assert is_clinical("Detected Exposure Index") and is_clinical("KVP") and is_clinical("Scan Pitch Ratio")
    assert not is_clinical("Window Width Native Current") and not is_clinical("Unknown")
