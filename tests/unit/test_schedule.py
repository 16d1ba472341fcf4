"""The timer-trigger schedules: NCRONTAB and TimeSpan parsing, next fire times and the errors."""

from __future__ import annotations

import calendar
import pickle
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from signalbox.localhost.schedule import (
    CronSchedule,
    IntervalSchedule,
    InvalidSchedule,
    Schedule,
    parse_schedule,
)

try:
    from zoneinfo import ZoneInfo

    NEW_YORK: ZoneInfo | None = ZoneInfo("America/New_York")
    AMSTERDAM: ZoneInfo | None = ZoneInfo("Europe/Amsterdam")
except Exception:  # no time zone database on this machine
    NEW_YORK = AMSTERDAM = None

needs_zones = pytest.mark.skipif(NEW_YORK is None, reason="no IANA time zone database")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


NEXT_FIRE = [
    # every five minutes
    ("0 */5 * * * *", utc(2026, 3, 14, 10, 2, 30), utc(2026, 3, 14, 10, 5)),
    ("0 */5 * * * *", utc(2026, 3, 14, 10, 5), utc(2026, 3, 14, 10, 10)),  # strictly after
    ("0 */5 * * * *", utc(2026, 3, 14, 10, 4, 59, 999999), utc(2026, 3, 14, 10, 5)),
    ("0 */5 * * * *", utc(2026, 12, 31, 23, 58), utc(2027, 1, 1, 0, 0)),
    # weekdays at 9:30 (2026-03-13 is a Friday)
    ("0 30 9 * * 1-5", utc(2026, 3, 13, 9, 0), utc(2026, 3, 13, 9, 30)),
    ("0 30 9 * * 1-5", utc(2026, 3, 13, 10, 0), utc(2026, 3, 16, 9, 30)),
    ("0 30 9 * * Mon-Fri", utc(2026, 3, 14, 12, 0), utc(2026, 3, 16, 9, 30)),
    # first of the month, first of the year
    ("0 0 0 1 * *", utc(2026, 1, 31, 12, 0), utc(2026, 2, 1)),
    ("0 0 0 1 * *", utc(2026, 12, 15), utc(2027, 1, 1)),
    ("0 0 0 1 1 *", utc(2026, 12, 31, 23, 59, 59), utc(2027, 1, 1)),
    ("0 0 0 1 1 *", utc(2027, 1, 1), utc(2028, 1, 1)),
    # month ends and leap years
    ("0 0 0 31 * *", utc(2026, 4, 1), utc(2026, 5, 31)),
    ("0 0 0 30 * *", utc(2026, 1, 31), utc(2026, 3, 30)),
    ("0 0 0 29 2 *", utc(2026, 1, 1), utc(2028, 2, 29)),
    ("0 0 0 29 2 *", utc(2028, 2, 29), utc(2032, 2, 29)),
    ("0 0 0 29 2 *", utc(2099, 3, 1), utc(2104, 2, 29)),  # 2100 is no leap year
    ("0 0 12 28-31 * *", utc(2027, 2, 28, 12), utc(2027, 3, 28, 12)),
    # seconds
    ("*/10 * * * * *", utc(2026, 3, 14, 10, 0, 5), utc(2026, 3, 14, 10, 0, 10)),
    ("*/10 * * * * *", utc(2026, 12, 31, 23, 59, 55), utc(2027, 1, 1)),
    ("5-7 * * * * *", utc(2026, 3, 14, 10, 0, 7), utc(2026, 3, 14, 10, 1, 5)),
    ("5,8,10 * * * * *", utc(2026, 3, 14, 10, 0, 8), utc(2026, 3, 14, 10, 0, 10)),
    # hours, ranges with steps, value/step
    ("0 0 * * * *", utc(2026, 3, 14, 10, 0, 1), utc(2026, 3, 14, 11)),
    ("0 0 */2 * * *", utc(2026, 3, 14, 23, 0), utc(2026, 3, 15, 0)),
    ("0 0 9-17 * * *", utc(2026, 3, 14, 17, 30), utc(2026, 3, 15, 9)),
    ("0 0 9-17/4 * * *", utc(2026, 3, 14, 13, 0), utc(2026, 3, 14, 17)),
    ("0 5/20 * * * *", utc(2026, 3, 14, 10, 25), utc(2026, 3, 14, 10, 45)),
    ("0 0 7,18 * * *", utc(2026, 3, 14, 8), utc(2026, 3, 14, 18)),
    # day and day of week must both match, as NCrontab (Azure) has it: Friday the 13th
    ("0 0 0 13 * Fri", utc(2026, 1, 1), utc(2026, 2, 13)),
    ("0 0 0 13 * Fri", utc(2026, 3, 13), utc(2026, 11, 13)),
    ("0 0 0 1 1 Mon", utc(2026, 1, 1), utc(2029, 1, 1)),
    ("0 0 0 29 2 Mon", utc(2026, 1, 1), utc(2044, 2, 29)),
    ("0 0 0 * * 0", utc(2026, 3, 9), utc(2026, 3, 15)),
    ("0 0 0 * * 7", utc(2026, 3, 9), utc(2026, 3, 15)),  # 7 is Sunday too
    ("0 0 0 * * 5-7", utc(2026, 3, 13), utc(2026, 3, 14)),
    # names, in any case, full or cut to three letters or more
    ("0 30 9 * Jan Mon", utc(2026, 1, 1), utc(2026, 1, 5, 9, 30)),
    ("0 30 9 * Jan Mon", utc(2026, 1, 27), utc(2027, 1, 4, 9, 30)),
    ("0 0 12 * * SUNDAY", utc(2026, 3, 9), utc(2026, 3, 15, 12)),
    ("0 0 0 1 Sept,dec *", utc(2026, 9, 1), utc(2026, 12, 1)),
    ("0 0 8 * * Tues-Thurs", utc(2026, 3, 13), utc(2026, 3, 17, 8)),
    ("0 0 0 1 Jan-Mar/2 *", utc(2026, 1, 1), utc(2026, 3, 1)),
    # five-field cron reads second 0
    ("*/15 * * * *", utc(2026, 3, 14, 10, 7, 30), utc(2026, 3, 14, 10, 15)),
    ("30 9 * * 1-5", utc(2026, 3, 13, 10), utc(2026, 3, 16, 9, 30)),
    # TimeSpan: an interval since the last run (or the start)
    ("00:05:00", utc(2026, 3, 14, 10, 2, 30), utc(2026, 3, 14, 10, 7, 30)),
    ("01:00:00", utc(2026, 3, 14, 23, 30), utc(2026, 3, 15, 0, 30)),
    ("1.00:00:00", utc(2026, 2, 28, 6), utc(2026, 3, 1, 6)),
    ("24:00:00", utc(2026, 1, 1), utc(2026, 1, 25)),  # .NET reads 24 and up as dd:hh:mm
    ("25:00:00:00", utc(2026, 1, 1), utc(2026, 1, 26)),
    ("30:12:30", utc(2026, 1, 1), utc(2026, 1, 31, 12, 30)),
    ("00:30", utc(2026, 1, 1), utc(2026, 1, 1, 0, 30)),
    ("00:00:01.5", utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 1, 500000)),
    ("  0 */5 * * * *  ", utc(2026, 3, 14, 10, 2), utc(2026, 3, 14, 10, 5)),
]


