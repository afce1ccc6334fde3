"""Read instances back from the target and check pixels, raw bytes, frames and header against the source.

Fetching is I/O and decoding is CPU: a chunk of whole series goes to one worker process, which
opens its own destination, fetches the instances and checks them there, so image bytes never
cross a process boundary and the decoders run on every core. A destination that can stream a
series (``iter_series``, DICOMweb) is asked once per series rather than once per instance; every
instance the stream did not deliver is then looked up and fetched on its own, so a missing one is
still found and named.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from pacsmig.config import ConnectionSpec
from pacsmig.errors import LoadError, VerifyError
from pacsmig.verify.hashing import (
    DECODE_TAGS,
    NO_PIXELS,
    PIXEL_DATA_ELEMENTS,
    pixel_decode_inputs,
    pixel_hash,
    pixel_keyword,
    raw_pixel_hash,
)
from pacsmig.verify.headerdiff import ORIGINAL_ATTRIBUTES, header_diff, recorded_tags, summarise

logger = logging.getLogger(__name__)

VERIFIED = "verified"
PIXEL_MISMATCH = "pixel_mismatch"
HEADER_MISMATCH = "header_mismatch"
MISSING_AT_TARGET = "missing_at_target"
QUARANTINED = "quarantined"
HELD = "held"
STATUSES = (VERIFIED, PIXEL_MISMATCH, HEADER_MISMATCH, MISSING_AT_TARGET, QUARANTINED, HELD)

#: Detail noted when the staged source is gone: pixels are still proven, the header cannot be.
NO_STAGED_SOURCE = "header not compared: staged source file missing"

#: How the target pixel hash was established (``InstanceResult.method``).
RAW_IDENTICAL = "raw_identical"  # same transfer syntax, pixel bytes and decode inputs as the source
DECODED = "decoded"  # the target's pixels were decoded and hashed


@dataclass(frozen=True)
class InstanceTask:
    """One instance to verify: where it is at the target and what the source said it was."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    source_pixel_hash: str | None
    source_raw_hash: str | None
    source_frames: int | None
    source_transfer_syntax: str | None
    staged_path: str | None = None
    changes: tuple[dict[str, Any], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class InstanceResult:
    """What read-back found for one instance (``detail`` names tags, never values)."""

    study_instance_uid: str
    sop_instance_uid: str
    status: str
    source_pixel_hash: str | None = None
    target_pixel_hash: str | None = None
    source_raw_hash: str | None = None
    target_raw_hash: str | None = None
    source_frames: int | None = None
    target_frames: int | None = None
    source_transfer_syntax: str | None = None
    target_transfer_syntax: str | None = None
    detail: str = ""
    method: str = ""

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def _frames(ds: Dataset) -> int:
    if pixel_keyword(ds) is None:
        return 0
    return int(ds.get("NumberOfFrames", 1) or 1)


def _result(task: InstanceTask, status: str, detail: str = "", **target: Any) -> InstanceResult:
    return InstanceResult(task.study_instance_uid, task.sop_instance_uid, status,
                          source_pixel_hash=task.source_pixel_hash, source_raw_hash=task.source_raw_hash,
                          source_frames=task.source_frames,
                          source_transfer_syntax=task.source_transfer_syntax, detail=detail, **target)


def missing(task: InstanceTask, detail: str = "not held by the target") -> InstanceResult:
    """The result for an instance the target does not have."""
    return _result(task, MISSING_AT_TARGET, detail)


#: Elements header_diff always sees in full: they decide how the others are decoded
#: (character set, ambiguous US/SS VRs), or are compared by rule rather than by value.
_HEADER_CONTEXT = frozenset({0x00080005, 0x00280100, 0x00280103, int(ORIGINAL_ATTRIBUTES)})


def read_staged_header(path: str) -> tuple[Dataset, str | None]:
    """The staged source's header (up to its pixel data) and the keyword of its pixel element.

    pydicom stops in front of the first pixel element and leaves the file there, so the next
    four bytes are that element's tag: the source's pixel keyword without reading the pixels.
    """
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        tag = fp.read(4)
    encoding = ds.original_encoding
    if len(tag) < 4 or encoding is None or encoding[1] is None:
        return ds, None
    group, element = struct.unpack("<HH" if encoding[1] else ">HH", tag)
    return ds, PIXEL_DATA_ELEMENTS.get((group << 16) | element)


def _raw_identical(task: InstanceTask, ds: Dataset, tsuid: str, raw_hash: str,
                   source: Dataset | None, source_keyword: str | None) -> bool:
    """Whether the target's pixels are provably the source's without decoding them.

    pydicom's decoded frames are a function of the pixel element's bytes and keyword, the
    transfer syntax and the Image Pixel attributes (:func:`pixel_decode_inputs`). When all of
    these equal the source's - bytes by the sha256 recorded at extraction, the rest against the
    staged source file - the decoded frames are identical, so the target pixel hash *is* the
    recorded source pixel hash. A lossless transcode changes the syntax and a lossy one the
    bytes: both are decoded and compared as before, so neither can pass this way. Without the
    staged source the inputs cannot be compared and the pixels are decoded.
    """
    return bool(
        source is not None and source_keyword is not None
        and task.source_pixel_hash and task.source_pixel_hash != NO_PIXELS
        and task.source_raw_hash and task.source_raw_hash != NO_PIXELS
        and task.source_transfer_syntax and tsuid == task.source_transfer_syntax
        and getattr(source, "file_meta", {}).get("TransferSyntaxUID") == tsuid
        and raw_hash == task.source_raw_hash
        and pixel_keyword(ds) == source_keyword
        and (all(_same_element(ds.get_item(t), source.get_item(t)) for t in DECODE_TAGS)
             or pixel_decode_inputs(ds) == pixel_decode_inputs(source)))


def _same_element(a: Any, b: Any) -> bool:
    """Whether two stored elements are byte-identical (both absent counts): same VR, byte order
    and value bytes; a sequence, item by item. Parsed (non-raw) elements are never "identical"
    here, so they are compared by value by whoever asks next."""
    if a is None or b is None:
        return a is b
    if isinstance(a, RawDataElement):
        return (isinstance(b, RawDataElement) and a.VR == b.VR and a.value is not None
                and a.value == b.value and a.is_little_endian == b.is_little_endian)
    if getattr(a, "VR", None) == "SQ" and getattr(b, "VR", None) == "SQ" and not isinstance(b, RawDataElement):
        items_a, items_b = a.value or [], b.value or []
        return len(items_a) == len(items_b) and all(
            x.keys() == y.keys() and all(_same_element(x.get_item(t), y.get_item(t)) for t in x.keys())
            for x, y in zip(items_a, items_b, strict=True))
    return False


def header_findings(source: Dataset, target: Dataset, changes: Sequence[dict[str, Any]]) -> list[str]:
    """``header_diff(source, target, changes)``, without parsing what is byte-identical.

    An element stored with the same VR, byte order and bytes on both sides (a sequence: item by
    item) decodes to the same value under the same character set, so header_diff would find
    nothing for it - unless a recorded change names it (then "unchanged" is itself a finding) or
    it steers the decoding of others (character set, the pixel representation of US/SS
    elements, private creators). Those are always kept; the other identical elements are left
    out of both datasets before the diff; with different character sets nothing is left out.
    Parsing every element dominated the read-back's CPU; the findings are the same.
    """
    charset_a, charset_b = source.get_item(0x00080005), target.get_item(0x00080005)
    if not (_same_element(charset_a, charset_b)
            or (charset_a is not None and charset_b is not None and charset_a.value == charset_b.value)):
        return header_diff(source, target, changes)  # same bytes may read differently: parse all
    recorded = {int(t) for t in recorded_tags(changes)}
    keep_source, keep_target = {}, {}
    for tag in source.keys() | target.keys():
        a, b = source.get_item(tag), target.get_item(tag)
        if (a is not None and b is not None and int(tag) not in recorded and int(tag) not in _HEADER_CONTEXT
                and not tag.is_private_creator and _same_element(a, b)):
            continue
        if a is not None:
            keep_source[tag] = a
        if b is not None:
            keep_target[tag] = b
    return header_diff(Dataset(keep_source), Dataset(keep_target), changes)


def check_instance(task: InstanceTask, data: bytes) -> InstanceResult:
    """Compare the bytes the target returned for ``task`` with the source's recorded facts.

    Pixel hash (decoded frames, transfer syntax independent; or, when the target holds the very
    same pixel bytes under the same syntax, by that identity - see :func:`_raw_identical`) and
    frame count always; the raw PixelData hash when the transfer syntax is unchanged; the header
    against the staged source file minus the recorded changes, on every instance. Pixel findings
    take precedence over header findings.
    """
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable answer is the same finding
        return _result(task, PIXEL_MISMATCH, f"target object unreadable ({type(exc).__name__})")
    return check_dataset(task, ds)


def check_dataset(task: InstanceTask, ds: Dataset) -> InstanceResult:
    """:func:`check_instance` for a target object already parsed."""
    tsuid = str(ds.file_meta.get("TransferSyntaxUID", "")) if getattr(ds, "file_meta", None) else ""
    target: dict[str, Any] = {"target_transfer_syntax": tsuid, "target_frames": _frames(ds)}
    if str(ds.get("SOPInstanceUID", "")) != task.sop_instance_uid:
        return _result(task, PIXEL_MISMATCH, "target returned another SOP Instance UID", **target)
    source: Dataset | None = None
    source_keyword: str | None = None
    source_error: Exception | None = None
    if task.staged_path and Path(task.staged_path).exists():
        try:
            source, source_keyword = read_staged_header(task.staged_path)
        except Exception as exc:  # noqa: BLE001 - raised below, after the pixel findings
            source_error = exc
    problems: list[str] = []
    target["target_raw_hash"] = raw_pixel_hash(ds)
    if _raw_identical(task, ds, tsuid, target["target_raw_hash"], source, source_keyword):
        target["target_pixel_hash"], target["method"] = task.source_pixel_hash, RAW_IDENTICAL
    else:
        target["method"] = DECODED
        try:
            target["target_pixel_hash"] = pixel_hash(ds)
        except VerifyError as exc:
            target["target_pixel_hash"] = None
            problems.append(f"target pixels not decodable ({str(exc).split(': ', 1)[-1][:120]})")
    if task.source_pixel_hash and target["target_pixel_hash"] not in (None, task.source_pixel_hash):
        problems.append("pixel hash differs")
    if task.source_frames is not None and target["target_frames"] != task.source_frames:
        problems.append(f"frame count {target['target_frames']} != source {task.source_frames}")
    same_ts = bool(task.source_transfer_syntax) and tsuid == task.source_transfer_syntax
    if (same_ts and task.source_raw_hash and target["target_raw_hash"] != task.source_raw_hash
            and task.source_raw_hash != NO_PIXELS):
        problems.append("raw PixelData differs under the same transfer syntax")
    if problems:
        return _result(task, PIXEL_MISMATCH, "; ".join(problems), **target)
    if source_error is not None:
        raise VerifyError(f"staged source of {task.sop_instance_uid} unreadable: {source_error}") \
            from source_error
    if source is None:
        return _result(task, VERIFIED, NO_STAGED_SOURCE, **target)
    findings = header_findings(source, ds, task.changes)
    if findings:
        return _result(task, HEADER_MISMATCH, summarise(findings), **target)
    return _result(task, VERIFIED, "", **target)


# --- worker side ----------------------------------------------------------------------------
_DESTINATIONS: dict[str, Any] = {}


def open_target(conn: ConnectionSpec) -> Any:
    """The destination for ``conn`` (``pacsmig.load.open_destination``), cached per process."""
    key = conn.to_json()
    if key not in _DESTINATIONS:
        try:
            from pacsmig.load import open_destination  # type: ignore[attr-defined]
        except ImportError:  # the load package predates its factory: DICOMweb is what it has
            from pacsmig.load.dicomweb import DicomWebDestination

            def open_destination(c: ConnectionSpec) -> Any:
                return DicomWebDestination.from_connection(c)
        _DESTINATIONS[key] = open_destination(conn)
    return _DESTINATIONS[key]


def streams_series(dest: Any) -> bool:
    """Whether ``dest`` can return a whole series in one request (``iter_series``)."""
    return callable(getattr(dest, "iter_series", None))


def _series_groups(tasks: Sequence[InstanceTask]) -> list[list[InstanceTask]]:
    groups: dict[tuple[str, str], list[InstanceTask]] = {}
    for task in tasks:
        groups.setdefault((task.study_instance_uid, task.series_instance_uid), []).append(task)
    return list(groups.values())


def _check_series(dest: Any, group: list[InstanceTask], done: dict[int, InstanceResult],
                  index: dict[int, int]) -> None:
    """Check what one series request returns; tasks it does not deliver stay out of ``done``."""
    from pacsmig.load.base import DestinationUnavailable

    first = group[0]
    pending = {t.sop_instance_uid: t for t in group}
    try:
        for part in dest.iter_series(first.study_instance_uid, first.series_instance_uid):
            try:
                ds = pydicom.dcmread(BytesIO(part), force=True)
            except Exception:  # noqa: BLE001 - unattributable: its instance is fetched on its own
                continue
            task = pending.pop(str(ds.get("SOPInstanceUID", "")), None)
            if task is not None:  # parts of instances not asked for (already verified) are skipped
                done[index[id(task)]] = check_dataset(task, ds)
            if not pending:
                break
    except DestinationUnavailable as exc:
        logger.warning("series retrieve of %d instances failed (%s); fetching them one by one", len(group), exc)


def verify_chunk(conn: ConnectionSpec, tasks: Sequence[InstanceTask]) -> list[InstanceResult]:
    """Fetch and check every task of one chunk (runs in a worker process, or inline).

    With a series-streaming destination the tasks need no prior listing: each series is asked
    for once, and every task it did not deliver is accounted for one by one - absent from the
    target's listing of the study: ``missing_at_target``; listed (under whatever series the target
    holds it): fetched and checked alone. Without one, the tasks are those the target listed and
    each is fetched alone. Results come back in the order of ``tasks``.
    """
    from pacsmig.load.base import DestinationUnavailable

    dest = open_target(conn)
    index = {id(task): i for i, task in enumerate(tasks)}
    done: dict[int, InstanceResult] = {}
    listings: dict[str, dict[str, str]] | None = None
    if streams_series(dest):
        for group in _series_groups(tasks):
            if group[0].series_instance_uid:
                _check_series(dest, group, done, index)
        listings = {}
    for i, task in enumerate(tasks):
        if i in done:
            continue
        series = task.series_instance_uid
        try:
            if listings is not None:
                if task.study_instance_uid not in listings:
                    listings[task.study_instance_uid] = dict(dest.instances(task.study_instance_uid))
                listed = listings[task.study_instance_uid].get(task.sop_instance_uid)
                if listed is None:
                    done[i] = missing(task)
                    continue
                series = listed or series
            data = dest.fetch(task.study_instance_uid, series, task.sop_instance_uid)
        except DestinationUnavailable as exc:
            raise VerifyError(f"target unavailable while verifying {task.sop_instance_uid}: {exc}") from exc
        except LoadError:
            done[i] = missing(task, "listed by the target but not returned")
            continue
        done[i] = check_instance(task, data)
    return [done[i] for i in range(len(tasks))]


def _chunks(items: Sequence[InstanceTask], size: int,
            whole_series: bool = False) -> Iterator[Sequence[InstanceTask]]:
    """Slices of at most ``size``; with ``whole_series``, never splitting a series (one request
    each), so a series larger than ``size`` is a chunk of its own."""
    size = max(1, size)
    if not whole_series:
        for start in range(0, len(items), size):
            yield items[start:start + size]
        return
    chunk: list[InstanceTask] = []
    for group in _series_groups(items):
        if chunk and len(chunk) + len(group) > size:
            yield chunk
            chunk = []
        chunk.extend(group)
    if chunk:
        yield chunk


def default_workers() -> int:
    """Decoder processes: ``$PACSMIG_VERIFY_WORKERS`` or the cores available (at most 8)."""
    value = os.environ.get("PACSMIG_VERIFY_WORKERS")
    if value:
        return max(0, int(value))
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))


