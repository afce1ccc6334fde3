"""The storage SCP that receives C-MOVE sub-operations (and C-GET stores) into the shared staging area.

Several task processes may each run one on the same port (``SO_REUSEPORT``): the kernel spreads
incoming associations between them, and because every receiver writes to the same staging root
keyed by study UID, it does not matter which process receives which study. Scale by processes:
several associations on threads of one pynetdicom process lost instances in earlier measurements.

Only the configured source may store: the calling AE title must be ``node.ae_title`` (else
A-ASSOCIATE-RJ "calling AE title not recognised", by pynetdicom's ACSE) and the peer address must
be one of ``node.host``'s addresses (else the same rejection, sent by :class:`ReusePortServer`).
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext, build_context
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from pacsmig.config import DicomNode
from pacsmig.dicom.ae import make_ae
from pacsmig.dicom.reactor import fix_reactor_race
from pacsmig.dicom.staging import STATUS_PROCESSING_FAILURE, StagingStore
from pacsmig.errors import DicomError

logger = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ PDU: rejected-permanent, service-user, calling AE title not recognised (PS3.8 9.3.4).
_ASSOCIATE_RJ_CALLING_AE = bytes([0x03, 0x00, 0, 0, 0, 4, 0x00, 0x01, 0x01, 0x03])

#: Private storage SOP classes seen in legacy archives that pynetdicom does not list.
EXTRA_STORAGE_SOP_CLASSES = (
    "1.3.12.2.1107.5.9.1",  # Siemens CSA Non-Image Storage
    "1.2.840.113619.4.26",  # GE Private 3D Model Storage
    "1.2.840.113619.4.27",  # GE Private Collage Storage
    "1.2.840.113619.4.30",  # GE eNTEGRA Protocol or NM Genie Storage
    "1.2.840.113619.4.5.249",  # GE PET Raw Data Storage
)


def storage_sop_classes() -> list[str]:
    """Every storage SOP class the SCP accepts (pynetdicom's full list plus known private ones)."""
    uids = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return uids + [uid for uid in EXTRA_STORAGE_SOP_CLASSES if uid not in uids]


def storage_contexts(transfer_syntaxes: Iterable[str] = AllTransferSyntaxes) -> list[PresentationContext]:
    """Acceptor contexts: every storage SOP class, every transfer syntax pydicom knows.

    Accepting compressed and lossy syntaxes as-is means the source never decompresses (or worse,
    re-compresses) to reach a syntax we accept.
    """
    return list(_storage_contexts(tuple(transfer_syntaxes)))


@functools.lru_cache(maxsize=4)
def _storage_contexts(syntaxes: tuple[str, ...]) -> tuple[PresentationContext, ...]:
    # Building ~180 contexts costs ~0.1 s; a retrieve starts a receiver per study.
    contexts = [build_context(uid, list(syntaxes)) for uid in storage_sop_classes()]
    contexts.append(build_context(Verification))
    return tuple(contexts)


def resolve_addresses(host: str) -> set[str]:
    """The IP addresses of ``host`` (a name or a literal)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise DicomError(f"cannot resolve source host {host!r}: {exc}") from exc
    addresses = {str(info[4][0]) for info in infos}
    # An IPv4 peer may show up as IPv4-mapped IPv6 on a dual-stack socket.
    addresses |= {f"::ffff:{a}" for a in list(addresses) if "." in a and ":" not in a}
    return addresses


def _remote_ae(event: Event) -> str:
    return str(event.assoc.remote.get("ae_title") or "").strip()


def handle_store(event: Event, store: StagingStore, study_hint: str | None = None) -> int:
    """EVT_C_STORE handler: keep the received bytes (never re-encoded) and answer a named status.

    We answer only after the bytes are durably on disk, so a final C-MOVE response means every
    success it counts is already in staging.
    """
    request = event.request
    sop_uid = str(request.AffectedSOPInstanceUID or "")
    try:
        encoded = event.encoded_dataset()
        originator = request.MoveOriginatorApplicationEntityTitle
        outcome = store.store(
            encoded,
            affected_sop_instance_uid=sop_uid,
            affected_sop_class_uid=str(request.AffectedSOPClassUID or ""),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            calling_ae=_remote_ae(event),
            move_originator_message_id=request.MoveOriginatorMessageID,
            move_originator_ae=str(originator).strip() if originator else None,
            study_hint=study_hint,
        )
    except Exception:
        logger.exception("C-STORE of SOP %s failed before it could be kept", sop_uid)
        return STATUS_PROCESSING_FAILURE
    logger.debug("C-STORE SOP %s study %s: %s (0x%04X)", sop_uid, outcome.study_instance_uid,
                 outcome.kind, outcome.status)
    return outcome.status


def _log_rejected(event: Event) -> None:
    logger.warning("association rejected: calling AE %r from %s not recognised", _remote_ae(event),
                   event.assoc.remote.get("address"))


class ReusePortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with SO_REUSEPORT and a peer-address allow list."""

    reuse_port: bool = True
    allowed_addresses: set[str] | None = None

    def server_bind(self) -> None:
        """Set SO_REUSEPORT (several receiver processes on one port) before binding."""
        if self.reuse_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse peers whose address is not the source's, with an A-ASSOCIATE-RJ."""
        host = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        if self.allowed_addresses is None or host in self.allowed_addresses:
            return True
        logger.warning("association rejected: peer %s is not the configured source", host)
        try:
            request.settimeout(2.0)
            request.recv(65536)  # the A-ASSOCIATE-RQ: answer it rather than reset the peer
            request.sendall(_ASSOCIATE_RJ_CALLING_AE)
        except OSError:
            pass
        return False


class StorageSCP:
    """A storage SCP on ``node.storage_port`` writing into ``staging_root`` (a context manager).

    Parameters
    ----------
    node
        The source PACS: only its AE title and address may store here.
    staging_root, quarantine_root
        Shared folders (see :mod:`pacsmig.dicom.staging`).
    port
        Listen port; default ``node.storage_port``.
    reuse_port
        Set SO_REUSEPORT so other processes can listen on the same port.

    Examples
    --------
    >>> with StorageSCP(node, Path("staging"), Path("quarantine")) as scp:  # doctest: +SKIP
    ...     pass  # C-MOVE to node.move_destination here
    """

    def __init__(self, node: DicomNode, staging_root: Path, quarantine_root: Path, *,
                 port: int | None = None, reuse_port: bool = True, bind_address: str = "",
                 restrict_peer_address: bool = True) -> None:
        self.node = node
        self.store = StagingStore(staging_root, quarantine_root)
        self.port = int(node.storage_port if port is None else port)
        self.reuse_port = reuse_port
        self.bind_address = bind_address
        self.restrict_peer_address = restrict_peer_address
        self._server: ReusePortServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StorageSCP:
        """Bind and serve in a background thread (``ae.start_server(..., block=False)`` semantics)."""
        if self._server is not None:
            return self
        fix_reactor_race()
        ae = make_ae(self.node.calling_ae_title, self.node.timeout)
        ae.require_calling_aet = [self.node.ae_title]
        ae.maximum_associations = 64
        # Our AE title is the move destination the source was told to use.
        ae_title = self.node.move_destination or self.node.calling_ae_title
        handlers = [(evt.EVT_C_STORE, handle_store, [self.store]), (evt.EVT_REJECTED, _log_rejected)]
        allowed = resolve_addresses(self.node.host) if self.restrict_peer_address else None

        class _Server(ReusePortServer):
            reuse_port = self.reuse_port
            allowed_addresses = allowed

        try:
            server = ae.make_server((self.bind_address, self.port), ae_title=ae_title,
                                    contexts=storage_contexts(), evt_handlers=handlers,
                                    server_class=_Server)
        except OSError as exc:
            raise DicomError(f"storage SCP cannot listen on port {self.port}: {exc}") from exc
        ae._servers.append(server)  # as start_server does: AssociationServer.shutdown() removes it
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"StorageSCP@{self.port}", daemon=True)
        self._thread.start()
        self._server = server
        self.port = int(server.server_address[1])
        logger.info("storage SCP %s listening on port %d (reuse_port=%s)", ae_title, self.port,
                    self.reuse_port)
        return self

    @property
    def active_associations(self) -> int:
        """Associations currently open on this receiver."""
        return len(self._server.active_associations) if self._server else 0

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, then let in-flight associations finish (bounded by ``timeout``)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        wait = self.node.timeout * 2 if timeout is None else timeout
        for assoc in server.active_associations:
            assoc.join(timeout=wait)
            if assoc.is_alive():
                logger.error("storage SCP: association from %s still open after %.0f s; aborting it",
                             assoc.remote.get("ae_title"), wait)
                assoc.abort()
        logger.info("storage SCP on port %d stopped", self.port)

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