@pytest.mark.parametrize(("expression", "moment", "expected"), NEXT_FIRE)
def test_next_fire_time(expression: str, moment: datetime, expected: datetime) -> None:
    fire = parse_schedule(expression).next_after(moment)
    assert fire == expected
    assert fire.tzinfo is moment.tzinfo


def test_the_kinds_of_schedule() -> None:
    cron = parse_schedule("0 */5 * * * *")
    assert isinstance(cron, CronSchedule)
    assert isinstance(cron, Schedule)
    assert cron.expression == "0 */5 * * * *"
    assert cron.minutes == tuple(range(0, 60, 5))
    assert cron.seconds == (0,)
    interval = parse_schedule("1.02:03:04")
    assert isinstance(interval, IntervalSchedule)
    assert interval.expression == "1.02:03:04"
    assert interval.interval == timedelta(days=1, hours=2, minutes=3, seconds=4)


def test_names_and_numbers_give_the_same_schedule() -> None:
    by_name = parse_schedule("0 0 0 * Feb,Oct-Dec Sun,Wed")
    by_number = parse_schedule("0 0 0 * 2,10-12 0,3")
    assert isinstance(by_name, CronSchedule)
    assert isinstance(by_number, CronSchedule)
    assert (by_name.months, by_name.days_of_week) == (by_number.months, by_number.days_of_week)


