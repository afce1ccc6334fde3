"""The on-disk staging area that received instances are written to, durably and never overwritten.

Layout (shared by every storage SCP process and by C-GET, keyed by study so any receiver may
write any study)::

    staging_root/<study_uid>/<sop_uid>.dcm        the received bytes, file meta + dataset as sent
    staging_root/<study_uid>/<sop_uid>.json       sidecar: hashes, calling AE, move originator
    quarantine_root/<study_uid>/<sop_uid>.<sha256>.dcm + .json   conflicts and malformed objects
    quarantine_root/_unknown_study/...            malformed objects whose study UID is unreadable

A new file is written to a temporary name, then published with ``os.link``: like ``os.replace``
it is atomic, but it fails instead of clobbering, so two receivers racing on one SOP UID can never
overwrite each other — the loser compares bytes and records a conflict.

Durability is deferred to the ledger, not paid per C-STORE. A staged file is *not* fsynced before
its C-STORE is answered (that cost ~3 ms of disk wait per instance); quarantine copies still are.
The guarantee that matters is that nothing is recorded in the ledger as extracted unless its bytes
are durable and intact, and the source keeps its copy (a migration never deletes there), so an
instance lost before the ledger knows of it only costs a re-pull. :meth:`StagingStore.make_durable`
(called by :func:`pacsmig.dicom.retrieve.retrieve` after every round, before it returns, so before
any ledger row) fsyncs each newly received file, re-reads it, and keeps it only if its sha256 is the
one the receiver computed from the network bytes (recorded in its sidecar), then fsyncs the
folders. Why that is sound:

* a killed receiver process (SIGKILL) loses nothing that ``write()`` returned: the page cache
  survives it; a store it had not answered is re-sent or re-pulled;
* after an OS crash or power loss, a file received but never made durable may be empty or torn
  under its final name, and its sidecar missing or torn. It is discarded (and re-pulled) unless a
  readable sidecar written from the network bytes has the file's hash: a rebuilt sidecar proves
  nothing, a torn sidecar does not parse;
* a re-delivered object meeting such an untrusted staged file replaces it instead of being taken
  for a UID conflict.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.uid import UID

from pacsmig.ledger import Reason
from pacsmig.verify.hashing import hashes_if_native, pixel_keyword

logger = logging.getLogger(__name__)

#: Folder under the quarantine root for malformed objects whose StudyInstanceUID is unreadable.
UNKNOWN_STUDY = "_unknown_study"

# Named C-STORE statuses (PS3.4 B.2.3; pynetdicom.status.STORAGE_SERVICE_CLASS_STATUS).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_PROCESSING_FAILURE = 0x0110

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid DICOM UID (digits and dots, at most 64 characters)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID_RE.match(value))


def safe_name(value: str) -> str:
    """A file-name-safe form of a (possibly invalid) UID, for quarantine paths only."""
    cleaned = re.sub(r"[^0-9A-Za-z.]", "_", value or "")[:80]
    return cleaned or "no_uid"


@dataclass
class ReceivedInstance:
    """One stored instance, as written to staging."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size_bytes: int
    file_hash: str
    calling_ae: str
    move_originator_message_id: int | None
    move_originator_ae: str | None = None
    #: :class:`~pacsmig.verify.hashing.InstanceHashes` fields computed at receive time from the
    #: network bytes (native pixels only), or None.
    hashes: dict[str, Any] | None = None
    #: The sidecar was rebuilt from the file, so nothing vouches for the file's bytes.
    rebuilt: bool = False


@dataclass
class Conflict:
    """Two or more different objects arrived with one SOP Instance UID; every version is kept."""

    study_instance_uid: str
    sop_instance_uid: str
    staged_path: Path
    staged_hash: str
    #: Every version (the staged one included) as kept in quarantine: file hash -> path.
    versions: dict[str, Path] = field(default_factory=dict)
    reason: Reason = Reason.UID_CONFLICT

    @property
    def paths(self) -> list[Path]:
        """Quarantined copies, the staged version first."""
        return sorted(self.versions.values(), key=lambda p: (self.staged_hash not in p.name, p.name))

    @property
    def file_hashes(self) -> list[str]:
        """sha256 of every version, the staged one first."""
        return sorted(self.versions, key=lambda h: (h != self.staged_hash, h))

    @property
    def detail(self) -> str:
        """A one-line description for the quarantine record (UIDs and counts only)."""
        return f"{len(self.versions)} different objects share this SOP Instance UID; all kept"


