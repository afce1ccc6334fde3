"""Application Entity setup shared by every DICOM client and server of the engine.

pynetdicom never sets TCP_NODELAY; with Nagle's algorithm on, small PDUs stall ~40 ms each.
:func:`enable_tcp_nodelay` fixes that for every socket pynetdicom creates or accepts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from pynetdicom import AE, transport

_patched = threading.Lock()
_done = False

# pynetdicom logs every query/response identifier at INFO (PatientID, PatientName ...): no PHI in
# task logs, so only its warnings pass unless PACSMIG_DICOM_DEBUG is set for a troubleshooting run.
if not os.environ.get("PACSMIG_DICOM_DEBUG"):
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def enable_tcp_nodelay() -> None:
    """Set TCP_NODELAY on every pynetdicom association socket (idempotent)."""
    global _done
    with _patched:
        if _done:
            return
        original = transport.AssociationSocket.__init__

        def init(self: transport.AssociationSocket, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            sock = self.socket
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:  # not yet a TCP socket in a state that takes options
                    pass

        transport.AssociationSocket.__init__ = init  # type: ignore[method-assign]
        _done = True


def make_ae(ae_title: str, timeout: float = 60.0) -> AE:
    """An AE with our title, sane timeouts, TCP_NODELAY and the reactor race fixed."""
    from pacsmig.dicom.reactor import fix_reactor_race

    enable_tcp_nodelay()
    fix_reactor_race()
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 15.0)
    ae.maximum_pdu_size = 0  # unlimited: fewer PDUs per instance
    return ae