def test_chained_fires_count_a_year() -> None:
    every_day = parse_schedule("0 0 0 * * *")
    weekdays_at_noon = parse_schedule("0 0 12 * * 1-5")
    for schedule, year, expected in ((every_day, 2028, 366), (every_day, 2026, 365), (weekdays_at_noon, 2026, 261)):
        moment, count = utc(year, 1, 1) - timedelta(microseconds=1), 0
        while (moment := schedule.next_after(moment)).year == year:
            count += 1
        assert count == expected


def test_fire_times_are_in_the_zone_of_the_moment() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    fire = parse_schedule("0 30 9 * * 1-5").next_after(datetime(2026, 3, 13, 10, 0, tzinfo=india))
    assert fire == datetime(2026, 3, 16, 9, 30, tzinfo=india)
    assert fire.utcoffset() == timedelta(hours=5, minutes=30)


@needs_zones
def test_a_zone_with_daylight_saving_time() -> None:
    fire = parse_schedule("0 30 9 * * *").next_after(datetime(2026, 3, 28, 12, tzinfo=AMSTERDAM))
    assert fire == datetime(2026, 3, 29, 9, 30, tzinfo=AMSTERDAM)
    assert fire.astimezone(UTC) == utc(2026, 3, 29, 7, 30)  # summer time began at 02:00 that night


@needs_zones
def test_a_wall_time_skipped_by_dst_never_fires() -> None:
    half_past = parse_schedule("0 30 * * * *")
    fire = half_past.next_after(datetime(2026, 3, 8, 1, 30, tzinfo=NEW_YORK))
    assert fire.astimezone(UTC) == utc(2026, 3, 8, 7, 30)  # 03:30 EDT; 02:30 does not exist
    daily = parse_schedule("0 30 2 * * *")
    assert daily.next_after(datetime(2026, 3, 7, 3, tzinfo=NEW_YORK)) == datetime(2026, 3, 9, 2, 30, tzinfo=NEW_YORK)


@needs_zones
def test_a_wall_time_repeated_by_dst_fires_twice() -> None:
    schedule = parse_schedule("0 */20 * * * *")
    moment, fires = datetime(2026, 11, 1, 0, 50, tzinfo=NEW_YORK), []
    for _ in range(8):
        moment = schedule.next_after(moment)
        fires.append(moment.astimezone(UTC))
    assert fires == [utc(2026, 11, 1, hour, minute) for hour in (5, 6, 7) for minute in (0, 20, 40)][:8]
    # From the first pass, an earlier wall time of the repeated hour comes round again on the second pass.
    yearly = parse_schedule("0 15 1 1 11 *")
    fire = yearly.next_after(datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK))
    assert fire.astimezone(UTC) == utc(2026, 11, 1, 6, 15)
    assert fire.fold == 1
    assert yearly.next_after(fire).astimezone(UTC) == utc(2027, 11, 1, 5, 15)


@needs_zones
@pytest.mark.parametrize("expression", ["0 * * * * *", "0 */7 * * * *", "0 15,45 1,2,3 * * *", "0 0 1 * * *"])
@pytest.mark.parametrize("start", [utc(2026, 3, 8, 5), utc(2026, 11, 1, 4), utc(2026, 11, 1, 5, 30)])
def test_across_dst_changes_every_matching_instant_fires(expression: str, start: datetime) -> None:
    schedule = parse_schedule(expression)
    assert isinstance(schedule, CronSchedule)
    moment = start.astimezone(NEW_YORK)
    for _ in range(20):
        fire = schedule.next_after(moment)
        probe = moment.astimezone(UTC).replace(second=0, microsecond=0)
        while True:  # the reference: walk UTC minute by minute, checking the New York wall clock
            probe += timedelta(minutes=1)
            wall = probe.astimezone(NEW_YORK)
            if probe > moment and wall.minute in schedule.minutes and wall.hour in schedule.hours:
                break
        assert fire.astimezone(UTC) == probe, (expression, moment)
        moment = fire


