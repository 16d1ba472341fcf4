"""Timer-trigger schedules: NCRONTAB expressions and TimeSpan intervals, as Azure Functions reads them.

NCRONTAB has six fields, ``{second} {minute} {hour} {day} {month} {day-of-week}``; five-field cron is
read with second 0. Each field takes ``*``, values, ranges ``a-b``, lists ``a,b`` and steps ``*/n``,
``a-b/n`` or ``a/n`` (``a`` to the field's maximum). Months and weekdays also take English names, case
insensitive, in full or cut to three letters or more (``Jan``, ``Sept``, ``Mon``, ``Thurs``). Day of week
runs 0-6 from Sunday, and 7 is Sunday too.

Day and day-of-week combine as the NCrontab library behind Azure Functions combines them: a date fires
only when it matches both (``0 0 0 13 * Fri`` is every Friday the 13th), unlike Vixie cron's either-or.

Fire times are wall-clock times in the zone of the moment asked about. A wall time that a DST change
skips never fires; one that a DST change repeats fires at both instants.

A TimeSpan (``hh:mm:ss``, ``d.hh:mm:ss``, ``dd:hh:mm:ss``, and ``dd:hh:mm`` when the first number is 24
or more, as .NET reads it) is an interval: the next fire is that long after the moment asked about,
which is the last run or the start.
"""

from __future__ import annotations

import calendar
import re
from abc import ABC, abstractmethod
from bisect import bisect_left
from dataclasses import dataclass
from datetime import MAXYEAR, UTC, datetime, timedelta, tzinfo

__all__ = ["CronSchedule", "IntervalSchedule", "InvalidSchedule", "Schedule", "parse_schedule"]

# Every date that exists at all falls on every weekday within one 400-year Gregorian cycle.
_SEARCH_YEARS = 400
_ONE_SECOND = timedelta(seconds=1)
_MAX_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_DIGITS = re.compile(r"[0-9]+")
_TIMESPAN = re.compile(
    r"(?:(?P<days>[0-9]+)\.)?(?P<a>[0-9]+):(?P<b>[0-9]+)(?::(?P<c>[0-9]+)(?:\.(?P<frac>[0-9]{1,7}))?)?"
)
_TIMESPAN_DAYS = re.compile(r"(?P<days>[0-9]+):(?P<h>[0-9]+):(?P<m>[0-9]+):(?P<s>[0-9]+)(?:\.(?P<frac>[0-9]{1,7}))?")


class InvalidSchedule(ValueError):
    """A schedule expression that is neither valid NCRONTAB nor a valid TimeSpan."""

    def __init__(self, field: str, problem: str, expression: str) -> None:
        super().__init__(f"{field}: {problem} in '{expression}'")
        self.field = field
        self.problem = problem
        self.expression = expression

    def __reduce__(self) -> tuple[type[InvalidSchedule], tuple[str, str, str]]:
        return (type(self), (self.field, self.problem, self.expression))


