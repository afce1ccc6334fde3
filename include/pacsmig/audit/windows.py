"""Study-date windows: the partitions the C-FIND inventory is mapped over, and how they split."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from pacsmig.errors import ConfigError

#: The label of the pseudo-window that finds studies without a (valid) StudyDate.
UNDATED = "undated"

#: Window sizes :func:`build_windows` knows.
WINDOW_SIZES = ("year", "quarter", "month", "day")


@dataclass(frozen=True, order=True)
class DateWindow:
    """An inclusive range of study dates, ``start <= StudyDate <= end``.

    Examples
    --------
    >>> w = DateWindow(date(2015, 1, 1), date(2015, 12, 31))
    >>> w.label, w.dicom_range
    ('2015-01-01..2015-12-31', '20150101-20151231')
    >>> [x.label for x in w.split()]
    ['2015-01-01..2015-07-02', '2015-07-03..2015-12-31']
    """

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ConfigError(f"date window ends before it starts: {self.start}..{self.end}")

    @property
    def label(self) -> str:
        """``YYYY-MM-DD..YYYY-MM-DD``: the mapped task's name and the parquet part's stem."""
        return f"{self.start.isoformat()}..{self.end.isoformat()}"

    @property
    def dicom_range(self) -> str:
        """The StudyDate range-matching value (``YYYYMMDD-YYYYMMDD``, or one date for one day)."""
        if self.is_single_day:
            return _da(self.start)
        return f"{_da(self.start)}-{_da(self.end)}"

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def is_single_day(self) -> bool:
        return self.start == self.end

    def split(self) -> tuple[DateWindow, DateWindow]:
        """Two halves that together cover exactly this window (a single day cannot split)."""
        if self.is_single_day:
            raise ConfigError(f"a single-day window cannot be split by date: {self.label}")
        middle = self.start + timedelta(days=(self.days - 1) // 2)
        return DateWindow(self.start, middle), DateWindow(middle + timedelta(days=1), self.end)

    @classmethod
    def from_label(cls, label: str) -> DateWindow:
        """Parse :attr:`label` back (XCom carries labels, not objects)."""
        try:
            start, end = label.split("..")
            return cls(date.fromisoformat(start), date.fromisoformat(end))
        except ValueError as exc:
            raise ConfigError(f"not a date window label: {label!r}") from exc


def _da(day: date) -> str:
    """A DICOM DA value; strftime does not zero-pad years before 1000 (the edge window's 0001)."""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def parse_date(value: str | date) -> date:
    """Accept ``YYYY-MM-DD``, ``YYYYMMDD`` or a date."""
    if isinstance(value, date):
        return value
    text = value.strip()
    try:
        if len(text) == 8 and text.isdigit():
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"not a date (YYYY-MM-DD): {value!r}") from exc


def _next_boundary(day: date, size: str) -> date:
    """The first day of the calendar period after the one holding ``day``."""
    if size == "year":
        return date(day.year + 1, 1, 1)
    if size == "quarter":
        month = ((day.month - 1) // 3 + 1) * 3 + 1
        return date(day.year + 1, 1, 1) if month > 12 else date(day.year, month, 1)
    if size == "month":
        return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)
    return day + timedelta(days=1)


def build_windows(date_from: str | date, date_to: str | date, size: str = "year") -> list[DateWindow]:
    """Calendar-aligned windows covering ``date_from..date_to`` inclusive, without gaps or overlaps.

    The first and last windows are clipped to the range, so a range starting mid-year gives a
    short first window.

    Examples
    --------
    >>> [w.label for w in build_windows("2014-06-15", "2016-02-01")]
    ['2014-06-15..2014-12-31', '2015-01-01..2015-12-31', '2016-01-01..2016-02-01']
    >>> len(build_windows("2015-01-01", "2015-12-31", "month"))
    12
    """
    if size not in WINDOW_SIZES:
        raise ConfigError(f"window must be one of {', '.join(WINDOW_SIZES)}, got {size!r}")
    start, end = parse_date(date_from), parse_date(date_to)
    if end < start:
        raise ConfigError(f"date_to {end} is before date_from {start}")
    windows: list[DateWindow] = []
    cursor = start
    while cursor <= end:
        upper = min(_next_boundary(cursor, size) - timedelta(days=1), end)
        windows.append(DateWindow(cursor, upper))
        cursor = upper + timedelta(days=1)
    return windows


#: The edges of every inventory: a study dated outside the requested range (a typo such as 1901
#: or 2091 in a legacy archive) must still be found, so the range is padded by two open windows.
EARLIEST = date(1, 1, 1)
LATEST = date(9999, 12, 31)


def window_labels(date_from: str | date, date_to: str | date, size: str = "year",
                  edges: bool = True) -> list[str]:
    """The labels the DAG maps over: every date window, the two edge windows (dates before and
    after the range, unless ``edges`` is False), then :data:`UNDATED`.

    Examples
    --------
    >>> window_labels("2015-01-01", "2016-12-31")
    ['0001-01-01..2014-12-31', '2015-01-01..2015-12-31', '2016-01-01..2016-12-31', '2017-01-01..9999-12-31', 'undated']
    """
    windows = build_windows(date_from, date_to, size)
    labels = [w.label for w in windows]
    if edges:
        if windows[0].start > EARLIEST:
            labels.insert(0, DateWindow(EARLIEST, windows[0].start - timedelta(days=1)).label)
        if windows[-1].end < LATEST:
            labels.append(DateWindow(windows[-1].end + timedelta(days=1), LATEST).label)
    return labels + [UNDATED]
