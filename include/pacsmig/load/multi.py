"""Several destinations as one (edge archive + cloud copy): an instance is ok only where every one is ok."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pacsmig.errors import LoadError
from pacsmig.load.base import (
    ALREADY_STORED_SAME,
    CONFLICT,
    FAILED,
    STORED,
    Destination,
    StoreAck,
    StoreFailed,
)

logger = logging.getLogger(__name__)


def combine_acks(name: str, per_destination: Sequence[Sequence[StoreAck]]) -> list[StoreAck]:
    """One ack per path from the acks of each destination (same order, same length).

    The status is the worst of them (``conflict`` > ``failed`` > ``stored`` >
    ``already_stored_same``); ``detail`` keeps every destination's answer.
    """
    combined: list[StoreAck] = []
    for acks in zip(*per_destination, strict=True):
        statuses = {ack.status for ack in acks}
        status = next(s for s in (CONFLICT, FAILED, STORED, ALREADY_STORED_SAME) if s in statuses)
        first = next((a for a in acks if a.sop_instance_uid), acks[0])
        combined.append(StoreAck(first.sop_instance_uid, first.study_instance_uid, name, status,
                                 all(ack.ok for ack in acks),
                                 "; ".join(f"{ack.destination}: {ack.status} ({ack.detail})" for ack in acks),
                                 first.path))
    return combined


class MultiDestination(Destination):
    """Store into every destination; ``instances`` is what all of them hold; ``fetch`` reads the first.

    Each destination is still available in ``destinations`` so verification can read back from
    every copy.
    """

    def __init__(self, destinations: Sequence[Destination]) -> None:
        if not destinations:
            raise LoadError("MultiDestination needs at least one destination")
        self.destinations = list(destinations)
        self.name = "+".join(d.name for d in self.destinations)

    def store(self, paths: Sequence[Path]) -> list[StoreAck]:
        """Store into each destination (all are tried even if one fails); acks combined per path."""
        paths = list(paths)
        results: list[list[StoreAck]] = []
        failures: list[str] = []
        for destination in self.destinations:
            try:
                results.append(destination.store(paths))
            except StoreFailed as exc:
                results.append(exc.acks)
                failures.append(str(exc))
        combined = combine_acks(self.name, results)
        if failures:
            raise StoreFailed(self.name, combined, "; ".join(failures))
        return combined

    def instances(self, study_instance_uid: str) -> dict[str, str]:
        """The instances present at every destination (series UID as the first one reports it)."""
        listings = [d.instances(study_instance_uid) for d in self.destinations]
        common = set(listings[0]).intersection(*listings[1:])
        return {sop: series for sop, series in listings[0].items() if sop in common}

    def fetch(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> bytes:
        """The instance from the first destination (the primary archive)."""
        return self.destinations[0].fetch(study_instance_uid, series_instance_uid, sop_instance_uid)

    def close(self) -> None:
        """Close every destination (each is tried even if one fails to close)."""
        errors: list[Exception] = []
        for destination in self.destinations:
            try:
                destination.close()
            except Exception as exc:  # noqa: BLE001 - close the rest, then report
                errors.append(exc)
        if errors:
            raise LoadError(f"closing {self.name}: {errors[0]}") from errors[0]


__all__ = ["MultiDestination", "combine_acks"]
