"""Timer-trigger schedules: NCRONTAB expressions and TimeSpan intervals, as Azure Functions reads them.

NCRONTAB has six fields, ``{second} {minute} {hour} {day} {month} {day-of-week}``; five-field cron is
read with second 0. Each field takes ``*``, values, ranges ``a-b``, lists ``a,b`` and steps ``*/n``,
``a-b/n`` or ``a/n`` (``a`` to the field's maximum). Months and weekdays also take English names, case
insensitive, in full or cut to three letters or more (``Jan``, ``Sept``, ``Mon``, ``Thurs``). Day of week
runs 0-6 from Sunday, and 7 is Sunday too.

Day and day-of-week combine as the NCrontab library behind Azure Functions combines them: a date fires
only when it matches both (``0 0 0 13 * Fri`` is every Friday the 13th), unlike Vixie cron's either-or.

The croniter library expands each field and finds the next matching wall time (``day_or=False`` for the
AND above). What stays here, and why: the NCRONTAB grammar check, because croniter accepts syntax Azure
rejects (``L``, ``W``, ``#``, ``?``, ``H``, ``@daily``, seven fields, wrap-around ranges such as
``17-9``) and its errors name neither the field nor the value; the names, because croniter knows only
three-letter ones (NCrontab takes ``Sept``, ``Thurs``); equal ranges such as ``9-9``, which croniter reads
as the whole cycle and NCrontab as the one value; and the time-zone mapping below, because croniter moves
a wall time that DST skips to the next existing time and fires a repeated wall time only once.

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cached_property

from croniter import CroniterBadCronError, croniter

__all__ = ["CronSchedule", "IntervalSchedule", "InvalidSchedule", "Schedule", "parse_schedule"]

# Every date that exists at all falls on every weekday within one 400-year Gregorian cycle.
_SEARCH_YEARS = 400
_ONE_SECOND = timedelta(seconds=1)
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
        """Return the first matching naive wall time strictly after the naive `after`, or None."""
        # Matches are whole seconds, so "after `after`" is "after `after` cut to the second"; croniter
        # reads a naive start as a plain wall clock and returns naive wall times.
        start = after.replace(microsecond=0)
        try:
            found: datetime = croniter(
                self._croniter_expression,
                start,
                day_or=False,
                second_at_beginning=True,
                max_years_between_matches=_SEARCH_YEARS,
            ).get_next(datetime)
        except (ValueError, OverflowError):  # CroniterBadDateError, or a date past year 9999
            return None
        return found

    @cached_property
    def _croniter_expression(self) -> str:
        """The fields as explicit value lists, seconds first (croniter's ``second_at_beginning``)."""
        fields = (self.seconds, self.minutes, self.hours, self.days, self.months, self.days_of_week)
        return " ".join(",".join(str(value) for value in values) for values in fields)


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


# croniter.expand lists the fields minute, hour, day, month, day-of-week, second.
_CRONITER_ORDER = (_FIELDS[1], _FIELDS[2], _FIELDS[3], _FIELDS[4], _FIELDS[5], _FIELDS[0])


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
    canonical = " ".join(_parse_field(field, token, expression) for field, token in zip(_FIELDS, tokens, strict=True))
    try:
        # strict: croniter refuses a day that none of the months has (31 February).
        expanded, _ = croniter.expand(canonical, second_at_beginning=True, strict=True)
    except CroniterBadCronError as exc:
        if "never occur" in str(exc):
            raise InvalidSchedule("day", f"{tokens[3]} never occurs in month {tokens[4]}", expression) from None
        raise InvalidSchedule("schedule", f"croniter refused {canonical!r}: {exc}", expression) from None
    minutes, hours, days, months, weekdays, seconds = (
        tuple(range(field.low, field.star_high + 1)) if values == ["*"] else tuple(sorted(values))
        for field, values in zip(_CRONITER_ORDER, expanded, strict=True)
    )
    return CronSchedule(expression, seconds, minutes, hours, days, months, weekdays)


def _parse_field(field: _Field, token: str, expression: str) -> str:
    """Check one NCRONTAB field and return it in croniter's syntax: numbers, ranges ``a-b`` and steps ``/n``."""
    items: list[str] = []
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
        items.extend(_croniter_items(field, low, high, step))
    return ",".join(items)


def _croniter_items(field: _Field, low: int, high: int, step: int) -> list[str]:
    """Write the values low..high by step as croniter items that mean exactly those values."""
    if high > field.star_high:  # day-of-week 7 is Sunday: croniter would wrap "5-7" round through 0
        wrapped = ["0"] if (high - low) % step == 0 else []
        return (_croniter_items(field, low, field.star_high, step) if low <= field.star_high else []) + wrapped
    if low == high:
        return [str(low)]  # croniter reads an equal range "9-9" as the whole cycle
    return [f"{low}-{high}/{step}" if step > 1 else f"{low}-{high}"]


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
