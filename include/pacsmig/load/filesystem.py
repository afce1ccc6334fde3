"""Filesystem destination: ``<path>/<study>/<series>/<sop>.dcm``, written atomically, never overwritten."""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

from pacsmig.config import ConnectionSpec
from pacsmig.errors import ConfigError
from pacsmig.load.base import (
    STORED,
    BaseDestination,
    Fatal,
    Item,
    PutResult,
    Transient,
    extra_float,
    extra_int,
)

_TMP = ".incoming"
_TARGET_FULL_OR_LOCKED = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _safe(uid: str) -> str:
    """A UID as a path component (UIDs are digits and dots; anything else would escape the tree)."""
    if not uid or uid.startswith(".") or "/" in uid or "\\" in uid or "\x00" in uid:
        raise ValueError(f"not a usable UID for a path: {uid!r}")
    return uid


def _discard(path: Path) -> None:
    """Remove a temporary file if it is there (and if its folder still is)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def instance_key(study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> str:
    """The relative key shared by the filesystem and S3 layouts."""
    return f"{_safe(study_instance_uid)}/{_safe(series_instance_uid)}/{_safe(sop_instance_uid)}.dcm"


class FilesystemDestination(BaseDestination):
    """A folder as an archive (an edge copy, a hand-off disk, or the file-backed test double).

    A file is written to ``.incoming/`` and hard-linked to its final name, which fails if the name
    exists: a concurrent or repeated store can never replace an object, it is compared instead.
    """

    kind = "filesystem"

    def __init__(self, name: str, root: Path, batch_size: int = 100, retries: int = 2,
                 backoff: float = 0.2) -> None:
        super().__init__(name, batch_size=batch_size, retries=retries, backoff=backoff)
        self.root = Path(root)
        try:
            (self.root / _TMP).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"destination {name}: cannot create {self.root}: {exc}") from exc

    @classmethod
    def from_connection(cls, conn: ConnectionSpec) -> FilesystemDestination:
        """Build from an ``fs`` connection (extra ``path``)."""
        path = conn.extra.get("path") or conn.schema or conn.host
        if not path:
            raise ConfigError(f"connection {conn.conn_id}: extra.path is required for a filesystem target")
        extra = conn.extra
        return cls(conn.conn_id, Path(str(path)), batch_size=extra_int(extra, "batch_size", 100),
                   retries=extra_int(extra, "retries", 2), backoff=extra_float(extra, "backoff", 0.2))

    def _path(self, study: str, series: str, sop: str) -> Path:
        return self.root / instance_key(study, series, sop)

    def _put_one(self, item: Item) -> PutResult:
        try:
            final = self._path(item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid)
        except ValueError as exc:
            return PutResult("failed", str(exc))
        tmp = self.root / _TMP / f"{uuid.uuid4().hex}.part"
        try:
            # Our own staging area failing means the whole target is unusable.
            with open(tmp, "wb") as fh:
                fh.write(item.load())
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            _discard(tmp)
            error = Fatal if exc.errno in _TARGET_FULL_OR_LOCKED else Transient
            raise error(f"writing {self.root / _TMP}: {exc.strerror}") from exc
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.link(tmp, final)
        except FileExistsError:
            return PutResult("check", "file exists")
        except OSError as exc:
            # Something in the way of this one instance (a file where its folder should be).
            where = final.relative_to(self.root)
            return PutResult("failed", f"{type(exc).__name__}: {exc.strerror} for {where}")
        finally:
            _discard(tmp)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return PutResult(STORED, f"written sha256={item.sha256}")

    def _list(self, study_instance_uid: str) -> dict[str, str]:
        study_dir = self.root / _safe(study_instance_uid)
        if not study_dir.is_dir():
            return {}
        return {f.name[:-4]: f.parent.name for f in study_dir.glob("*/*.dcm") if f.is_file()}

    def _get(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> bytes:
        path = self._path(study_instance_uid, series_instance_uid, sop_instance_uid)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise KeyError(sop_instance_uid) from exc
