"""Load: store instances into the target archive(s) behind one :class:`Destination` interface.

>>> from pacsmig.config import connection
>>> dest = open_destination(connection("target_archive"))  # doctest: +SKIP
>>> acks = dest.store(paths)                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from pacsmig.config import ConnectionSpec
from pacsmig.errors import ConfigError
from pacsmig.load.base import (
    ALREADY_STORED_SAME,
    CONFLICT,
    FAILED,
    STORED,
    BaseDestination,
    Destination,
    DestinationUnavailable,
    StoreAck,
    StoreFailed,
)
from pacsmig.load.compare import Comparison, compare_instances
from pacsmig.load.multi import MultiDestination

__all__ = [
    "ALREADY_STORED_SAME", "CONFLICT", "FAILED", "STORED", "BaseDestination", "Comparison", "Destination",
    "DestinationUnavailable", "MultiDestination", "StoreAck", "StoreFailed", "compare_instances",
    "open_destination", "open_destinations",
]


def open_destination(conn: ConnectionSpec) -> Destination:
    """The destination a connection describes, by ``conn_type``.

    ``http``/``https`` DICOMweb, ``dicom`` C-STORE, ``aws`` S3, ``fs`` a folder (extra ``path``).
    """
    kind = conn.conn_type.lower()
    if kind in ("http", "https", "dicomweb"):
        from pacsmig.load.dicomweb import DicomWebDestination

        return DicomWebDestination.from_connection(conn)
    if kind == "dicom":
        from pacsmig.load.cstore import CStoreDestination

        return CStoreDestination.from_connection(conn)
    if kind in ("aws", "s3"):
        from pacsmig.load.s3 import S3Destination

        return S3Destination.from_connection(conn)
    if kind in ("fs", "file", "filesystem"):
        from pacsmig.load.filesystem import FilesystemDestination

        return FilesystemDestination.from_connection(conn)
    raise ConfigError(f"connection {conn.conn_id}: conn_type {conn.conn_type!r} is not a destination "
                      "(http, dicom, aws, fs)")


def open_destinations(conns: Sequence[ConnectionSpec]) -> Destination:
    """One destination for one connection, a :class:`MultiDestination` for several."""
    if not conns:
        raise ConfigError("no target connection given")
    if len(conns) == 1:
        return open_destination(conns[0])
    return MultiDestination([open_destination(conn) for conn in conns])