@contextmanager
def _main_not_reimported() -> Iterator[None]:
    """Spawned workers re-run ``__main__`` by path; in an Airflow task that is the ``airflow`` script,
    which cannot initialise there (the task process has no metadata DB URL). The workers need only
    this module, so the path is hidden while they start."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(getattr(main, "__spec__", None), "name", None):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _decode_bound(results: Sequence[InstanceResult]) -> bool:
    """Whether most of ``results`` needed their pixels decoded (rather than proven by raw bytes)."""
    decoded = sum(r.method == DECODED and r.target_pixel_hash not in (None, NO_PIXELS) for r in results)
    return decoded * 2 > len(results)


def verify_tasks(conn: ConnectionSpec, tasks: Sequence[InstanceTask], workers: int | None = None,
                 chunk_size: int = 25,
                 on_chunk: Callable[[list[InstanceResult]], None] | None = None) -> list[InstanceResult]:
    """Verify ``tasks`` against the target of ``conn``, in ``workers`` processes (0: inline).

    ``on_chunk`` is called with each finished chunk's results (in the caller's process), so they
    can be written to the ledger as they come: an interrupted run resumes where it stopped.

    With ``workers`` None (and no ``$PACSMIG_VERIFY_WORKERS``) the first chunk is checked inline
    and the worker processes are started only if it needed decoding: a target holding the very
    bytes sent is verified at ~1 ms CPU per image without decoding, less than the processes cost
    to start, while a transcoding target (J2K decode ~12 ms per image) is worth every core.
    """
    adaptive = workers is None and not os.environ.get("PACSMIG_VERIFY_WORKERS")
    workers = default_workers() if workers is None else workers
    results: list[InstanceResult] = []
    if not tasks:
        return results
    whole_series = streams_series(open_target(conn))

    def inline(chunks: Sequence[Sequence[InstanceTask]]) -> None:
        for chunk in chunks:
            done = verify_chunk(conn, chunk)
            results.extend(done)
            if on_chunk:
                on_chunk(done)

    if workers == 0 or len(tasks) < 2 * workers:
        inline(list(_chunks(tasks, chunk_size, whole_series)))
        return results
    size = max(1, min(chunk_size, math.ceil(len(tasks) / workers)))
    chunks = list(_chunks(tasks, size, whole_series))
    if adaptive:
        inline(chunks[:1])
        chunks = chunks[1:]
        if not _decode_bound(results) or len(chunks) < 2:
            inline(chunks)
            logger.info("read back %d instances inline (pixels proven by raw bytes)", len(results))
            return results
    # spawn: a fresh interpreter per worker, safe inside threaded hosts (Airflow's task runner).
    context = multiprocessing.get_context("spawn")
    with _main_not_reimported(), ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(verify_chunk, conn, list(chunk)) for chunk in chunks]
        for future in futures:
            done = future.result()
            results.extend(done)
            if on_chunk:
                on_chunk(done)
    logger.info("read back %d instances in %d processes", len(results), workers)
    return results
