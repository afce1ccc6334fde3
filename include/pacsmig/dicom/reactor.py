"""A fix for pynetdicom's reactor pause race, which drops DIMSE responses ("Received unexpected ... message").

Before a ``send_c_*`` call reads its responses, pynetdicom 3.0 pauses the association's reactor
thread: ``_reactor_checkpoint.clear()`` then spin until ``_is_paused``. The reactor sets
``_is_paused = True`` *before* ``checkpoint.wait()`` and resets it after, so if the checkpoint is
cleared just after the reactor passed ``wait()``, the sender sees a stale ``True``, sends its
request, and the still-running reactor takes the response off the queue and discards it as an
unexpected request. A lost C-FIND row hides an instance; a lost final C-MOVE response costs a
DIMSE timeout. The window is tiny but real (seen in this project's tests), and it widens under
load, which fits the losses earlier measured with several associations on threads of one process.

:func:`fix_reactor_race` gives every new association a checkpoint whose ``clear()`` invalidates
``_is_paused`` atomically and whose ``wait()`` sets it only when the reactor really blocks.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from pynetdicom.association import Association

_lock = threading.Lock()
_done = False


class _Checkpoint(threading.Event):
    """``threading.Event`` that keeps its association's ``_is_paused`` truthful."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self._assoc = weakref.ref(assoc)
        self._parked = False  # the reactor is inside wait() on a cleared checkpoint
        self.set()

    def _mark(self, paused: bool) -> None:
        assoc = self._assoc()
        if assoc is not None:
            assoc._is_paused = paused

    def clear(self) -> None:
        """Clear; the reactor counts as paused only if it is already parked in wait()."""
        with self._cond:
            self._flag = False
            self._mark(self._parked)

    def wait(self, timeout: float | None = None) -> bool:
        """Block while cleared; only a reactor that really blocks here counts as paused."""
        with self._cond:
            if self._flag:
                return True
            self._parked = True
            self._mark(True)
            try:
                return self._cond.wait_for(lambda: self._flag, timeout)
            finally:
                self._parked = False


def fix_reactor_race() -> None:
    """Install the checkpoint on every Association created from now on (idempotent)."""
    global _done
    with _lock:
        if _done:
            return
        original = Association.__init__

        def init(self: Association, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            self._reactor_checkpoint = _Checkpoint(self)

        Association.__init__ = init  # type: ignore[method-assign]
        _done = True
