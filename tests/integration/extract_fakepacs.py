"""A fault-injecting Query/Retrieve SCP (real pynetdicom, own process) serving files from a folder.

Run as ``python extract_fakepacs.py CONFIG.json``; prints ``READY <port>`` once listening. The
config names the files (with their UIDs, so broken files need not parse), the move destinations
and the faults: ``abort_after`` / ``a702_after`` ({"k": n, "times": m}: on the first m C-MOVEs,
abort the association / answer A702 after n sub-operations), ``fail`` ({"sops": [...], "times": m}:
report those sub-operations failed without sending, m times each), ``skip`` ({"sops": [...],
"levels": [...]}: silently leave them out of moves at those levels). Files are sent byte for byte
(pynetdicom's chunked send), as a real PACS sends what it stored. Every C-MOVE is appended to
``requests.jsonl`` beside the config.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

HERE = Path(__file__).resolve()


# --- test-side helpers ------------------------------------------------------------------------
def make_instance(path: Path, study: str, series: str, sop: str | None = None, *, number: int = 1,
                  value: int = 0) -> dict[str, str]:
    """Write a small, valid CT instance; returns its index entry."""
    sop = sop or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.Modality = "FAKE-1", "Test^Fake", "CT"
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = bytes([(value + i) % 256 for i in range(128)])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return {"path": str(path), "study": study, "series": series, "sop": sop, "sop_class": CTImageStorage,
            "ts": ExplicitVRLittleEndian}


def make_study(root: Path, n_series: int = 2, per_series: int = 5) -> tuple[str, list[dict[str, str]]]:
    """A study of ``n_series`` x ``per_series`` instances under ``root``."""
    study = generate_uid()
    entries = []
    for s in range(n_series):
        series = generate_uid()
        for i in range(per_series):
            entries.append(make_instance(root / f"{s}_{i}.dcm", study, series, number=i + 1,
                                         value=s * 50 + i))
    return study, entries


def truncate_copy(entry: dict[str, str], path: Path, keep: int = 60) -> dict[str, str]:
    """A copy of an instance cut ``keep`` bytes into its pixel data (a transfer that broke off)."""
    data = Path(entry["path"]).read_bytes()
    cut = data.rindex(b"\xe0\x7f\x10\x00") + 12 + keep
    path.write_bytes(data[:cut])
    return {**entry, "path": str(path)}


@dataclass
class FakePacs:
    """A running fake PACS."""

    aet: str
    port: int
    workdir: Path
    process: subprocess.Popen[str]

    def requests(self) -> list[dict[str, Any]]:
        log = self.workdir / "requests.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@contextmanager
def fake_pacs(workdir: Path, index: list[dict[str, str]], destinations: dict[str, tuple[str, int]], *,
              faults: dict[str, Any] | None = None, aet: str = "FAKEPACS") -> Iterator[FakePacs]:
    """Start the fake PACS in its own process; stop it at exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.json"
    config.write_text(json.dumps({"aet": aet, "index": index, "faults": faults or {},
                                  "destinations": {k: list(v) for k, v in destinations.items()}}))
    proc = subprocess.Popen([sys.executable, str(HERE), str(config)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server is listening (or the process died)
        if not line.startswith("READY"):
            raise RuntimeError(f"fake PACS did not start: {line!r}")
        yield FakePacs(aet, int(line.split()[1]), workdir, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- the server (its own process) -------------------------------------------------------------
def _serve(config_path: Path) -> None:
    from pynetdicom import AE, _config, evt
    from pynetdicom.association import Association
    from pynetdicom.presentation import build_context
    from pynetdicom.sop_class import (
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
    )

    cfg = json.loads(config_path.read_text())
    index: list[dict[str, str]] = cfg["index"]
    faults: dict[str, Any] = cfg["faults"]
    destinations = {k: tuple(v) for k, v in cfg["destinations"].items()}
    log_path = config_path.with_name("requests.jsonl")
    lock = threading.Lock()
    state = {"moves": 0, "fail_counts": {}}

    _config.STORE_SEND_CHUNKED_DATASET = True  # send file bytes as stored, never re-encoded

    class FileRef(Dataset):
        """A dataset standing for a file: the patched send_c_store streams the file itself."""

    original = Association.send_c_store

    def send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        if isinstance(dataset, FileRef):
            sop = str(dataset.SOPInstanceUID)
            fail = faults.get("fail") or {}
            with lock:
                used = state["fail_counts"].get(sop, 0)
                if sop in fail.get("sops", []) and used < int(fail.get("times", 1)):
                    state["fail_counts"][sop] = used + 1
                    status = Dataset()
                    status.Status = 0xA700  # the source could not read its own copy this time
                    return status
            return original(self, dataset._path, *args, **kwargs)
        return original(self, dataset, *args, **kwargs)

    Association.send_c_store = send_c_store  # type: ignore[method-assign]

    def values(ident: Dataset, key: str) -> list[str]:
        value = ident.get(key)
        if value in (None, ""):
            return []
        return [str(v) for v in value] if not isinstance(value, str) else [v for v in value.split("\\") if v]

    def select(ident: Dataset) -> list[dict[str, str]]:
        rows = index
        for key, field in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series"),
                           ("SOPInstanceUID", "sop")):
            wanted = values(ident, key)
            if wanted:
                rows = [r for r in rows if r[field] in wanted]
        return rows

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        ident = event.identifier
        level = str(ident.QueryRetrieveLevel)
        seen: set[str] = set()
        for row in select(ident):
            key = {"STUDY": row["study"], "SERIES": row["series"]}.get(level, row["sop"])
            if key in seen:
                continue
            seen.add(key)
            out = Dataset()
            out.QueryRetrieveLevel = level
            out.StudyInstanceUID = row["study"]
            if level in ("SERIES", "IMAGE"):
                out.SeriesInstanceUID = row["series"]
            if level == "IMAGE":
                out.SOPInstanceUID = row["sop"]
                out.SOPClassUID = row["sop_class"]
            yield 0xFF00, out

    def on_move(event: Any) -> Iterator[Any]:
        ident = event.identifier
        level = str(ident.QueryRetrieveLevel)
        dest = destinations.get(str(event.move_destination).strip())
        with lock:
            state["moves"] += 1
            move_no = state["moves"]
        rows = select(ident)
        skip = faults.get("skip") or {}
        if level in skip.get("levels", []):
            rows = [r for r in rows if r["sop"] not in skip.get("sops", [])]
        with open(log_path, "a") as fh:
            fh.write(json.dumps({"n": move_no, "level": level, "sops": len(rows),
                                 "series": str(ident.get("SeriesInstanceUID", "") or "")}) + "\n")
        if dest is None:
            yield None, None
            return
        contexts = [build_context(c, t) for c, t in sorted({(r["sop_class"], r["ts"]) for r in rows})]
        fallback = [build_context(CTImageStorage, ExplicitVRLittleEndian)]
        yield dest[0], dest[1], {"contexts": contexts or fallback}
        yield len(rows)
        abort = faults.get("abort_after") or {}
        a702 = faults.get("a702_after") or {}
        for i, row in enumerate(rows):
            if abort and move_no <= int(abort.get("times", 1)) and i == int(abort["k"]):
                event.assoc.abort()
                return
            if a702 and move_no <= int(a702.get("times", 1)) and i == int(a702["k"]):
                yield 0xA702, None
                return
            ref = FileRef()
            ref.SOPInstanceUID = row["sop"]
            ref._path = row["path"]
            yield 0xFF00, ref

    ae = AE(ae_title=cfg["aet"])
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_MOVE, on_move)])
    print(f"READY {server.server_address[1]}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    _ = pydicom  # the server process imports pydicom through pynetdicom as well
    _serve(Path(sys.argv[1]))
