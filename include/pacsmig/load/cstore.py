"""DICOM C-STORE destination: one association per batch, files sent as stored; C-FIND lists, C-GET reads back.

Files are sent from their path with pynetdicom's ``STORE_SEND_CHUNKED_DATASET`` on: the dataset
bytes after the File Meta group go on the wire untouched, in the file's own transfer syntax, on a
presentation context proposed for exactly that (SOP class, transfer syntax) pair. Nothing is
re-encoded: an instance whose pair the peer rejects fails with that reason instead.

The peer must know our calling AE title for C-FIND and C-GET (Orthanc aborts unknown AEs).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pynetdicom import ALL_TRANSFER_SYNTAXES, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from pynetdicom.status import code_to_category

from pacsmig.config import ConnectionSpec, DicomNode
from pacsmig.dicom.ae import make_ae
from pacsmig.load.base import STORED, BaseDestination, Fatal, Item, PutResult, Transient, extra_int

logger = logging.getLogger(__name__)

#: Presentation contexts an association may propose (PS3.8: odd IDs 1..255).
_MAX_CONTEXTS = 128
_PENDING = (0xFF00, 0xFF01)
#: C-STORE failure meaning the peer already holds the SOP Instance UID: prove the content.
_DUPLICATE = 0x0111


class CStoreDestination(BaseDestination):
    """A DICOM archive reached by C-STORE / C-FIND / C-GET (Study Root).

    Parameters
    ----------
    name
        Destination name (the connection id).
    node
        Host, port, the peer's AE title, our calling AE title and timeouts.
    """

    kind = "C-STORE"

    def __init__(self, name: str, node: DicomNode, batch_size: int = 50, retries: int = 4,
                 backoff: float = 1.0) -> None:
        super().__init__(name, batch_size=min(batch_size, _MAX_CONTEXTS - 1), retries=retries,
                         backoff=backoff)
        self.node = node
        self._sop_classes: dict[str, str] = {}
        # Process-wide pynetdicom switch; it only changes send_c_store(path): send the file's
        # encoded dataset as it is instead of decoding and re-encoding it.
        _config.STORE_SEND_CHUNKED_DATASET = True

    @classmethod
    def from_connection(cls, conn: ConnectionSpec) -> CStoreDestination:
        """Build from a ``dicom`` connection (host, port, extra ``ae_title``, ``calling_ae_title``)."""
        node = DicomNode.from_connection(conn)
        extra = conn.extra
        return cls(conn.conn_id, node, batch_size=extra_int(extra, "batch_size", 50),
                   retries=extra_int(extra, "retries", 4), backoff=float(extra.get("backoff") or 1.0))

    # --- associations ----------------------------------------------------------------------
    def _associate(self, contexts: Sequence[tuple[str, Sequence[str]]], what: str,
                   roles: Sequence[Any] = (), handlers: Sequence[Any] = ()) -> Association:
        ae = make_ae(self.node.calling_ae_title, self.node.timeout)
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, list(syntaxes))
        assoc = ae.associate(self.node.host, self.node.port, ae_title=self.node.ae_title,
                             ext_neg=list(roles) or None, evt_handlers=list(handlers) or None)
        if assoc.is_established:
            return assoc
        where = f"{self.node.ae_title}@{self.node.host}:{self.node.port}"
        if assoc.is_rejected:
            raise Fatal(f"association for {what} rejected by {where}")
        raise Transient(f"no association for {what} with {where} (refused, aborted or timed out)")

    @staticmethod
    def _release(assoc: Association) -> None:
        if assoc.is_established:
            assoc.release()

    # --- C-STORE ---------------------------------------------------------------------------
    def _wire_file(self, item: Item, workdir: Path) -> tuple[Path, str]:
        """The file to send: the item's own, or a copy whose File Meta agrees with its dataset.

        pynetdicom takes the C-STORE's Affected SOP Class/Instance UID from the File Meta group;
        a file whose meta disagrees with its dataset (pydicom's rtdose.dcm does) is refused by
        the peer (0xA900). The meta is only the file's envelope, never sent: the copy keeps the
        dataset bytes unchanged.
        """
        meta, offset = split_dataset(item.path)
        if (meta.get("MediaStorageSOPInstanceUID") == item.sop_instance_uid
                and meta.get("MediaStorageSOPClassUID") == item.sop_class_uid):
            return item.path, ""
        fixed = FileMetaDataset()
        fixed.MediaStorageSOPClassUID = item.sop_class_uid
        fixed.MediaStorageSOPInstanceUID = item.sop_instance_uid
        fixed.TransferSyntaxUID = item.transfer_syntax_uid
        fixed.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        buffer = BytesIO()
        buffer.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(buffer, fixed, enforce_standard=True)
        buffer.write(item.load()[offset:])
        path = workdir / f"{item.index}.dcm"
        path.write_bytes(buffer.getvalue())
        logger.warning("SOP %s: File Meta disagrees with the dataset; sent with corrected meta, "
                       "dataset bytes unchanged", item.sop_instance_uid)
        return path, "; File Meta corrected (dataset unchanged)"

    def _put(self, items: Sequence[Item]) -> list[PutResult]:
        with tempfile.TemporaryDirectory(prefix="pacsmig-cstore-") as tmp:
            return self._put_files(items, [self._wire_file(item, Path(tmp)) for item in items])

    def _put_files(self, items: Sequence[Item], files: Sequence[tuple[Path, str]]) -> list[PutResult]:
        pairs = list(dict.fromkeys((item.sop_class_uid, item.transfer_syntax_uid) for item in items))
        assoc = self._associate([(sop, [ts]) for sop, ts in pairs], f"storing {len(items)} instances")
        results: list[PutResult] = []
        try:
            accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
            for item, (path, note) in zip(items, files, strict=True):
                pair = (item.sop_class_uid, item.transfer_syntax_uid)
                if pair not in accepted:
                    why = f"context rejected for SOP class {pair[0]} in transfer syntax {pair[1]}"
                    results.append(PutResult("failed", f"presentation {why} (not re-encoded)"))
                    continue
                try:
                    status = assoc.send_c_store(path)
                except (ValueError, AttributeError) as exc:
                    results.append(PutResult("failed", f"cannot send: {exc}"))
                    continue
                if not status or "Status" not in status:
                    # Aborted, timed out or an invalid answer: the whole batch is retried.
                    raise Transient(f"no C-STORE response for {item.sop_instance_uid}")
                code = int(status.Status)
                category = code_to_category(code)
                detail = f"C-STORE status 0x{code:04X} ({category}){note}"
                if category == "Success":
                    results.append(PutResult(STORED, detail))
                elif category == "Warning" or code == _DUPLICATE:
                    results.append(PutResult("check", detail))
                else:
                    results.append(PutResult("failed", detail))
        finally:
            self._release(assoc)
        return results

    # --- C-FIND ----------------------------------------------------------------------------
    def _find(self, assoc: Association, query: Dataset) -> list[Dataset]:
        rows: list[Dataset] = []
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise Transient("C-FIND got no response (aborted or timed out)")
            code = int(status.Status)
            if code in _PENDING:
                if identifier is not None:
                    rows.append(identifier)
            elif code == 0xFE00:
                # Orthanc cancels at LimitFindInstances: a short list would hide stored instances.
                raise Fatal("C-FIND answer truncated by the target (status 0xFE00, result limit?)")
            elif code != 0x0000:
                raise Fatal(f"C-FIND status 0x{code:04X} ({code_to_category(code)})")
        return rows

    def _list(self, study_instance_uid: str) -> dict[str, str]:
        # Walk study -> series -> images: many archives answer IMAGE level only below a series.
        assoc = self._associate([(StudyRootQueryRetrieveInformationModelFind, ALL_TRANSFER_SYNTAXES[:3])],
                                f"listing study {study_instance_uid}")
        found: dict[str, str] = {}
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = study_instance_uid
            query.SeriesInstanceUID = ""
            query.NumberOfSeriesRelatedInstances = ""
            for series in self._find(assoc, query):
                series_uid = str(series.get("SeriesInstanceUID", ""))
                if not series_uid:
                    continue
                query = Dataset()
                query.QueryRetrieveLevel = "IMAGE"
                query.StudyInstanceUID = study_instance_uid
                query.SeriesInstanceUID = series_uid
                query.SOPInstanceUID = ""
                query.SOPClassUID = ""
                images = self._find(assoc, query)
                for image in images:
                    sop = str(image.get("SOPInstanceUID", ""))
                    if sop:
                        found[sop] = series_uid
                        if image.get("SOPClassUID"):
                            self._sop_classes[sop] = str(image.SOPClassUID)
                expected = series.get("NumberOfSeriesRelatedInstances")
                if expected not in (None, "") and int(expected) > len(images):
                    # A capped answer would make stored instances look absent (and be re-sent unchecked).
                    raise Fatal(f"series {series_uid}: C-FIND returned {len(images)} of {int(expected)} "
                                "instances (result limit at the target?)")
        finally:
            self._release(assoc)
        return found

    # --- C-GET -----------------------------------------------------------------------------
    def _sop_class_of(self, study: str, series: str, sop: str) -> str:
        if sop not in self._sop_classes:
            self._list(study)
        if sop not in self._sop_classes:
            raise KeyError(sop)
        return self._sop_classes[sop]

    def _get(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> bytes:
        sop_class = self._sop_class_of(study_instance_uid, series_instance_uid, sop_instance_uid)
        received: list[bytes] = []

        def on_store(event: evt.Event) -> int:
            received.append(event.encoded_dataset())
            return 0x0000

        # One context per transfer syntax, so the peer can send the file in the syntax it holds.
        contexts = [(StudyRootQueryRetrieveInformationModelGet, ALL_TRANSFER_SYNTAXES[:3])]
        contexts += [(sop_class, [ts]) for ts in ALL_TRANSFER_SYNTAXES[:_MAX_CONTEXTS - 1]]
        assoc = self._associate(contexts, f"C-GET of {sop_instance_uid}",
                                roles=[build_role(sop_class, scp_role=True)],
                                handlers=[(evt.EVT_C_STORE, on_store)])
        final: Dataset | None = None
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = study_instance_uid
            query.SeriesInstanceUID = series_instance_uid
            query.SOPInstanceUID = sop_instance_uid
            for status, _identifier in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                if not status:
                    raise Transient(f"C-GET of {sop_instance_uid} got no response")
                final = status
        finally:
            self._release(assoc)
        if len(received) == 1:
            return received[0]
        if received:
            raise Fatal(f"C-GET of {sop_instance_uid} returned {len(received)} instances")
        code = int(final.Status) if final is not None else 0
        if final is not None and int(final.get("NumberOfFailedSuboperations", 0) or 0) > 0:
            # The peer has it but could not send it to us (no acceptable context): not "absent".
            raise Fatal(f"C-GET of {sop_instance_uid}: sub-operation failed (status 0x{code:04X})")
        raise KeyError(sop_instance_uid)
