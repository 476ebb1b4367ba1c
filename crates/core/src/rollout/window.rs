//! Maintenance windows: when a rollout may start device updates.
//!
//! A window is a cron expression saying when it opens, a duration saying how long it stays open and
//! an IANA time zone the expression is read in: `0 2 * * 1-5` for `3h` in `Europe/Berlin` is open on
//! weekdays from 02:00 to 05:00 Berlin time. [`MaintenanceWindow::parse`] is the only way to make
//! one, so a window in memory always fires at some point.
//!
//! # Cron syntax
//! Five fields separated by spaces: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or
//! `JAN`-`DEC`) and day of week (0-7 or `SUN`-`SAT`, where both 0 and 7 are Sunday). Each field is
//! `*`, a value, a range `1-5`, a stepped `*/15` or `10-50/10`, or a comma-separated list of those.
//! Names are case-insensitive. `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly` and
//! `@yearly` (`@annually`) stand for their usual five fields.
//!
//! Days follow Vixie cron (and so cronie and most Linux crontabs): when both the day-of-month and
//! the day-of-week field are restricted, a day matches if *either* matches (`0 2 13 * 5` fires on
//! the 13th and on every Friday). A field that starts with `*` counts as unrestricted, so
//! `0 2 1-7 * */7` still means "the first seven days, if it is Sunday", as it does in crontab.
//!
//! # Time zones and daylight saving
//! The expression is matched against the wall clock of the window's time zone, taken from the IANA
//! database compiled into the binary (no system files are read).
//! - A start time that does not exist because the clocks jump forward (02:30 on a spring-forward
//!   night in Berlin) fires at the first instant after the gap, when the clocks show 03:00. Several
//!   start times inside one gap fire once, together. (jiff's "compatible" disambiguation would
//!   instead shift such a time by the gap's length, to 03:30.)
//! - A start time that happens twice because the clocks fall back fires once, at the earlier
//!   instant (02:30 summer time, not 02:30 winter time an hour later).
//! - The duration is elapsed time: a `3h` window that opens at 02:00 on a fall-back night closes at
//!   04:00 local time, three real hours later.
//!
//! Windows may overlap (`*/30 * * * *` for `1h`); each is reported on its own, never merged.

use std::fmt;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone, TimeZoneDatabase};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::{Duration, Timestamp};

/// The longest a window may stay open. Longer windows would overlap a weekly schedule with itself
/// and say little that "no window" does not.
pub const MAX_WINDOW_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A recurring period in which a rollout may start device updates: a cron expression for when it
/// opens, how long it stays open, and the time zone the expression is read in.
///
/// Serialized as `{"cron": "0 2 * * 1-5", "duration": "3h", "time_zone": "Europe/Berlin"}`;
/// deserializing goes through [`MaintenanceWindow::parse`], so an invalid window is rejected there.
#[derive(Clone)]
pub struct MaintenanceWindow {
    schedule: CronSchedule,
    duration: Duration,
    /// Kept beside its name: the lookup in the bundled database parses the zone's rules.
    time_zone: TimeZone,
    time_zone_name: String,
}

/// Why a maintenance window was rejected. Each message names the part that is wrong and what
/// would be accepted instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The expression does not have five fields and is not a known `@` macro.
    #[error(
        "cron expression {cron:?} has {found} fields; expected 5 (minute hour day-of-month month \
         day-of-week) or one of @hourly, @daily, @weekly, @monthly, @yearly"
    )]
    FieldCount {
        /// The expression as written (at most 80 characters).
        cron: String,
        /// How many whitespace-separated fields it has.
        found: usize,
    },
    /// An `@` word that is not one of the supported macros (`@reboot` has no place in a schedule).
    #[error(
        "unknown cron macro {name:?}; expected one of @hourly, @daily, @midnight, @weekly, \
         @monthly, @yearly, @annually"
    )]
    UnknownMacro {
        /// The macro as written.
        name: String,
    },
    /// A value is neither a number nor a name the field accepts.
    #[error("cron {field} field: {value:?} is not {}", .field.expected())]
    InvalidValue {
        /// The field the value is in.
        field: CronField,
        /// The value as written.
        value: String,
    },
    /// A number outside the field's range.
    #[error("cron {field} field: {value} is out of range {}-{}", .field.min(), .field.max())]
    OutOfRange {
        /// The field the value is in.
        field: CronField,
        /// The number as written.
        value: String,
    },
    /// A range whose start is after its end, such as `5-1`.
    #[error(
        "cron {field} field: range {range:?} runs backwards; write the smaller value first, or a \
         list such as 22-23,0-2 to wrap around"
    )]
    BackwardsRange {
        /// The field the range is in.
        field: CronField,
        /// The range as written.
        range: String,
    },
    /// A step that is zero or not a number, such as `*/0`.
    #[error("cron {field} field: the step in {element:?} must be a whole number of at least 1")]
    InvalidStep {
        /// The field the step is in.
        field: CronField,
        /// The list element holding the step, as written.
        element: String,
    },
    /// A step after a single value, such as Quartz's `0/15`.
    #[error(
        "cron {field} field: a step needs * or a range before it (e.g. */15 or 5-59/15), not \
         {element:?}"
    )]
    StepWithoutRange {
        /// The field the step is in.
        field: CronField,
        /// The list element holding the step, as written.
        element: String,
    },
    /// A list with an empty element, such as `1,,2` or `1,`.
    #[error("cron {field} field: {text:?} has an empty list element")]
    EmptyElement {
        /// The field.
        field: CronField,
        /// The field as written.
        text: String,
    },
    /// A valid expression that names no real day, such as February 30.
    #[error(
        "cron expression {cron:?} never fires: none of its months has any of its days of month"
    )]
    NeverFires {
        /// The expression in canonical form.
        cron: String,
    },
    /// A time zone the IANA database does not know.
    #[error("unknown time zone {name:?}: expected an IANA name such as Europe/Berlin or UTC")]
    UnknownTimeZone {
        /// The name as written (at most 80 characters).
        name: String,
    },
    /// A zero or negative duration: the window would never be open.
    #[error("window duration must be greater than zero, got {duration}")]
    NonPositiveDuration {
        /// The duration given.
        duration: Duration,
    },
    /// A duration longer than [`MAX_WINDOW_DURATION`].
    #[error("window duration {duration} is longer than the maximum of 7 days")]
    DurationTooLong {
        /// The duration given.
        duration: Duration,
    },
}