def test_interval_counts_elapsed_time() -> None:
    fire = parse_schedule("01:00:00").next_after(utc(2026, 3, 8, 6, 30))
    assert fire == utc(2026, 3, 8, 7, 30)


@needs_zones
def test_interval_counts_elapsed_time_across_dst() -> None:
    fire = parse_schedule("01:00:00").next_after(datetime(2026, 3, 8, 1, 30, tzinfo=NEW_YORK))
    assert fire.astimezone(UTC) == utc(2026, 3, 8, 7, 30)
    assert fire.tzinfo is NEW_YORK


@pytest.mark.parametrize("expression", ["0 0 0 1 1 *", "3650000.00:00:00"])
def test_no_fire_time_before_the_end_of_the_calendar(expression: str) -> None:
    with pytest.raises(InvalidSchedule, match="no fire time after"):
        parse_schedule(expression).next_after(utc(9999, 6, 1))


@pytest.mark.parametrize("expression", ["0 */5 * * * *", "00:05:00"])
def test_a_naive_moment_is_refused(expression: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_schedule(expression).next_after(datetime(2026, 1, 1))


def _reference_next(schedule: CronSchedule, moment: datetime) -> datetime:
    """The next fire time found the slow way: day by day, then every time of day in order."""
    day = moment.date()
    while True:
        weekday = (day.weekday() + 1) % 7
        if day.month in schedule.months and day.day in schedule.days and weekday in schedule.days_of_week:
            for hour in schedule.hours:
                for minute in schedule.minutes:
                    for second in schedule.seconds:
                        candidate = datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC)
                        if candidate > moment:
                            return candidate
        day += timedelta(days=1)


def _some(rng: random.Random, low: int, high: int) -> tuple[int, ...]:
    if rng.random() < 0.3:
        return tuple(range(low, high + 1))
    return tuple(sorted(rng.sample(range(low, high + 1), rng.randint(1, 4))))


def test_next_after_agrees_with_a_slow_reference() -> None:
    rng = random.Random(20260314)  # noqa: S311 - seeded test data, not secrets
    checked = 0
    while checked < 400:
        schedule = CronSchedule(
            "random",
            _some(rng, 0, 59),
            _some(rng, 0, 59),
            _some(rng, 0, 23),
            _some(rng, 1, 31),
            _some(rng, 1, 12),
            _some(rng, 0, 6),
        )
        if not any(day <= calendar.monthrange(2028, month)[1] for month in schedule.months for day in schedule.days):
            continue
        moment = utc(2026, 1, 1) + timedelta(seconds=rng.randrange(3 * 365 * 86400))
        for _ in range(3):
            expected = _reference_next(schedule, moment)
            assert schedule.next_after(moment) == expected, (schedule, moment)
            moment = expected
        checked += 1


ERRORS = [
    # expression, field named, words in the message
    ("", "schedule", "empty"),
    ("   ", "schedule", "empty"),
    ("* * *", "schedule", "expected 6 fields"),
    ("0 0 0 * * * *", "schedule", "got 7"),
    ("%TimerSchedule%", "schedule", "got 1"),
    ("60 * * * * *", "second", "60 is out of range 0-59"),
    ("0 75 * * * *", "minute", "75 is out of range 0-59"),
    ("0 0 24 * * *", "hour", "24 is out of range 0-23"),
    ("0 0 0 0 * *", "day", "0 is out of range 1-31"),
    ("0 0 0 32 * *", "day", "32 is out of range 1-31"),
    ("0 0 0 * 0 *", "month", "0 is out of range 1-12"),
    ("0 0 0 * 13 *", "month", "13 is out of range 1-12"),
    ("0 0 0 * * 8", "day-of-week", "8 is out of range 0-7"),
    ("*/0 * * * * *", "second", "step 0"),
    ("0 0 9-17/0 * * *", "hour", "step 0"),
    ("0 */x * * * *", "minute", "step 'x' is not a number"),
    ("0 */ * * * *", "minute", "step '' is not a number"),
    ("0 0 17-9 * * *", "hour", "runs backwards"),
    ("1,,2 * * * * *", "second", "empty list item"),
    ("0 -5 * * * *", "minute", "missing a value"),
    ("0 5- * * * *", "minute", "missing a value"),
    ("x * * * * *", "second", "'x' is not a number"),
    ("0 Mon * * * *", "minute", "'Mon' is not a number"),
    ("0 0 0 * Foo *", "month", "unknown name 'Foo'"),
    ("0 0 0 * * Funday", "day-of-week", "unknown name 'Funday'"),
    ("0 0 0 * * Fr", "day-of-week", "unknown name 'Fr'"),  # names need three letters or more
    ("0 0 0 31 2 *", "day", "never occurs"),
    ("0 0 0 30 Feb *", "day", "never occurs"),
    ("0 0 0 31 4,6,9,11 *", "day", "never occurs"),
    ("00:00:00", "timespan", "longer than zero"),
    ("1:60:00", "timespan", "minutes 60 is out of range 0-59"),
    ("00:00:60", "timespan", "seconds 60 is out of range 0-59"),
    ("1.24:00:00", "timespan", "hours 24 is out of range 0-23"),
    ("1:2:x", "timespan", "is not hh:mm:ss"),
    ("1000000000.00:00:00", "timespan", "too long"),
    ("-00:05:00", "timespan", "is not hh:mm:ss"),
    ("0 */5 * * * * 00:05", "timespan", "is not hh:mm:ss"),
]


