"""Vendor private blocks for the synthetic archive, written in varying slots like real devices do.

Every creator and element here exists in pydicom's private dictionary, so the VR written is the
dictionary's and the audit can name what it finds. Blocks are placed in shuffled slots
((gggg,0010) in one file, (gggg,0011) or (gggg,0012) in another) because code that addresses a
private element by absolute tag instead of by creator must break on this archive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom._private_dict import private_dictionaries
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

#: A value maker takes the per-instance random generator and returns the element value.
ValueMaker = Callable[[np.random.Generator], object]


@dataclass(frozen=True)
class PrivateBlock:
    """One private creator's block: the group it lives in and the element offsets it carries."""

    creator: str
    group: int
    elements: tuple[tuple[int, ValueMaker | None], ...]

    def vr(self, offset: int) -> str:
        """The VR pydicom's private dictionary gives this element (raises KeyError if unknown)."""
        return private_dictionaries[self.creator][f"{self.group:04X}xx{offset:02X}"][0]


@dataclass(frozen=True)
class _Decimal:
    lo: float
    hi: float
    digits: int = 2

    def __call__(self, rng: np.random.Generator) -> str:
        return f"{rng.uniform(self.lo, self.hi):.{self.digits}f}"


@dataclass(frozen=True)
class _Int:
    lo: int
    hi: int

    def __call__(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.lo, self.hi + 1))


@dataclass(frozen=True)
class _Choice:
    values: tuple[object, ...]

    def __call__(self, rng: np.random.Generator) -> object:
        return self.values[int(rng.integers(0, len(self.values)))]


# Value makers are small dataclasses rather than lambdas so devices pickle into worker processes.
def _ds(lo: float, hi: float, digits: int = 2) -> ValueMaker:
    return _Decimal(lo, hi, digits)


def _int(lo: int, hi: int) -> ValueMaker:
    return _Int(lo, hi)


def _const(value: object) -> ValueMaker:
    return _Choice((value,))


def _default(vr: str, rng: np.random.Generator) -> object:
    """A plausible value for a dictionary element whose meaning the vendor never published."""
    if vr in ("DS",):
        return f"{rng.uniform(0, 100):.2f}"
    if vr in ("IS", "US", "UL", "SL", "SS"):
        return int(rng.integers(0, 100))
    if vr in ("FL", "FD"):
        return float(np.float32(rng.uniform(0, 100)))
    if vr == "CS":
        return "NORMAL"
    return f"V{int(rng.integers(0, 10_000)):04d}"