/// A field of a cron expression, named in [`WindowError`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CronField {
    /// The first field, 0-59.
    Minute,
    /// The second field, 0-23.
    Hour,
    /// The third field, 1-31.
    DayOfMonth,
    /// The fourth field, 1-12 or `JAN`-`DEC`.
    Month,
    /// The fifth field, 0-7 (0 and 7 are Sunday) or `SUN`-`SAT`.
    DayOfWeek,
}

impl MaintenanceWindow {
    /// Validates a window: `cron` in the syntax described in the [module docs](self), a duration
    /// greater than zero and at most [`MAX_WINDOW_DURATION`], and an IANA time zone name such as
    /// `Europe/Berlin` or `UTC` (case-insensitive). Expressions that can never fire, such as
    /// `0 2 30 2 *` (February 30), are rejected.
    pub fn parse(
        cron: &str,
        duration: Duration,
        time_zone: &str,
    ) -> Result<MaintenanceWindow, WindowError> {
        let schedule = CronSchedule::parse(cron)?;
        if duration.as_millis() <= 0 {
            return Err(WindowError::NonPositiveDuration { duration });
        }
        if duration > MAX_WINDOW_DURATION {
            return Err(WindowError::DurationTooLong { duration });
        }
        let unknown = || WindowError::UnknownTimeZone {
            name: time_zone.chars().take(80).collect(),
        };
        // The bundled database, not `jiff::tz::db()`: the global one reads TZDIR and
        // /usr/share/zoneinfo, and core does no IO. `Etc/Unknown` is jiff's placeholder for "no
        // time zone", not a zone an operator can mean.
        let zone = TimeZoneDatabase::bundled()
            .get(time_zone)
            .map_err(|_| unknown())?;
        let name = zone.iana_name().ok_or_else(unknown)?.to_owned();
        if name == "Etc/Unknown" {
            return Err(unknown());
        }
        Ok(MaintenanceWindow {
            schedule,
            duration,
            time_zone: zone,
            time_zone_name: name,
        })
    }

    /// The cron expression in canonical form: single spaces, numbers for names, macros expanded
    /// (`@daily` is `0 0 * * *`, `MON-FRI` is `1-5`).
    pub fn cron(&self) -> &str {
        &self.schedule.canonical
    }

    /// How long the window stays open after each start.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The IANA name of the time zone, as the database spells it (`Europe/Berlin`).
    pub fn time_zone(&self) -> &str {
        &self.time_zone_name
    }

    /// Whether a window is open at `now`: one started at or before `now` and ends after it.
    pub fn is_open(&self, now: Timestamp) -> bool {
        self.current(now).is_some()
    }

    /// The open window containing `now` as `(start, end)`, with `start <= now < end`, or `None` if
    /// no window is open. When windows overlap, this is the one that opened first.
    pub fn current(&self, now: Timestamp) -> Option<(Timestamp, Timestamp)> {
        let start = self.first_start_not_ended_by(now)?;
        (start <= now).then(|| (start, start.saturating_add(self.duration)))
    }