@dataclass
class Malformed:
    """An object that could not be understood; its bytes are kept in quarantine."""

    sop_instance_uid: str
    study_instance_uid: str | None
    path: Path
    file_hash: str
    size_bytes: int
    status: int
    detail: str
    calling_ae: str = ""
    move_originator_message_id: int | None = None
    reason: Reason = Reason.MALFORMED_INSTANCE


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one C-STORE: the status to answer and why."""

    status: int
    kind: str  # "stored" | "duplicate" | "conflict" | "malformed" | "error"
    sop_instance_uid: str
    study_instance_uid: str | None
    path: Path | None = None


@dataclass
class StudyContents:
    """Everything on disk for one study: staged instances, conflicts and malformed objects."""

    received: dict[str, ReceivedInstance]
    conflicts: list[Conflict]
    malformed: list[Malformed]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> bool:
    """Durably create ``path`` with ``data``; False (nothing written) if it already exists."""
    return _publish(path, data, durable=True)


def _publish(path: Path, data: bytes, *, durable: bool = False, replace: bool = False) -> bool:
    """Create ``path`` with ``data`` atomically; False (nothing written) if it already exists.

    ``durable`` fsyncs the file and its folder first; ``replace`` overwrites an existing file
    (only ever an untrusted staged one).
    """
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        if durable:
            _fsync_dir(path.parent)
        return True
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def _write_json(path: Path, body: dict[str, Any]) -> None:
    """Atomically (re)write a sidecar; sidecars describe bytes, so replacing them loses nothing.

    Not fsynced: a sidecar lost in a crash is rebuilt from its (fsynced) file by :meth:`scan`,
    and skipping the fsync halves the cost of a store.
    """
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(body, fh, default=str, sort_keys=True)
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _meta_end(encoded: bytes) -> int:
    """Offset of the dataset after preamble, prefix and File Meta (explicit VR little endian)."""
    if encoded[128:132] != b"DICM":
        raise InvalidDicomError("no DICM prefix")
    pos = 132
    while pos + 8 <= len(encoded):
        group, _elem = struct.unpack_from("<HH", encoded, pos)
        if group != 0x0002:
            return pos
        vr = encoded[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = struct.unpack_from("<I", encoded, pos + 8)[0]
            pos += 12 + length
        else:
            pos += 8 + struct.unpack_from("<H", encoded, pos + 6)[0]
    return pos


_SEQ_DELIM_LE = b"\xfe\xff\xdd\xe0"
_SEQ_DELIM_BE = b"\xff\xfe\xe0\xdd"


def _check_fragments(value: bytes, little_endian: bool) -> str | None:
    fmt = "<HHI" if little_endian else ">HHI"
    pos = 0
    while pos < len(value):
        if pos + 8 > len(value):
            return "fragment header truncated"
        group, elem, length = struct.unpack_from(fmt, value, pos)
        if (group, elem) != (0xFFFE, 0xE000):
            return f"unexpected tag ({group:04X},{elem:04X}) among fragments"
        pos += 8 + length
        if pos > len(value):
            return "fragment truncated"
    return None


def check_structure(encoded: bytes, transfer_syntax_uid: str) -> str | None:
    """Why the dataset bytes are structurally broken (truncated, trailing garbage), or None.

    pydicom silently stops at a truncated element, so a cut-off transfer would otherwise parse
    "fine" with elements missing: walk the top-level elements and require that every declared
    length is present and the walk ends exactly at the end of the bytes.
    """
    try:
        stream = encoded[_meta_end(encoded):]
    except (InvalidDicomError, struct.error) as exc:
        return f"file meta unreadable: {exc}"
    ts = UID(transfer_syntax_uid)
    if ts.is_deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            stream = inflater.decompress(stream) + inflater.flush()
        except zlib.error as exc:
            return f"deflate stream corrupt: {exc}"
        if not inflater.eof:
            return "deflate stream truncated"
    fp = BytesIO(stream)
    last_end = 0
    try:
        for elem in data_element_generator(fp, ts.is_implicit_VR, ts.is_little_endian):
            last_end = fp.tell()
            length = getattr(elem, "length", None)
            value = getattr(elem, "value", None)
            if length not in (None, 0xFFFFFFFF) and isinstance(value, bytes) and len(value) != length:
                return f"element {elem.tag} truncated ({len(value)} of {length} bytes)"
            if length == 0xFFFFFFFF and isinstance(value, bytes):
                # Encapsulated pixel data: pydicom returns the rest of the file when the sequence
                # delimiter is missing, so require it and a clean run of fragment items.
                end = fp.tell()
                delim = stream[end - 8:end]
                if delim[:4] != (_SEQ_DELIM_LE if ts.is_little_endian else _SEQ_DELIM_BE):
                    return f"element {elem.tag}: no sequence delimiter (truncated)"
                problem = _check_fragments(value, ts.is_little_endian)
                if problem:
                    return f"element {elem.tag}: {problem}"
    except Exception as exc:  # noqa: BLE001 - any parser failure means the same: cannot understand
        return f"unreadable element: {type(exc).__name__}: {exc}"[:300]
    if last_end != len(stream):
        # A partial element header at the end is read and dropped by pydicom without a word.
        return f"last complete element ends at byte {last_end} of {len(stream)} (truncated)"
    return None


@dataclass
class _Parsed:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    dataset: Any = None


class StagingStore:
    """Writes received instances into staging (or quarantine) and reads a study's contents back.

    Parameters
    ----------
    staging_root
        Shared staging folder (``staging_root/<study_uid>/<sop_uid>.dcm``).
    quarantine_root
        Where conflicts and malformed objects are kept, with a sidecar naming the reason.

    Examples
    --------
    >>> store = StagingStore(Path("/tmp/st"), Path("/tmp/q"))  # doctest: +SKIP
    >>> store.scan("1.2.3").received  # doctest: +SKIP
    {}
    """

    def __init__(self, staging_root: Path, quarantine_root: Path) -> None:
        self.staging_root = Path(staging_root)
        self.quarantine_root = Path(quarantine_root)

    # --- writing ------------------------------------------------------------------------------
    def store(self, encoded: bytes, *, affected_sop_instance_uid: str, affected_sop_class_uid: str,
              transfer_syntax_uid: str, calling_ae: str, move_originator_message_id: int | None = None,
              move_originator_ae: str | None = None, study_hint: str | None = None) -> StoreOutcome:
        """Keep one received object (Part 10 bytes) and return the status to answer.

        Valid objects go to staging (identical re-delivery is a no-op); a different object with a
        staged SOP UID is kept in quarantine beside a copy of the staged one (answered success:
        its bytes are safe and a re-send would not change them); an object that cannot be parsed,
        or whose UIDs contradict the C-STORE request, is kept in quarantine and answered with a
        failure status so the source's sub-operation counters show it.
        """
        sop_uid = affected_sop_instance_uid
        meta = {"calling_ae": calling_ae, "move_originator_message_id": move_originator_message_id,
                "move_originator_ae": move_originator_ae, "transfer_syntax_uid": transfer_syntax_uid}
        file_hash = hashlib.sha256(encoded).hexdigest()
        try:
            parsed, problem, status = self._parse(encoded, affected_sop_instance_uid, affected_sop_class_uid,
                                                  transfer_syntax_uid)
            if parsed is None:
                return self._quarantine_malformed(encoded, file_hash, sop_uid, study_hint, status,
                                                  problem, meta)
            return self._stage(encoded, file_hash, parsed, transfer_syntax_uid, meta)
        except OSError as exc:
            logger.exception("cannot write SOP %s (errno %s)", sop_uid, exc.errno)
            return StoreOutcome(STATUS_OUT_OF_RESOURCES, "error", sop_uid, study_hint)
        except Exception:
            logger.exception("failed to keep SOP %s", sop_uid)
            return StoreOutcome(STATUS_PROCESSING_FAILURE, "error", sop_uid, study_hint)

    @staticmethod
    def _parse(encoded: bytes, sop_uid: str, sop_class: str,
               transfer_syntax_uid: str) -> tuple[_Parsed | None, str, int]:
        try:
            problem = check_structure(encoded, transfer_syntax_uid)
            if problem:
                return None, problem, STATUS_CANNOT_UNDERSTAND
            ds = pydicom.dcmread(BytesIO(encoded))
            # pydicom defers value conversion; touch every top-level element so a corrupt one
            # shows up here rather than in a later phase.
            for elem in ds.iterall():
                _ = elem.value
            values = {key: ds.get(key) for key in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID",
                                                     "SeriesInstanceUID")}
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError,
                NotImplementedError, OSError) as exc:
            return None, f"unparseable: {type(exc).__name__}: {exc}"[:500], STATUS_CANNOT_UNDERSTAND
        if "Rows" in ds and "Columns" in ds and pixel_keyword(ds) is None:
            # An image whose pixels are missing: a transfer cut at an element boundary.
            return None, "image attributes present but no pixel data (truncated)", STATUS_CANNOT_UNDERSTAND
        missing = [k for k, v in values.items() if not is_valid_uid(str(v) if v is not None else None)]
        if missing:
            return None, f"missing or invalid {', '.join(missing)}", STATUS_CANNOT_UNDERSTAND
        if str(values["SOPInstanceUID"]) != sop_uid or str(values["SOPClassUID"]) != sop_class:
            return None, "dataset SOP Instance/Class UID differ from the C-STORE request", \
                STATUS_DATASET_MISMATCH
        return _Parsed(str(values["SOPInstanceUID"]), str(values["SOPClassUID"]),
                       str(values["StudyInstanceUID"]), str(values["SeriesInstanceUID"]), ds), "", STATUS_SUCCESS

    def _stage(self, encoded: bytes, file_hash: str, parsed: _Parsed, transfer_syntax_uid: str,
               meta: dict[str, Any]) -> StoreOutcome:
        study, sop = parsed.study_instance_uid, parsed.sop_instance_uid
        path = self.staging_root / study / f"{sop}.dcm"
        sidecar = path.with_suffix(".json")

        def write_sidecar() -> None:
            _write_json(sidecar, {
                "sop_instance_uid": sop, "series_instance_uid": parsed.series_instance_uid,
                "study_instance_uid": study, "sop_class_uid": parsed.sop_class_uid,
                "size_bytes": len(encoded), "file_hash": file_hash, "received_at": _now(),
                "pid": os.getpid(), "hashes": _receive_hashes(parsed, encoded), **meta,
            })

        if _publish(path, encoded):
            write_sidecar()
            return StoreOutcome(STATUS_SUCCESS, "stored", sop, study, path)
        existing_hash = self._staged_hash(path)
        if existing_hash == file_hash:
            if self._vouched_hash(sidecar) != file_hash:  # a receiver died before its sidecar
                write_sidecar()
            return StoreOutcome(STATUS_SUCCESS, "duplicate", sop, study, path)
        if self._vouched_hash(sidecar) != existing_hash:
            # Nothing received vouches for the staged bytes (left torn by a crash before they were
            # made durable): they are not a second object, replace them with what arrived.
            logger.warning("SOP %s of study %s: staged file unconfirmed by its sidecar, replaced by the "
                           "re-delivered object", sop, study)
            _publish(path, encoded, replace=True)
            write_sidecar()
            return StoreOutcome(STATUS_SUCCESS, "stored", sop, study, path)
        logger.warning("uid_conflict: SOP %s of study %s arrived with different bytes (%s vs staged %s)",
                       sop, study, file_hash[:12], existing_hash[:12])
        qdir = self.quarantine_root / study
        staged_copy = qdir / f"{sop}.{existing_hash}.dcm"
        if _write_new(staged_copy, path.read_bytes()):
            _write_json(staged_copy.with_suffix(".json"), {
                "reason": str(Reason.UID_CONFLICT), "role": "staged", "sop_instance_uid": sop,
                "study_instance_uid": study, "file_hash": existing_hash, "staged_path": str(path),
                "recorded_at": _now()})
        new_copy = qdir / f"{sop}.{file_hash}.dcm"
        if _write_new(new_copy, encoded):
            _write_json(new_copy.with_suffix(".json"), {
                "reason": str(Reason.UID_CONFLICT), "role": "received", "sop_instance_uid": sop,
                "study_instance_uid": study, "file_hash": file_hash, "staged_path": str(path),
                "size_bytes": len(encoded), "recorded_at": _now(), **meta})
        return StoreOutcome(STATUS_SUCCESS, "conflict", sop, study, new_copy)

    def _quarantine_malformed(self, encoded: bytes, file_hash: str, sop_uid: str, study_hint: str | None,
                              status: int, detail: str, meta: dict[str, Any]) -> StoreOutcome:
        study = self._salvage_study_uid(encoded) or study_hint
        folder = study if study and is_valid_uid(study) else UNKNOWN_STUDY
        path = self.quarantine_root / folder / f"{safe_name(sop_uid)}.{file_hash}.dcm"
        if _write_new(path, encoded) or not path.with_suffix(".json").exists():
            _write_json(path.with_suffix(".json"), {
                "reason": str(Reason.MALFORMED_INSTANCE), "detail": detail, "status": status,
                "sop_instance_uid": sop_uid, "study_instance_uid": study, "file_hash": file_hash,
                "size_bytes": len(encoded), "recorded_at": _now(), **meta})
        logger.warning("malformed_instance: SOP %s (study %s) kept in quarantine, answering 0x%04X: %s",
                       sop_uid, study or "?", status, detail)
        return StoreOutcome(status, "malformed", sop_uid, study, path)

    @staticmethod
    def _salvage_study_uid(encoded: bytes) -> str | None:
        try:
            ds = pydicom.dcmread(BytesIO(encoded), force=True, specific_tags=["StudyInstanceUID"])
            value = str(ds.get("StudyInstanceUID", "") or "")
        except Exception:  # noqa: BLE001 - best effort on bytes already known to be broken
            return None
        return value if is_valid_uid(value) else None

    @staticmethod
    def _vouched_hash(sidecar: Path) -> str | None:
        """The file hash a receiver recorded from the network bytes (not a rebuilt one), or None."""
        try:
            body = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(body, dict) or body.get("rebuilt"):
            return None
        return str(body.get("file_hash") or "") or None

    def make_durable(self, instances: Iterable[ReceivedInstance]) -> list[ReceivedInstance]:
        """fsync staged files and their folders; discard (and return) those not safe to record.

        A file is kept only if its bytes, read back after the fsync, have the sha256 that its
        receiver computed from the network bytes. Discarded files are removed from staging, so
        the caller counts them as missing and re-pulls them from the source.
        """
        discarded: list[ReceivedInstance] = []
        folders: set[Path] = set()
        for inst in instances:
            try:
                fd = os.open(inst.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    h, size = hashlib.sha256(), 0
                    while block := os.read(fd, 1 << 20):
                        h.update(block)
                        size += len(block)
                finally:
                    os.close(fd)
                good = not inst.rebuilt and h.hexdigest() == inst.file_hash and size == inst.size_bytes
            except FileNotFoundError:
                good = False
            if good:
                folders.add(inst.path.parent)
                continue
            logger.warning("SOP %s of study %s: staged bytes not confirmed by their receiver (torn by a "
                           "crash?): discarded, to be re-pulled", inst.sop_instance_uid,
                           inst.study_instance_uid)
            for stale in (inst.path, inst.path.with_suffix(".json")):
                try:
                    stale.unlink()
                except FileNotFoundError:
                    pass
            folders.add(inst.path.parent)
            discarded.append(inst)
        for folder in folders:
            if folder.is_dir():
                _fsync_dir(folder)
        return discarded

    @staticmethod
    def _staged_hash(path: Path) -> str:
        # The bytes are the truth; the sidecar may be missing or stale after a crash.
        return file_sha256(path)

    def _rebuild_sidecar(self, path: Path) -> dict[str, Any]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        body = {
            "sop_instance_uid": str(ds.SOPInstanceUID), "series_instance_uid": str(ds.SeriesInstanceUID),
            "study_instance_uid": str(ds.StudyInstanceUID), "sop_class_uid": str(ds.SOPClassUID),
            "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID), "size_bytes": path.stat().st_size,
            "file_hash": file_sha256(path), "calling_ae": "", "move_originator_message_id": None,
            "move_originator_ae": None, "received_at": _now(), "rebuilt": True,
        }
        _write_json(path.with_suffix(".json"), body)
        return body

    # --- reading ------------------------------------------------------------------------------
    def scan(self, study_instance_uid: str, sop_filter: set[str] | None = None) -> StudyContents:
        """Everything on disk for a study (never trusting a status: this is what was kept).

        ``sop_filter`` selects which malformed objects of unknown study are attributed to this one.
        """
        received: dict[str, ReceivedInstance] = {}
        folder = self.staging_root / study_instance_uid
        if folder.is_dir():
            for path in sorted(folder.glob("*.dcm")):
                if path.name.startswith("."):
                    continue
                body = self._load_sidecar(path)
                inst = ReceivedInstance(
                    sop_instance_uid=body["sop_instance_uid"],
                    series_instance_uid=body["series_instance_uid"],
                    study_instance_uid=body["study_instance_uid"], sop_class_uid=body["sop_class_uid"],
                    transfer_syntax_uid=body["transfer_syntax_uid"], path=path,
                    size_bytes=int(body["size_bytes"]), file_hash=body["file_hash"],
                    calling_ae=body.get("calling_ae") or "",
                    move_originator_message_id=body.get("move_originator_message_id"),
                    move_originator_ae=body.get("move_originator_ae"),
                    hashes=body.get("hashes") or None, rebuilt=bool(body.get("rebuilt")))
                received[inst.sop_instance_uid] = inst
        conflicts: dict[str, Conflict] = {}
        malformed: list[Malformed] = []
        for qdir, only in ((self.quarantine_root / study_instance_uid, None),
                           (self.quarantine_root / UNKNOWN_STUDY, sop_filter or set())):
            if not qdir.is_dir():
                continue
            for side in sorted(qdir.glob("*.json")):
                if side.name.startswith("."):
                    continue
                try:
                    body = json.loads(side.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    logger.exception("unreadable quarantine sidecar %s", side)
                    continue
                sop = str(body.get("sop_instance_uid") or "")
                if only is not None and sop not in only:
                    continue
                dcm = side.with_suffix(".dcm")
                if body.get("reason") == Reason.UID_CONFLICT:
                    staged = received.get(sop)
                    conflict = conflicts.setdefault(sop, Conflict(
                        study_instance_uid=study_instance_uid, sop_instance_uid=sop,
                        staged_path=Path(body.get("staged_path") or folder / f"{sop}.dcm"),
                        staged_hash=staged.file_hash if staged else ""))
                    conflict.versions[str(body["file_hash"])] = dcm
                elif body.get("reason") == Reason.MALFORMED_INSTANCE:
                    malformed.append(Malformed(
                        sop_instance_uid=sop, study_instance_uid=body.get("study_instance_uid"), path=dcm,
                        file_hash=str(body.get("file_hash")), size_bytes=int(body.get("size_bytes") or 0),
                        status=int(body.get("status") or 0), detail=str(body.get("detail") or ""),
                        calling_ae=str(body.get("calling_ae") or ""),
                        move_originator_message_id=body.get("move_originator_message_id")))
        return StudyContents(received, list(conflicts.values()), malformed)

    def _load_sidecar(self, path: Path) -> dict[str, Any]:
        side = path.with_suffix(".json")
        try:
            body = json.loads(side.read_text(encoding="utf-8"))
            if body.get("file_hash") and body.get("sop_instance_uid"):
                return body
        except FileNotFoundError:
            pass
        except (OSError, json.JSONDecodeError):
            logger.warning("sidecar of %s unreadable, rebuilding from the file", path.name)
        return self._rebuild_sidecar(path)


def _receive_hashes(parsed: _Parsed, encoded: bytes) -> dict[str, Any] | None:
    """The instance's hashes from the bytes in hand (native pixels only; see hashes_if_native)."""
    try:
        hashes = hashes_if_native(parsed.dataset, encoded)
    except Exception:  # noqa: BLE001 - the extract step hashes it again and reports the failure
        logger.debug("SOP %s: hashing at receive failed; left to extract", parsed.sop_instance_uid)
        return None
    return asdict(hashes) if hashes is not None else None


def instance_record(inst: ReceivedInstance) -> dict[str, Any]:
    """A JSON-friendly dict of a received instance (for XCom-free logs and custody details)."""
    body = asdict(inst)
    body["path"] = str(inst.path)
    return body


__all__ = [
    "Conflict", "Malformed", "ReceivedInstance", "StagingStore", "StoreOutcome", "StudyContents",
    "STATUS_CANNOT_UNDERSTAND", "STATUS_DATASET_MISMATCH", "STATUS_OUT_OF_RESOURCES",
    "STATUS_PROCESSING_FAILURE", "STATUS_SUCCESS", "UNKNOWN_STUDY",
]