GE_DX = (
    PrivateBlock("GEMS_GDXE_FALCON_04", 0x0011, (
        (0x33, _ds(150.0, 900.0, 1)),   # Detected Exposure Index: the coercion rule's input
        (0x04, _const("STANDARD")),     # Acquisition Type
        (0x06, _ds(0.5, 5.0, 3)),       # Image Dose
        (0x31, _int(300, 430)),         # Detected Field of View
    )),
    PrivateBlock("GEMS_PATI_01", 0x0011, ((0x10, _int(0, 3)),)),  # Patient Status
)
GE_CT = (
    PrivateBlock("GEMS_IDEN_01", 0x0009, ((0x01, _const("GE_GENESIS_FF")), (0x04, _const("CTLSV")))),
    PrivateBlock("GEMS_PARM_01", 0x0043, ((0x01, _int(0, 8)), (0x0B, _ds(10, 40)))),
)
SIEMENS_CT = (
    PrivateBlock("SIEMENS CT VA0  COAD", 0x0019, ((0x22, _ds(1.0, 1.5, 4)), (0x54, _ds(0.28, 1.0, 2)))),
    PrivateBlock("SIEMENS CT VA0  GEN", 0x0019, (
        (0x21, _int(80, 450)),          # Exposure current (mA)
        (0x20, _int(500, 1500)),        # Exposure Time current
        (0x26, _ds(80, 140, 0)),        # Generator Voltage current
    )),
)
SIEMENS_XA = (
    PrivateBlock("SIEMENS DFR.01 MANIPULATED", 0x0017, ((0x11, _int(200, 4000)), (0x12, _int(100, 2000)))),
    PrivateBlock("SIEMENS DFR.01 ORIGINAL", 0x0017, (
        (0x42, _ds(50.0, 5000.0, 1)),   # Dose Area Product
        (0x41, _ds(1.0, 500.0, 2)),     # Dose
        (0x10, _const("NATIVE")),       # Image Type
    )),
)
SIEMENS_MR = (
    PrivateBlock("SIEMENS MR HEADER", 0x0019, ((0x08, _const("IMAGE NUM 4")), (0x0B, _ds(100, 900, 1)))),
    PrivateBlock("SIEMENS CSA HEADER", 0x0029, ((0x08, _const("IMAGE NUM 4")), (0x09, _const("20100114")))),
)
SIEMENS_NM = (
    PrivateBlock("SIEMENS MED NM", 0x0019, ((0x01, _int(1, 2)), (0x0A, _const("MDF")))),
)
PHILIPS_MR = (
    PrivateBlock("Philips Imaging DD 001", 0x2001, (
        (0x03, _Choice((0.0, 500.0, 1000.0))),  # Diffusion B-Factor
        (0x0B, _const("TRANSVERSAL")),  # Slice Orientation
        (0x08, _int(1, 3)),             # Phase Number
    )),
    PrivateBlock("Philips Imaging DD 002", 0x2001, ((0x01, _int(0, 10)),)),
    PrivateBlock("Philips MR Imaging DD 001", 0x2005, (
        (0x0F, _ds(200, 800, 0)),       # Window Center
        (0x10, _ds(400, 1600, 0)),      # Window Width
        (0x05, _const("NONE")),         # Synergy Reconstruction Type
    )),
    PrivateBlock("Philips MR Imaging DD 002", 0x2005, ((0x37, _const("SENSE")),)),
)
PHILIPS_US = (
    PrivateBlock("Philips Imaging DD 001", 0x2001, ((0x0B, _const("TRANSVERSAL")),)),
    PrivateBlock("Philips US Imaging DD 033", 0x200D, ((0x01, _const("EPIQ")), (0x14, _int(1, 64)))),
    PrivateBlock("Philips US Imaging DD 017", 0x200D, ((0x05, _const("C5-1")),)),
)
HOLOGIC_MG = (
    PrivateBlock("HOLOGIC, Inc.", 0x0019, ((0x06, _const("COMBO")), (0x16, _ds(0.5, 3.0, 2)),
                                           (0x30, _int(0, 4)))),
)


def add_private_blocks(ds: Dataset, blocks: tuple[PrivateBlock, ...], rng: np.random.Generator,
                       written: set[tuple[str, int, int]]) -> None:
    """Write ``blocks`` into ``ds`` in a per-call shuffled slot order, recording what was written.

    Blocks sharing a group take consecutive slots from a random start (0x10, 0x11 or 0x12) in a
    random order, so one creator lands in different slots across files. ``written`` collects
    ``(creator, group, offset)`` for the ground truth.
    """
    by_group: dict[int, list[PrivateBlock]] = {}
    for block in blocks:
        by_group.setdefault(block.group, []).append(block)
    for group in sorted(by_group):
        members = by_group[group]
        order = [members[i] for i in rng.permutation(len(members))]
        slot = 0x10 + int(rng.integers(0, 3))
        for block in order:
            while (group, slot) in ds:  # a slot already taken by another writer
                slot += 1
            ds.add(DataElement((group << 16) | slot, "LO", block.creator))
            for offset, make in block.elements:
                vr = block.vr(offset)
                value = make(rng) if make is not None else _default(vr, rng)
                ds.add(DataElement((group << 16) | (slot << 8) | offset, vr, value))
                written.add((block.creator, group, offset))
            slot += 1