    /// `now` if a window is open, otherwise when the next one opens. `None` only when no window
    /// opens before the end of the year 9999 (or `now` lies outside the years -9999 to 9999).
    pub fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        // The first start after `now - duration` is either an open window's start (at or before
        // `now`) or, when nothing is open, also the first start after `now`.
        let start = self.first_start_not_ended_by(now)?;
        Some(if start <= now { now } else { start })
    }

    /// The start of the first window that has not ended by `now`, i.e. the first start strictly
    /// after `now - duration`: the earliest open window if it started by `now`, else the next one.
    fn first_start_not_ended_by(&self, now: Timestamp) -> Option<Timestamp> {
        let opened_after = now.as_millis().checked_sub(self.duration.as_millis())?;
        let opened_after = jiff::Timestamp::from_millisecond(opened_after).ok()?;
        let start = self.first_start_after(opened_after)?;
        Some(Timestamp::from_millis(start.as_millisecond()))
    }

    /// The first instant strictly after `after` at which a window opens.
    ///
    /// Walks the wall clock forward day by matching day, then matching hour, then matching minute,
    /// mapping each candidate to an instant. That mapping never goes backwards (gap times map to
    /// the end of the gap, repeated times to their first occurrence), so the first candidate past
    /// `after` is the answer, and candidates before `after`'s own wall-clock time can be skipped.
    fn first_start_after(&self, after: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let schedule = &self.schedule;
        let local = self.time_zone.to_datetime(after);
        let first_day = local.date();
        // Every combination of month, day of month and weekday that exists at all recurs within
        // one 400-year Gregorian cycle, and `parse` proved one exists: the search always finds a
        // start unless it runs off the end of the calendar.
        let last_day =
            Date::new(first_day.year().saturating_add(SEARCH_YEARS), 12, 31).unwrap_or(Date::MAX);
        let mut day = first_day;
        loop {
            if !has(schedule.months, day.month()) {
                day = first_of_next_month(day)?;
                if day > last_day {
                    return None;
                }
                continue;
            }
            if schedule.day_matches(day) {
                let (first_hour, first_minute) = if day == first_day {
                    (local.hour(), local.minute())
                } else {
                    (0, 0)
                };
                for hour in values_from(schedule.hours, first_hour) {
                    let from_minute = if day == first_day && hour == first_hour {
                        first_minute
                    } else {
                        0
                    };
                    for minute in values_from(schedule.minutes, from_minute) {
                        let start = self.instant_of(day.at(hour, minute, 0, 0))?;
                        if start > after {
                            return Some(start);
                        }
                    }
                }
            }
            if day >= last_day {
                return None;
            }
            day = day.tomorrow().ok()?;
        }
    }

    /// The instant a wall-clock start time fires at, following the DST rules in the module docs.
    fn instant_of(&self, local: DateTime) -> Option<jiff::Timestamp> {
        let ambiguous = self.time_zone.to_ambiguous_timestamp(local);
        match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { .. } | AmbiguousOffset::Fold { .. } => {
                ambiguous.earlier().ok()
            }
            AmbiguousOffset::Gap { after, .. } => {
                // Read with the offset that applies after the gap, a time inside the gap is an
                // instant just before the transition; the next transition is the gap's end.
                let before_transition = after.to_timestamp(local).ok()?;
                let transition = self.time_zone.following(before_transition).next()?;
                Some(transition.timestamp())
            }
        }
    }
}

impl fmt::Display for MaintenanceWindow {
    /// `0 2 * * 1-5 for 3h in Europe/Berlin`: the canonical cron expression, duration and zone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} for {} in {}",
            self.schedule.canonical, self.duration, self.time_zone_name
        )
    }
}

impl fmt::Debug for MaintenanceWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaintenanceWindow")
            .field("cron", &self.schedule.canonical)
            .field("duration", &self.duration)
            .field("time_zone", &self.time_zone_name)
            .finish()
    }
}

/// Two windows are equal when their canonical forms are: same schedule, duration and zone.
impl PartialEq for MaintenanceWindow {
    fn eq(&self, other: &MaintenanceWindow) -> bool {
        self.schedule.canonical == other.schedule.canonical
            && self.duration == other.duration
            && self.time_zone_name == other.time_zone_name
    }
}

impl Eq for MaintenanceWindow {}

impl Serialize for MaintenanceWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WindowRepr {
            cron: self.schedule.canonical.clone(),
            duration: self.duration.to_string(),
            time_zone: self.time_zone_name.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for MaintenanceWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = WindowRepr::deserialize(d)?;
        let duration = Duration::parse(&repr.duration).map_err(serde::de::Error::custom)?;
        MaintenanceWindow::parse(&repr.cron, duration, &repr.time_zone)
            .map_err(serde::de::Error::custom)
    }
}

impl CronField {
    /// The smallest value the field accepts.
    pub fn min(self) -> u8 {
        match self {
            CronField::Minute | CronField::Hour | CronField::DayOfWeek => 0,
            CronField::DayOfMonth | CronField::Month => 1,
        }
    }

    /// The largest value the field accepts (7 for the day of week, another name for Sunday).
    pub fn max(self) -> u8 {
        match self {
            CronField::Minute => 59,
            CronField::Hour => 23,
            CronField::DayOfMonth => 31,
            CronField::Month => 12,
            CronField::DayOfWeek => 7,
        }
    }