@pytest.mark.parametrize(("expression", "field", "words"), ERRORS)
def test_invalid_schedules_name_the_field(expression: str, field: str, words: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_schedule(expression)
    message = str(caught.value)
    assert message.startswith(f"{field}: ")
    assert words in message
    assert message.endswith(f" in '{expression}'")
    assert caught.value.field == field
    assert caught.value.expression == expression


def test_the_error_message_in_full() -> None:
    with pytest.raises(InvalidSchedule, match=r"^minute: 75 is out of range 0-59 in '0 75 \* \* \* \*'$"):
        parse_schedule("0 75 * * * *")


def test_invalid_schedule_is_a_value_error_and_pickles() -> None:
    with pytest.raises(ValueError, match="never occurs") as caught:
        parse_schedule("0 0 0 31 2 *")
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 - our own object
    assert isinstance(copy, InvalidSchedule)
    assert str(copy) == str(caught.value)


# Where croniter (which expands the fields and finds fire times) reads an expression differently from
# NCrontab, the NCRONTAB reading holds: an equal range is its one value, day-of-week 7 is Sunday
# inside ranges and steps, a step from the field's last value is that value alone.
NCRONTAB_NOT_CRONITER = [
    ("0 0 9-9 * * *", utc(2026, 3, 14, 10), utc(2026, 3, 15, 9)),
    ("0 0 0 1 Mar-Mar *", utc(2026, 3, 31), utc(2027, 3, 1)),
    ("0 0 0 * * 7/2", utc(2026, 3, 13), utc(2026, 3, 15)),
    ("0 0 0 * * 5-7/2", utc(2026, 3, 13, 1), utc(2026, 3, 15)),
    ("0 0 0 * * 6-7/2", utc(2026, 3, 14, 1), utc(2026, 3, 21)),
    ("0 59/15 * * * *", utc(2026, 3, 14, 10), utc(2026, 3, 14, 10, 59)),
    ("0 0 0 * Dec/3 *", utc(2026, 1, 1), utc(2026, 12, 1)),
]


@pytest.mark.parametrize(("expression", "moment", "expected"), NCRONTAB_NOT_CRONITER)
def test_ncrontab_readings_where_croniter_differs(expression: str, moment: datetime, expected: datetime) -> None:
    assert parse_schedule(expression).next_after(moment) == expected


@pytest.mark.parametrize(
    ("expression", "field"),
    [
        ("0 0 0 L * *", "day"),  # croniter: last day of the month
        ("0 0 0 15W * *", "day"),  # croniter: nearest weekday
        ("0 0 0 ? * *", "day"),
        ("0 0 0 * * 5#3", "day-of-week"),  # croniter: third Friday
        ("0 0 0 * * 5L", "day-of-week"),
        ("0 0 H * * *", "hour"),  # croniter: hashed
        ("0 0 17-9 * * *", "hour"),  # croniter: wraps round midnight
        ("@daily", "schedule"),
        ("0 0 0 1 1 * 2030", "schedule"),  # croniter: a year field
    ],
)
def test_croniter_extensions_are_not_ncrontab(expression: str, field: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_schedule(expression)
    assert caught.value.field == field
