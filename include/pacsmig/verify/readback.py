"""Read instances back from the target and check pixels, raw bytes, frames and header against the source.

Fetching is I/O and decoding is CPU: a chunk of instances goes to one worker process, which opens
its own destination, fetches each instance and hashes it there, so image bytes never cross a
process boundary and the decoders run on every core.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from pacsmig.config import ConnectionSpec
from pacsmig.errors import LoadError, VerifyError
from pacsmig.verify.hashing import NO_PIXELS, pixel_hash, raw_pixel_hash
from pacsmig.verify.headerdiff import header_diff, summarise

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

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def _frames(ds: Dataset) -> int:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
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


def check_instance(task: InstanceTask, data: bytes) -> InstanceResult:
    """Compare the bytes the target returned for ``task`` with the source's recorded facts.

    Pixel hash (decoded frames, transfer syntax independent) and frame count always; the raw
    PixelData hash when the transfer syntax is unchanged; the header against the staged source
    file minus the recorded changes. Pixel findings take precedence over header findings.
    """
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable answer is the same finding
        return _result(task, PIXEL_MISMATCH, f"target object unreadable ({type(exc).__name__})")
    tsuid = str(ds.file_meta.get("TransferSyntaxUID", "")) if getattr(ds, "file_meta", None) else ""
    target: dict[str, Any] = {"target_transfer_syntax": tsuid, "target_frames": _frames(ds)}
    if str(ds.get("SOPInstanceUID", "")) != task.sop_instance_uid:
        return _result(task, PIXEL_MISMATCH, "target returned another SOP Instance UID", **target)
    problems: list[str] = []
    target["target_raw_hash"] = raw_pixel_hash(ds)
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
    if not task.staged_path or not Path(task.staged_path).exists():
        return _result(task, VERIFIED, NO_STAGED_SOURCE, **target)
    try:
        source = pydicom.dcmread(task.staged_path, stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001
        raise VerifyError(f"staged source of {task.sop_instance_uid} unreadable: {exc}") from exc
    findings = header_diff(source, ds, task.changes)
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


def verify_chunk(conn: ConnectionSpec, tasks: Sequence[InstanceTask]) -> list[InstanceResult]:
    """Fetch and check every task of one chunk (runs in a worker process, or inline)."""
    from pacsmig.load.base import DestinationUnavailable

    dest = open_target(conn)
    results = []
    for task in tasks:
        try:
            data = dest.fetch(task.study_instance_uid, task.series_instance_uid, task.sop_instance_uid)
        except DestinationUnavailable as exc:
            raise VerifyError(f"target unavailable while verifying {task.sop_instance_uid}: {exc}") from exc
        except LoadError:
            results.append(missing(task, "listed by the target but not returned"))
            continue
        results.append(check_instance(task, data))
    return results


def _chunks(items: Sequence[InstanceTask], size: int) -> Iterator[Sequence[InstanceTask]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


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


def verify_tasks(conn: ConnectionSpec, tasks: Sequence[InstanceTask], workers: int | None = None,
                 chunk_size: int = 25,
                 on_chunk: Callable[[list[InstanceResult]], None] | None = None) -> list[InstanceResult]:
    """Verify ``tasks`` against the target of ``conn``, in ``workers`` processes (0: inline).

    ``on_chunk`` is called with each finished chunk's results (in the caller's process), so they
    can be written to the ledger as they come: an interrupted run resumes where it stopped.
    """
    workers = default_workers() if workers is None else workers
    results: list[InstanceResult] = []
    if not tasks:
        return results
    if workers == 0 or len(tasks) < 2 * workers:
        for chunk in _chunks(tasks, chunk_size):
            done = verify_chunk(conn, chunk)
            results.extend(done)
            if on_chunk:
                on_chunk(done)
        return results
    # spawn: a fresh interpreter per worker, safe inside threaded hosts (Airflow's task runner).
    context = multiprocessing.get_context("spawn")
    size = max(1, min(chunk_size, math.ceil(len(tasks) / workers)))
    with _main_not_reimported(), ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(verify_chunk, conn, list(chunk)) for chunk in _chunks(tasks, size)]
        for future in futures:
            done = future.result()
            results.extend(done)
            if on_chunk:
                on_chunk(done)
    logger.info("read back %d instances in %d processes", len(results), workers)
    return results