    /// What a value in this field may be, for error messages.
    fn expected(self) -> &'static str {
        match self {
            CronField::Minute => "a number 0-59",
            CronField::Hour => "a number 0-23",
            CronField::DayOfMonth => "a number 1-31",
            CronField::Month => "a number 1-12 or a month name JAN-DEC",
            CronField::DayOfWeek => "a number 0-7 or a day name SUN-SAT",
        }
    }

    /// The names the field accepts, the first standing for [`CronField::min`].
    fn names(self) -> &'static [&'static str] {
        match self {
            CronField::Month => &[
                "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            ],
            CronField::DayOfWeek => &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
            _ => &[],
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

/// How far ahead a search for the next start looks: one Gregorian cycle, after which the calendar
/// (weekdays included) repeats.
const SEARCH_YEARS: i16 = 400;

/// The wire form of a window.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowRepr {
    cron: String,
    duration: String,
    time_zone: String,
}

/// A parsed cron expression: one bit per matching value in each field.
#[derive(Debug, Clone)]
struct CronSchedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    /// Bit 0 is Sunday; a 7 in the expression sets bit 0 too.
    days_of_week: u64,
    /// Whether the day-of-month field starts with `*`, which makes day matching an AND (Vixie cron).
    day_of_month_star: bool,
    /// Whether the day-of-week field starts with `*`, as for `day_of_month_star`.
    day_of_week_star: bool,
    /// The expression in canonical form, for display and serialization.
    canonical: String,
}

/// One field after parsing.
struct ParsedField {
    bits: u64,
    star: bool,
    canonical: String,
}

impl CronSchedule {
    fn parse(cron: &str) -> Result<CronSchedule, WindowError> {
        let words: Vec<&str> = cron.split_whitespace().collect();
        if let [word] = words[..] {
            if word.starts_with('@') {
                let expansion = macro_expansion(word).ok_or_else(|| WindowError::UnknownMacro {
                    name: word.chars().take(80).collect(),
                })?;
                return CronSchedule::parse(expansion);
            }
        }
        let [minute, hour, day_of_month, month, day_of_week] = words[..] else {
            return Err(WindowError::FieldCount {
                cron: cron.chars().take(80).collect(),
                found: words.len(),
            });
        };
        let minute = parse_field(CronField::Minute, minute)?;
        let hour = parse_field(CronField::Hour, hour)?;
        let day_of_month = parse_field(CronField::DayOfMonth, day_of_month)?;
        let month = parse_field(CronField::Month, month)?;
        let day_of_week = parse_field(CronField::DayOfWeek, day_of_week)?;
        let schedule = CronSchedule {
            canonical: [&minute, &hour, &day_of_month, &month, &day_of_week]
                .map(|field| field.canonical.as_str())
                .join(" "),
            minutes: minute.bits,
            hours: hour.bits,
            days_of_month: day_of_month.bits,
            months: month.bits,
            days_of_week: day_of_week.bits,
            day_of_month_star: day_of_month.star,
            day_of_week_star: day_of_week.star,
        };
        if !schedule.ever_fires() {
            return Err(WindowError::NeverFires {
                cron: schedule.canonical,
            });
        }
        Ok(schedule)
    }

    /// Whether any real date matches. With the days OR'ed, every month has every weekday. With
    /// them AND'ed, it takes a listed day of month that a listed month has (February counting
    /// its 29th); every such date falls on every weekday somewhere in a 400-year cycle.
    fn ever_fires(&self) -> bool {
        if !self.day_of_month_star && !self.day_of_week_star {
            return true;
        }
        values_from(self.months, 1).any(|month| {
            let longest = match month {
                2 => 29,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            values_from(self.days_of_month, 1).any(|day| day <= longest)
        })
    }

    /// Whether a date's day of month and weekday match, with Vixie cron's OR when both day fields
    /// are restricted. The month is checked separately.
    fn day_matches(&self, date: Date) -> bool {
        let by_month_day = has(self.days_of_month, date.day());
        let by_weekday = has(self.days_of_week, date.weekday().to_sunday_zero_offset());
        if self.day_of_month_star || self.day_of_week_star {
            by_month_day && by_weekday
        } else {
            by_month_day || by_weekday
        }
    }
}

/// The five fields an `@` macro stands for.
fn macro_expansion(word: &str) -> Option<&'static str> {
    let expansion = match word.to_ascii_lowercase().as_str() {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        _ => return None,
    };
    Some(expansion)
}

/// Parses one field: a comma-separated list of `*`, `N`, `N-M`, `*/S` and `N-M/S`.
fn parse_field(field: CronField, text: &str) -> Result<ParsedField, WindowError> {
    let mut bits = 0u64;
    let mut canonical = Vec::new();
    for element in text.split(',') {
        if element.is_empty() {
            return Err(WindowError::EmptyElement {
                field,
                text: text.chars().take(80).collect(),
            });
        }
        let (range, step) = match element.split_once('/') {
            Some((range, step)) => {
                let step = parse_step(step).ok_or_else(|| WindowError::InvalidStep {
                    field,
                    element: element.chars().take(80).collect(),
                })?;
                (range, Some(step))
            }
            None => (element, None),
        };
        let (low, high, range_text) = if range == "*" {
            (field.min(), field.max(), "*".to_owned())
        } else if let Some((low, high)) = range.split_once('-') {
            let (low, high) = (parse_value(field, low)?, parse_value(field, high)?);
            if low > high {
                return Err(WindowError::BackwardsRange {
                    field,
                    range: range.chars().take(80).collect(),
                });
            }
            (low, high, format!("{low}-{high}"))
        } else {
            if step.is_some() {
                return Err(WindowError::StepWithoutRange {
                    field,
                    element: element.chars().take(80).collect(),
                });
            }
            let value = parse_value(field, range)?;
            (value, value, value.to_string())
        };
        let step = step.unwrap_or(1);
        for value in (low..=high).step_by(usize::from(step)) {
            // Day of week 7 is Sunday, like 0.
            let value = if field == CronField::DayOfWeek {
                value % 7
            } else {
                value
            };
            bits |= 1 << value;
        }
        canonical.push(match step {
            1 => range_text,
            _ => format!("{range_text}/{step}"),
        });
    }
    Ok(ParsedField {
        bits,
        star: text.starts_with('*'),
        canonical: canonical.join(","),
    })
}

/// A step: a whole number of at least 1. Steps beyond the field's span are allowed (they match
/// only the start), as in crontab.
fn parse_step(text: &str) -> Option<u8> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match text.parse::<u32>() {
        Ok(0) => None,
        Ok(step) => Some(u8::try_from(step).unwrap_or(u8::MAX)),
        // Only overflow gets here: a step that large matches only the start.
        Err(_) => Some(u8::MAX),
    }
}

