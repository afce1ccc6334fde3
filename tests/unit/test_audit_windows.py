"""Date windows and the cap-splitting inventory logic, against an in-memory C-FIND peer."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from pydicom.dataset import Dataset

from pacsmig.audit.inventory import (
    InventoryTruncated,
    WindowStats,
    find_undated,
    find_window,
    inventory_window,
)
from pacsmig.audit.windows import UNDATED, DateWindow, build_windows, window_labels
from pacsmig.dicom.find import FindResult
from pacsmig.errors import ConfigError


def test_windows_cover_the_range_without_gaps_or_overlaps() -> None:
    for size in ("year", "quarter", "month", "day"):
        windows = build_windows("2014-06-15", "2016-02-01", size)
        assert windows[0].start == date(2014, 6, 15) and windows[-1].end == date(2016, 2, 1)
        for a, b in zip(windows, windows[1:], strict=False):
            assert b.start == a.end + timedelta(days=1)
    assert [w.label for w in build_windows("2015-01-01", "2016-12-31")] == [
        "2015-01-01..2015-12-31",
        "2016-01-01..2016-12-31",
    ]
    assert len(build_windows("2015-01-01", "2015-12-31", "month")) == 12
    assert len(build_windows("2015-01-01", "2015-12-31", "quarter")) == 4
    assert window_labels("2015-01-01", "2015-03-01", "month")[-1] == UNDATED


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ConfigError):
        build_windows("2016-01-01", "2015-01-01")
    with pytest.raises(ConfigError):
        build_windows("2016-01-01", "2017-01-01", "week")
    with pytest.raises(ConfigError):
        DateWindow.from_label("2015..x")


def test_split_halves_cover_exactly() -> None:
    w = DateWindow(date(2015, 1, 1), date(2015, 1, 4))
    first, second = w.split()
    assert (first.days + second.days, first.end + timedelta(days=1)) == (4, second.start)
    assert DateWindow.from_label(w.label) == w
    assert w.dicom_range == "20150101-20150104" and first.split()[0].dicom_range == "20150101"
    with pytest.raises(ConfigError):
        DateWindow(date(2015, 1, 1), date(2015, 1, 1)).split()


class CappedPeer:
    """A C-FIND SCP that truncates silently at ``cap`` matches, like Orthanc's LimitFindResults."""

    def __init__(self, studies: list[tuple[str, str, str]], cap: int, match_modality: bool = True) -> None:
        self.studies = studies  # (uid, StudyDate, modality)
        self.cap = cap
        self.match_modality = match_modality
        self.queries = 0

    def find(self, identifier: Dataset) -> FindResult:
        self.queries += 1
        wanted = str(identifier.get("StudyDate", "") or "")
        modality = str(identifier.get("ModalitiesInStudy", "") or "")
        if "-" in wanted:
            lo, hi = wanted.split("-")
        else:
            lo = hi = wanted
        matches = []
        for uid, day, mod in self.studies:
            if wanted and not (day and lo <= day <= hi):
                continue
            if modality and self.match_modality and mod != modality:
                continue
            ds = Dataset()
            ds.StudyInstanceUID, ds.StudyDate, ds.ModalitiesInStudy = uid, day, mod
            ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances = 1, 2
            matches.append(ds)
        return FindResult(identifiers=matches[: self.cap], status=0x0000)


def _archive(
    per_day: int, days: int, modalities: tuple[str, ...] = ("CT", "MR")
) -> list[tuple[str, str, str]]:
    out = []
    for d in range(days):
        day = (date(2015, 1, 1) + timedelta(days=d)).strftime("%Y%m%d")
        out.extend((f"1.2.{d}.{k}", day, modalities[k % len(modalities)]) for k in range(per_day))
    return out


def test_capped_windows_split_until_everything_is_found() -> None:
    studies = _archive(per_day=3, days=40)
    peer = CappedPeer(studies, cap=10)
    stats = WindowStats("x")
    found = find_window(peer, DateWindow(date(2015, 1, 1), date(2015, 12, 31)), 10, stats)  # type: ignore[arg-type]
    assert set(found) == {uid for uid, _, _ in studies}
    assert stats.splits > 0 and not stats.modality_split_days


def test_a_capped_single_day_is_split_by_modality() -> None:
    studies = _archive(per_day=12, days=1)  # 12 on one day, 6 CT + 6 MR, cap 10
    peer = CappedPeer(studies, cap=10)
    stats = WindowStats("x")
    found = find_window(peer, DateWindow(date(2015, 1, 1), date(2015, 1, 2)), 10, stats)  # type: ignore[arg-type]
    assert len(found) == 12 and stats.modality_split_days == ["2015-01-01"]


def test_unsplittable_caps_are_loud_not_silent() -> None:
    with pytest.raises(InventoryTruncated):  # one day, one modality, above the cap
        find_window(
            CappedPeer(_archive(12, 1, ("CT",)), cap=10),
            DateWindow(date(2015, 1, 1), date(2015, 1, 1)),  # type: ignore[arg-type]
            10,
            WindowStats("x"),
        )
    with pytest.raises(InventoryTruncated):  # a source that ignores ModalitiesInStudy
        find_window(
            CappedPeer(_archive(12, 1), cap=10, match_modality=False),  # type: ignore[arg-type]
            DateWindow(date(2015, 1, 1), date(2015, 1, 1)),
            10,
            WindowStats("x"),
        )


def test_undated_query_keeps_missing_and_malformed_dates_only() -> None:
    studies = [("1.1", "20150101", "CT"), ("1.2", "", "MR"), ("1.3", "2015-01-01", "CR")]
    found = find_undated(CappedPeer(studies, cap=100), 100)  # type: ignore[arg-type]
    assert set(found) == {"1.2", "1.3"}


def test_inventory_window_rows_and_stats() -> None:
    peer = CappedPeer(_archive(3, 5), cap=4)
    peer.queries = 0
    records, stats = inventory_window(peer, "2015-01-01..2015-01-05", 4)  # type: ignore[arg-type]
    assert stats.studies == len(records) == 15
    assert {r["modalities"] for r in records} == {"CT", "MR"}
    assert all(r["n_instances"] == 2 and r["study_date_status"] == "ok" for r in records)


def test_edge_windows_catch_studies_dated_outside_the_range() -> None:
    import itertools
    from datetime import date as _date

    from pacsmig.audit.windows import DateWindow, window_labels

    labels = window_labels("2010-01-01", "2024-12-31")
    first, last = DateWindow.from_label(labels[0]), DateWindow.from_label(labels[-2])
    assert first.dicom_range == "00010101-20091231"
    assert last.dicom_range == "20250101-99991231"
    windows = [DateWindow.from_label(label) for label in labels[:-1]]
    for a, b in itertools.pairwise(windows):          # contiguous: no day falls between windows
        assert (b.start - a.end).days == 1
    assert windows[0].start == _date(1, 1, 1) and labels[-1] == "undated"