class Schedule(ABC):
    """When a timer trigger fires."""

    expression: str

    @abstractmethod
    def next_after(self, moment: datetime) -> datetime:
        """Return the first fire time strictly after the aware datetime `moment`, in its zone."""


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """An NCRONTAB schedule; each field holds its allowed values in ascending order."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    days_of_week: tuple[int, ...]

    def next_after(self, moment: datetime) -> datetime:
        """Return the first fire time strictly after the aware datetime `moment`, in its zone."""
        zone = _zone_of(moment)
        after = moment.astimezone(UTC)
        wall = moment.replace(tzinfo=None, fold=0)
        best = self._first_instant_after(wall, zone, after)
        repeat = _repeat_of(moment)
        if repeat is not None:
            # `moment` is the first pass of a wall time that DST's end repeats: the earlier wall times of
            # the repeated stretch fire again on the second pass, which may come before `best`.
            stretch_start, length = repeat
            match = self._next_wall_time(max(stretch_start - _ONE_SECOND, wall - length))
            if match is not None and match <= wall:
                second_pass = _instants(match, zone)[-1]
                if after < second_pass[0] < best[0]:
                    best = second_pass
        return best[1]

    def _first_instant_after(self, wall: datetime, zone: tzinfo, after: datetime) -> tuple[datetime, datetime]:
        """Return (UTC, local) of the first match after the naive `wall` whose instant is after `after`."""
        cursor = wall
        while True:
            match = self._next_wall_time(cursor)
            if match is None:
                raise InvalidSchedule("schedule", f"no fire time after {wall.isoformat()}", self.expression)
            for instant in _instants(match, zone):
                if instant[0] > after:
                    return instant
            cursor = match

    def _next_wall_time(self, after: datetime) -> datetime | None:
        """Return the first matching naive wall time strictly after `after`, skipping by fields."""
        try:
            start = after.replace(microsecond=0) + _ONE_SECOND
        except OverflowError:
            return None
        year, month, day = start.year, start.month, start.day
        hour, minute, second = start.hour, start.minute, start.second
        last_year = min(year + _SEARCH_YEARS, MAXYEAR)
        while year <= last_year:
            found = _ceiling(self.months, month)
            if found is None:
                year, month, day, hour, minute, second = year + 1, 1, 1, 0, 0, 0
                continue
            if found != month:
                month, day, hour, minute, second = found, 1, 0, 0, 0
            found = self._next_day(year, month, day)
            if found is None:
                year, month = (year, month + 1) if month < 12 else (year + 1, 1)
                day, hour, minute, second = 1, 0, 0, 0
                continue
            if found != day:
                day, hour, minute, second = found, 0, 0, 0
            found = _ceiling(self.hours, hour)
            if found is None:
                day, hour, minute, second = day + 1, 0, 0, 0
                continue
            if found != hour:
                hour, minute, second = found, 0, 0
            found = _ceiling(self.minutes, minute)
            if found is None:
                hour, minute, second = hour + 1, 0, 0
                continue
            if found != minute:
                minute, second = found, 0
            found = _ceiling(self.seconds, second)
            if found is None:
                minute, second = minute + 1, 0
                continue
            return datetime(year, month, day, hour, minute, found)  # a naive wall time, zoned by the caller
        return None

    def _next_day(self, year: int, month: int, day: int) -> int | None:
        """Return the first day from `day` on in this month that fires, or None."""
        last = calendar.monthrange(year, month)[1]
        candidate = _ceiling(self.days, day)
        while candidate is not None and candidate <= last:
            # NCrontab semantics: the day of month and the day of week must both match.
            if (calendar.weekday(year, month, candidate) + 1) % 7 in self.days_of_week:
                return candidate
            candidate = _ceiling(self.days, candidate + 1)
        return None


@dataclass(frozen=True)
class IntervalSchedule(Schedule):
    """A TimeSpan schedule: fire `interval` after the last run (or the start)."""

    expression: str
    interval: timedelta

    def next_after(self, moment: datetime) -> datetime:
        """Return `moment` plus the interval in elapsed time, in the zone of `moment`."""
        zone = _zone_of(moment)
        try:
            return (moment.astimezone(UTC) + self.interval).astimezone(zone)
        except OverflowError:
            raise InvalidSchedule("timespan", f"no fire time after {moment.isoformat()}", self.expression) from None


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    star_high: int
    names: tuple[str, ...] = ()


_MONTH_NAMES = tuple(calendar.month_name[1:])
_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_FIELDS = (
    _Field("second", 0, 59, 59),
    _Field("minute", 0, 59, 59),
    _Field("hour", 0, 23, 23),
    _Field("day", 1, 31, 31),
    _Field("month", 1, 12, 12, _MONTH_NAMES),
    _Field("day-of-week", 0, 7, 6, _DAY_NAMES),
)


def parse_schedule(expression: str) -> Schedule:
    """Parse an NCRONTAB expression (six fields, or five with second 0) or a TimeSpan."""
    text = expression.strip()
    if not text:
        raise InvalidSchedule("schedule", "expression is empty", expression)
    if ":" in text:
        return IntervalSchedule(expression, _parse_timespan(text, expression))
    tokens = text.split()
    if len(tokens) == 5:
        tokens.insert(0, "0")
    if len(tokens) != 6:
        raise InvalidSchedule(
            "schedule",
            f"expected 6 fields (second minute hour day month day-of-week) or 5, got {len(tokens)}",
            expression,
        )
    seconds, minutes, hours, days, months, weekdays = (
        _parse_field(field, token, expression) for field, token in zip(_FIELDS, tokens, strict=True)
    )
    if not any(day <= _MAX_DAYS_IN_MONTH[month - 1] for month in months for day in days):
        raise InvalidSchedule("day", f"{tokens[3]} never occurs in month {tokens[4]}", expression)
    return CronSchedule(expression, seconds, minutes, hours, days, months, weekdays)


def _parse_field(field: _Field, token: str, expression: str) -> tuple[int, ...]:
    values: set[int] = set()
    for item in token.split(","):
        if not item:
            raise InvalidSchedule(field.name, f"empty list item in {token!r}", expression)
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _DIGITS.fullmatch(step_text):
                raise InvalidSchedule(field.name, f"step {step_text!r} is not a number", expression)
            step = int(step_text)
            if step == 0:
                raise InvalidSchedule(field.name, f"step 0 in {item!r} must be at least 1", expression)
        if body == "*":
            low, high = field.low, field.star_high
        elif "-" in body:
            first, _, last = body.partition("-")
            low, high = _parse_value(field, first, item, expression), _parse_value(field, last, item, expression)
            if low > high:
                raise InvalidSchedule(field.name, f"range {body!r} runs backwards", expression)
        else:
            low = _parse_value(field, body, item, expression)
            high = max(low, field.star_high) if slash else low
        values.update(range(low, high + 1, step))
    if field.name == "day-of-week" and 7 in values:
        values.discard(7)
        values.add(0)
    return tuple(sorted(values))


def _parse_value(field: _Field, text: str, item: str, expression: str) -> int:
    if _DIGITS.fullmatch(text):
        value = int(text)
        if not field.low <= value <= field.high:
            raise InvalidSchedule(field.name, f"{value} is out of range {field.low}-{field.high}", expression)
        return value
    if not text:
        raise InvalidSchedule(field.name, f"{item!r} is missing a value", expression)
    if not field.names:
        raise InvalidSchedule(field.name, f"{text!r} is not a number", expression)
    wanted = text.lower()
    if len(wanted) >= 3:
        for offset, name in enumerate(field.names):
            if name.lower().startswith(wanted):
                return field.low + offset
    raise InvalidSchedule(field.name, f"unknown name {text!r}", expression)


def _parse_timespan(text: str, expression: str) -> timedelta:
    if found := _TIMESPAN_DAYS.fullmatch(text):
        days, hours, minutes, seconds = (int(found[key]) for key in ("days", "h", "m", "s"))
        fraction = found["frac"]
    elif found := _TIMESPAN.fullmatch(text):
        a, b = int(found["a"]), int(found["b"])
        c = int(found["c"]) if found["c"] is not None else 0
        fraction = found["frac"]
        if found["days"] is None and found["c"] is not None and a >= 24 and fraction is None:
            days, hours, minutes, seconds = a, b, c, 0  # .NET reads "24:00:00" and up as dd:hh:mm
        else:
            days, hours, minutes, seconds = int(found["days"] or 0), a, b, c
    else:
        raise InvalidSchedule("timespan", f"{text!r} is not hh:mm:ss, d.hh:mm:ss or dd:hh:mm:ss", expression)
    for label, value, limit in (("hours", hours, 23), ("minutes", minutes, 59), ("seconds", seconds, 59)):
        if value > limit:
            raise InvalidSchedule("timespan", f"{label} {value} is out of range 0-{limit}", expression)
    microseconds = int((fraction or "0").ljust(7, "0")) // 10
    try:
        interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds, microseconds=microseconds)
    except OverflowError:
        raise InvalidSchedule("timespan", f"{days} days is too long", expression) from None
    if interval <= timedelta(0):
        raise InvalidSchedule("timespan", "the interval must be longer than zero", expression)
    return interval


def _ceiling(values: tuple[int, ...], least: int) -> int | None:
    """Return the smallest of the sorted `values` that is at least `least`, or None."""
    index = bisect_left(values, least)
    return values[index] if index < len(values) else None


def _zone_of(moment: datetime) -> tzinfo:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"moment must be timezone-aware, got {moment.isoformat()}")
    return moment.tzinfo


def _repeat_of(moment: datetime) -> tuple[datetime, timedelta] | None:
    """Return (first wall time, length) of the repeated stretch when `moment` is its first pass, else None."""
    early, late = moment.replace(fold=0).utcoffset(), moment.replace(fold=1).utcoffset()
    if moment.fold or early is None or late is None or early <= late:
        return None
    length = early - late
    zone = moment.tzinfo
    base = moment.replace(tzinfo=None, fold=0, microsecond=0)
    inside, outside = 0, int(length.total_seconds()) + 1  # seconds back from `base`
    while outside - inside > 1:
        middle = (inside + outside) // 2
        probe = (base - timedelta(seconds=middle)).replace(tzinfo=zone)
        if probe.replace(fold=0).utcoffset() != probe.replace(fold=1).utcoffset():
            inside = middle
        else:
            outside = middle
    return base - timedelta(seconds=inside), length


def _instants(wall: datetime, zone: tzinfo) -> list[tuple[datetime, datetime]]:
    """Return (UTC, local) for each instant the naive wall time `wall` names in `zone`: none, one or two."""
    found: dict[datetime, datetime] = {}
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        local = instant.astimezone(zone)
        if local.replace(tzinfo=None) == wall:
            found.setdefault(instant, local)
    return sorted(found.items())