/// A value: a number in the field's range, or a name the field accepts.
fn parse_value(field: CronField, text: &str) -> Result<u8, WindowError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let value: u32 = text.parse().unwrap_or(u32::MAX);
        return match u8::try_from(value) {
            Ok(value) if (field.min()..=field.max()).contains(&value) => Ok(value),
            _ => Err(WindowError::OutOfRange {
                field,
                value: text.chars().take(80).collect(),
            }),
        };
    }
    match field
        .names()
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
    {
        Some(name_idx) => Ok(field.min() + name_idx as u8),
        None => Err(WindowError::InvalidValue {
            field,
            value: text.chars().take(80).collect(),
        }),
    }
}

/// Whether `value`'s bit is set.
fn has(bits: u64, value: i8) -> bool {
    (0..64).contains(&value) && bits & (1 << value) != 0
}

/// The set values, in ascending order, from `from` on.
fn values_from(bits: u64, from: i8) -> impl Iterator<Item = i8> {
    let mut rest = match u32::try_from(from) {
        Ok(from) if from < 64 => bits & (u64::MAX << from),
        Ok(_) => 0,
        Err(_) => bits,
    };
    std::iter::from_fn(move || {
        (rest != 0).then(|| {
            let value = rest.trailing_zeros() as i8;
            rest &= rest - 1;
            value
        })
    })
}

/// The first day of the month after `day`'s, or `None` past the end of the calendar.
fn first_of_next_month(day: Date) -> Option<Date> {
    match day.month() {
        12 => Date::new(day.year().checked_add(1)?, 1, 1).ok(),
        month => Date::new(day.year(), month + 1, 1).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    fn parsed(cron: &str, duration: &str, time_zone: &str) -> MaintenanceWindow {
        MaintenanceWindow::parse(cron, Duration::parse(duration).unwrap(), time_zone)
            .unwrap_or_else(|e| panic!("{cron} for {duration} in {time_zone}: {e}"))
    }

    /// The next `n` starts strictly after `from`, in RFC 3339.
    fn starts(window: &MaintenanceWindow, from: &str, n: usize) -> Vec<String> {
        let mut after = jiff::Timestamp::from_millisecond(at(from).as_millis()).unwrap();
        (0..n)
            .map(|_| {
                after = window.first_start_after(after).unwrap();
                Timestamp::from_millis(after.as_millisecond()).to_rfc3339()
            })
            .collect()
    }

    fn current(window: &MaintenanceWindow, now: &str) -> Option<(String, String)> {
        window
            .current(at(now))
            .map(|(start, end)| (start.to_rfc3339(), end.to_rfc3339()))
    }

    #[test]
    fn parse_errors_name_the_field_the_value_and_what_is_allowed() {
        let cases = [
            (
                "61 * * * *",
                "1h",
                "UTC",
                "cron minute field: 61 is out of range 0-59",
            ),
            (
                "* 24 * * *",
                "1h",
                "UTC",
                "cron hour field: 24 is out of range 0-23",
            ),
            (
                "* * 0 * *",
                "1h",
                "UTC",
                "cron day-of-month field: 0 is out of range 1-31",
            ),
            (
                "* * * 13 *",
                "1h",
                "UTC",
                "cron month field: 13 is out of range 1-12",
            ),
            (
                "* * * * 8",
                "1h",
                "UTC",
                "cron day-of-week field: 8 is out of range 0-7",
            ),
            (
                "99999999999 * * * *",
                "1h",
                "UTC",
                "cron minute field: 99999999999 is out of range 0-59",
            ),
            (
                "*/0 * * * *",
                "1h",
                "UTC",
                r#"cron minute field: the step in "*/0" must be a whole number of at least 1"#,
            ),
            (
                "* */x * * *",
                "1h",
                "UTC",
                r#"cron hour field: the step in "*/x" must be a whole number of at least 1"#,
            ),
            (
                "5-1 * * * *",
                "1h",
                "UTC",
                r#"cron minute field: range "5-1" runs backwards; write the smaller value first, or a list such as 22-23,0-2 to wrap around"#,
            ),
            (
                "0 2 * * FRI-MON",
                "1h",
                "UTC",
                r#"cron day-of-week field: range "FRI-MON" runs backwards; write the smaller value first, or a list such as 22-23,0-2 to wrap around"#,
            ),
            (
                "0/15 * * * *",
                "1h",
                "UTC",
                r#"cron minute field: a step needs * or a range before it (e.g. */15 or 5-59/15), not "0/15""#,
            ),
            (
                "1,,2 * * * *",
                "1h",
                "UTC",
                r#"cron minute field: "1,,2" has an empty list element"#,
            ),
            (
                "0 2 * * FOO",
                "1h",
                "UTC",
                r#"cron day-of-week field: "FOO" is not a number 0-7 or a day name SUN-SAT"#,
            ),
            (
                "0 2 * JAN-JUNE *",
                "1h",
                "UTC",
                r#"cron month field: "JUNE" is not a number 1-12 or a month name JAN-DEC"#,
            ),
            (
                "0 MON * * *",
                "1h",
                "UTC",
                r#"cron hour field: "MON" is not a number 0-23"#,
            ),
            (
                "* * * *",
                "1h",
                "UTC",
                r#"cron expression "* * * *" has 4 fields; expected 5 (minute hour day-of-month month day-of-week) or one of @hourly, @daily, @weekly, @monthly, @yearly"#,
            ),
            (
                "0 0 * * * *",
                "1h",
                "UTC",
                r#"cron expression "0 0 * * * *" has 6 fields; expected 5 (minute hour day-of-month month day-of-week) or one of @hourly, @daily, @weekly, @monthly, @yearly"#,
            ),
            (
                "@reboot",
                "1h",
                "UTC",
                r#"unknown cron macro "@reboot"; expected one of @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually"#,
            ),
            (
                "0 2 30 2 *",
                "1h",
                "UTC",
                r#"cron expression "0 2 30 2 *" never fires: none of its months has any of its days of month"#,
            ),
            (
                "0 2 * * *",
                "1h",
                "Mars/Olympus_Mons",
                r#"unknown time zone "Mars/Olympus_Mons": expected an IANA name such as Europe/Berlin or UTC"#,
            ),
            (
                "0 2 * * *",
                "1h",
                "Etc/Unknown",
                r#"unknown time zone "Etc/Unknown": expected an IANA name such as Europe/Berlin or UTC"#,
            ),
            (
                "0 2 * * *",
                "0s",
                "UTC",
                "window duration must be greater than zero, got 0ms",
            ),
            (
                "0 2 * * *",
                "8d",
                "UTC",
                "window duration 8d is longer than the maximum of 7 days",
            ),
        ];
        for (cron, duration, time_zone, expected) in cases {
            let duration = Duration::parse(duration).unwrap();
            let err = MaintenanceWindow::parse(cron, duration, time_zone).unwrap_err();
            assert_eq!(err.to_string(), expected, "{cron:?} {duration} {time_zone}");
        }
        let negative = MaintenanceWindow::parse("0 2 * * *", Duration::from_secs(-60), "UTC");
        assert_eq!(
            negative.unwrap_err().to_string(),
            "window duration must be greater than zero, got -1m"
        );
    }

    #[test]
    fn names_macros_and_spacing_parse_to_one_canonical_form() {
        let cases = [
            ("0 2 * jan-Mar MON-fri", "0 2 * 1-3 1-5"),
            ("0 2 * * sun,7", "0 2 * * 0,7"),
            ("  00  02 * *\t1 ", "0 2 * * 1"),
            ("10-50/10 */6 1,15 */3 *", "10-50/10 */6 1,15 */3 *"),
            ("@hourly", "0 * * * *"),
            ("@daily", "0 0 * * *"),
            ("@MIDNIGHT", "0 0 * * *"),
            ("@weekly", "0 0 * * 0"),
            ("@monthly", "0 0 1 * *"),
            ("@yearly", "0 0 1 1 *"),
        ];
        for (cron, canonical) in cases {
            assert_eq!(parsed(cron, "1h", "UTC").cron(), canonical, "{cron:?}");
            assert_eq!(
                parsed(canonical, "1h", "UTC").cron(),
                canonical,
                "{canonical:?}"
            );
        }
        assert_eq!(
            parsed("0 2 * * mon-fri", "3h", "europe/berlin"),
            parsed("0 2 * * 1-5", "3h", "Europe/Berlin")
        );
        assert_eq!(
            parsed("0 2 * * mon-fri", "180m", "europe/berlin").to_string(),
            "0 2 * * 1-5 for 3h in Europe/Berlin"
        );
        assert_eq!(parsed("0 2 * * *", "1h", "utc").time_zone(), "UTC");
    }

    #[test]
    fn day_names_and_seven_mean_the_same_days_as_numbers() {
        // 2026-03-01 is a Sunday.
        let sundays = ["2026-03-01T02:00:00.000Z", "2026-03-08T02:00:00.000Z"];
        for cron in ["0 2 * * 0", "0 2 * * 7", "0 2 * * SUN", "0 2 * * 0,7"] {
            let window = parsed(cron, "1h", "UTC");
            let found = starts(&window, "2026-02-28T12:00:00Z", 2);
            assert_eq!(found, sundays, "{cron}");
        }
        let weekdays = parsed("0 2 * * MON-FRI", "1h", "UTC");
        assert_eq!(
            starts(&weekdays, "2026-03-06T12:00:00Z", 2),
            ["2026-03-09T02:00:00.000Z", "2026-03-10T02:00:00.000Z"]
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_matches_when_both_are_restricted() {
        // March 2026: Fridays on the 6th, 13th, 20th and 27th; April 13th is a Monday.
        let cases: [(&str, &[&str]); 3] = [
            (
                "0 0 13 * 5",
                &[
                    "2026-03-06T00:00:00.000Z",
                    "2026-03-13T00:00:00.000Z",
                    "2026-03-20T00:00:00.000Z",
                    "2026-03-27T00:00:00.000Z",
                    "2026-04-03T00:00:00.000Z",
                    "2026-04-10T00:00:00.000Z",
                    "2026-04-13T00:00:00.000Z",
                    "2026-04-17T00:00:00.000Z",
                ],
            ),
            (
                "0 0 13 * *",
                &[
                    "2026-03-13T00:00:00.000Z",
                    "2026-04-13T00:00:00.000Z",
                    "2026-05-13T00:00:00.000Z",
                ],
            ),
            // A day-of-week field starting with `*` counts as unrestricted, as in crontab: the
            // days are AND'ed, so this is "the 13th, if a Sunday or a Friday".
            (
                "0 0 13 * */5",
                &[
                    "2026-03-13T00:00:00.000Z",
                    "2026-09-13T00:00:00.000Z",
                    "2026-11-13T00:00:00.000Z",
                    "2026-12-13T00:00:00.000Z",
                ],
            ),
        ];
        for (cron, expected) in cases {
            let window = parsed(cron, "1m", "UTC");
            assert_eq!(
                starts(&window, "2026-03-01T00:00:00Z", expected.len()),
                expected,
                "{cron}"
            );
        }
    }

    #[test]
    fn expressions_that_never_fire_are_rejected_and_rare_ones_are_found() {
        for cron in [
            "0 2 30 2 *",
            "0 2 31 4,6,9,11 *",
            "0 2 30-31 FEB *",
            "0 2 31 2 */2",
        ] {
            let err = MaintenanceWindow::parse(cron, Duration::from_secs(3600), "UTC");
            assert!(
                matches!(err, Err(WindowError::NeverFires { .. })),
                "{cron}: {err:?}"
            );
        }
        let now = at("2026-03-01T00:00:00Z");
        let cases = [
            // Leap days only.
            ("0 2 29 2 *", "2028-02-29T02:00:00.000Z"),
            // February 30 or any Monday in February: the Mondays fire.
            ("0 2 30 2 1", "2027-02-01T02:00:00.000Z"),
            // A leap day that is a Sunday: 28 years apart at best.
            ("0 0 29 2 */7", "2032-02-29T00:00:00.000Z"),
        ];
        for (cron, expected) in cases {
            let window = parsed(cron, "1h", "UTC");
            assert_eq!(
                window.next_open(now).unwrap().to_rfc3339(),
                expected,
                "{cron}"
            );
        }
    }

    #[test]
    fn a_utc_window_across_midnight_is_open_from_its_start_up_to_its_end() {
        let window = parsed("0 23 * * *", "2h", "UTC");
        let opened = (
            "2026-03-09T23:00:00.000Z".to_owned(),
            "2026-03-10T01:00:00.000Z".to_owned(),
        );
        let cases = [
            ("2026-03-09T22:59:59.999Z", None, "2026-03-09T23:00:00.000Z"),
            (
                "2026-03-09T23:00:00Z",
                Some(&opened),
                "2026-03-09T23:00:00.000Z",
            ),
            (
                "2026-03-10T00:30:00Z",
                Some(&opened),
                "2026-03-10T00:30:00.000Z",
            ),
            (
                "2026-03-10T00:59:59.999Z",
                Some(&opened),
                "2026-03-10T00:59:59.999Z",
            ),
            ("2026-03-10T01:00:00Z", None, "2026-03-10T23:00:00.000Z"),
        ];
        for (now, open, next) in cases {
            assert_eq!(current(&window, now).as_ref(), open, "current at {now}");
            assert_eq!(window.is_open(at(now)), open.is_some(), "is_open at {now}");
            assert_eq!(
                window.next_open(at(now)).unwrap().to_rfc3339(),
                next,
                "next at {now}"
            );
        }
    }

    #[test]
    fn a_berlin_window_spanning_local_midnight_stays_open_into_the_next_day() {
        // Friday 2026-03-13 22:00 CET (UTC+1) to Saturday 04:00 CET.
        let window = parsed("0 22 * * FRI", "6h", "Europe/Berlin");
        let opened = (
            "2026-03-13T21:00:00.000Z".to_owned(),
            "2026-03-14T03:00:00.000Z".to_owned(),
        );
        let cases = [
            ("2026-03-12T10:00:00Z", None, "2026-03-13T21:00:00.000Z"),
            (
                "2026-03-13T23:30:00+01:00",
                Some(&opened),
                "2026-03-13T22:30:00.000Z",
            ),
            (
                "2026-03-14T03:59:00+01:00",
                Some(&opened),
                "2026-03-14T02:59:00.000Z",
            ),
            (
                "2026-03-14T04:00:00+01:00",
                None,
                "2026-03-20T21:00:00.000Z",
            ),
        ];
        for (now, open, next) in cases {
            assert_eq!(current(&window, now).as_ref(), open, "current at {now}");
            assert_eq!(
                window.next_open(at(now)).unwrap().to_rfc3339(),
                next,
                "next at {now}"
            );
        }
    }

    #[test]
    fn a_start_in_the_spring_forward_gap_fires_when_the_clocks_show_the_gap_end() {
        // Berlin, 2026-03-29: at 01:00 UTC the clocks jump from 02:00 CET to 03:00 CEST, so
        // 02:30 does not exist that night; it fires at 03:00 CEST (01:00 UTC) instead.
        let window = parsed("30 2 * * *", "3h", "Europe/Berlin");
        let cases = [
            ("2026-03-28T12:00:00Z", None, "2026-03-29T01:00:00.000Z"),
            (
                "2026-03-29T01:00:00Z",
                Some(("2026-03-29T01:00:00.000Z", "2026-03-29T04:00:00.000Z")),
                "2026-03-29T01:00:00.000Z",
            ),
            ("2026-03-29T04:00:00Z", None, "2026-03-30T00:30:00.000Z"),
        ];
        for (now, open, next) in cases {
            let open = open.map(|(start, end)| (start.to_owned(), end.to_owned()));
            assert_eq!(current(&window, now), open, "current at {now}");
            assert_eq!(
                window.next_open(at(now)).unwrap().to_rfc3339(),
                next,
                "next at {now}"
            );
        }
        // Every start inside the gap fires once, together, at its end; 03:30 CEST is real.
        let half_hourly = parsed("0,30 2-3 * * *", "10m", "Europe/Berlin");
        assert_eq!(
            starts(&half_hourly, "2026-03-28T23:00:00Z", 4),
            [
                "2026-03-29T01:00:00.000Z",
                "2026-03-29T01:30:00.000Z",
                "2026-03-30T00:00:00.000Z",
                "2026-03-30T00:30:00.000Z",
            ]
        );
    }

    #[test]
    fn a_start_in_the_fall_back_hour_fires_once_at_the_earlier_instant() {
        // Berlin, 2026-10-25: at 01:00 UTC the clocks go back from 03:00 CEST to 02:00 CET, so
        // 02:30 happens at 00:30 UTC and again at 01:30 UTC; only the first fires.
        let window = parsed("30 2 * * *", "1h", "Europe/Berlin");
        let cases = [
            ("2026-10-24T23:00:00Z", None, "2026-10-25T00:30:00.000Z"),
            (
                "2026-10-25T00:45:00Z",
                Some(("2026-10-25T00:30:00.000Z", "2026-10-25T01:30:00.000Z")),
                "2026-10-25T00:45:00.000Z",
            ),
            ("2026-10-25T01:30:00Z", None, "2026-10-26T01:30:00.000Z"),
            ("2026-10-25T01:45:00Z", None, "2026-10-26T01:30:00.000Z"),
        ];
        for (now, open, next) in cases {
            let open = open.map(|(start, end)| (start.to_owned(), end.to_owned()));
            assert_eq!(current(&window, now), open, "current at {now}");
            assert_eq!(
                window.next_open(at(now)).unwrap().to_rfc3339(),
                next,
                "next at {now}"
            );
        }
        let half_hourly = parsed("*/30 2 * * *", "30m", "Europe/Berlin");
        assert_eq!(
            starts(&half_hourly, "2026-10-24T23:00:00Z", 3),
            [
                "2026-10-25T00:00:00.000Z",
                "2026-10-25T00:30:00.000Z",
                "2026-10-26T01:00:00.000Z",
            ]
        );
        // The duration is elapsed time: opened at 02:00 CEST, three hours later is 04:00 CET.
        let three_hours = parsed("0 2 * * *", "3h", "Europe/Berlin");
        assert_eq!(
            current(&three_hours, "2026-10-25T03:59:00+01:00"),
            Some((
                "2026-10-25T00:00:00.000Z".to_owned(),
                "2026-10-25T03:00:00.000Z".to_owned()
            ))
        );
    }

    #[test]
    fn overlapping_windows_report_the_one_that_opened_first() {
        let window = parsed("*/30 * * * *", "1h", "UTC");
        assert_eq!(
            current(&window, "2026-03-10T10:45:00Z"),
            Some((
                "2026-03-10T10:00:00.000Z".to_owned(),
                "2026-03-10T11:00:00.000Z".to_owned()
            ))
        );
        let weekly = parsed("0 0 * * MON", "7d", "UTC");
        assert!(weekly.is_open(at("2026-03-15T23:59:59.999Z")));
    }

    #[test]
    fn instants_outside_the_calendar_are_never_open() {
        let window = parsed("* * * * *", "1m", "UTC");
        for now in [i64::MIN, i64::MAX] {
            let now = Timestamp::from_millis(now);
            assert!(!window.is_open(now));
            assert_eq!(window.next_open(now), None);
        }
        let late = at("9999-06-30T23:59:30Z");
        let opened = window.current(late).map(|(start, _)| start);
        assert_eq!(opened, Some(at("9999-06-30T23:59:00Z")));
        // The next New Year is past the end of the calendar jiff covers.
        assert_eq!(parsed("0 0 1 1 *", "1h", "UTC").next_open(late), None);
    }

    #[test]
    fn windows_round_trip_through_serde_in_canonical_form() {
        let window = parsed("0 2 * * mon-fri", "3h", "europe/berlin");
        let json = serde_json::to_string(&window).unwrap();
        assert_eq!(
            json,
            r#"{"cron":"0 2 * * 1-5","duration":"3h","time_zone":"Europe/Berlin"}"#
        );
        let back: MaintenanceWindow = serde_json::from_str(&json).unwrap();
        assert_eq!(back, window);
        let written: MaintenanceWindow =
            serde_json::from_str(r#"{"cron": "@daily", "duration": "1h30m", "time_zone": "UTC"}"#)
                .unwrap();
        assert_eq!(written.to_string(), "0 0 * * * for 90m in UTC");
    }

    #[test]
    fn deserializing_an_invalid_window_fails_with_the_parse_error() {
        let cases = [
            (
                r#"{"cron": "0 2 * * 8", "duration": "3h", "time_zone": "UTC"}"#,
                "cron day-of-week field: 8 is out of range 0-7",
            ),
            (
                r#"{"cron": "0 2 * * *", "duration": "3 hours", "time_zone": "UTC"}"#,
                r#"invalid duration "3 hours""#,
            ),
            (
                r#"{"cron": "0 2 * * *", "duration": "3h", "time_zone": "Berlin"}"#,
                r#"unknown time zone "Berlin""#,
            ),
            (
                r#"{"cron": "0 2 * * *", "duration": "3h"}"#,
                "missing field `time_zone`",
            ),
            (
                r#"{"cron": "0 2 * * *", "duration": "3h", "time_zone": "UTC", "tz": "UTC"}"#,
                "unknown field `tz`",
            ),
        ];
        for (json, expected) in cases {
            let err = serde_json::from_str::<MaintenanceWindow>(json).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{json}: {err}");
        }
    }
}
