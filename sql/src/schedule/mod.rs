//! Schedules: `CREATE SCHEDULE name EVERY '10 minutes' [AFTER other, ...] AS <statement>`, a
//! statement run on a timetable (Oozie's coordinator), each tick by exactly one node.
//!
//! - [`statement`]: the schedule statements' syntax.
//! - [`admin`]: the schedule statements run (create, alter, drop, show).
//! - [`runs`]: the run history table, one row per tick, which is also how nodes agree on who
//!   runs a tick: a node claims a tick by a compare-and-set of its row and keeps a lease on it.
//! - [`fence`]: the cluster as a run sees it: writes refused once its lease may have passed.
//!
//! The nodes' scheduler (in the node) claims due ticks and runs them.

pub mod admin;
pub mod fence;
pub mod runs;
pub mod statement;

use chrono::{DateTime, Utc};
use croner::Cron;
use datafusion::error::{DataFusionError, Result};

use crate::cluster::ScheduleMeta;

/// Shortest interval a schedule may have.
pub const MIN_EVERY_MS: u64 = 1000;

/// Parses an interval such as `'10 minutes'`, `'1 hour'`, `'30s'` or `'1 day'` into
/// milliseconds; at least [`MIN_EVERY_MS`].
pub fn parse_every(text: &str) -> Result<u64> {
    let bad = || {
        DataFusionError::Plan(format!(
            "EVERY '{text}': write a number and a unit, such as '10 minutes', '1 hour' or '30 seconds'"
        ))
    };
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit_ms = match unit.trim() {
        "ms" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        "w" | "week" | "weeks" => 604_800_000.0,
        _ => return Err(bad()),
    };
    let ms = number * unit_ms;
    if !ms.is_finite() || ms < MIN_EVERY_MS as f64 || ms > 366.0 * 86_400_000.0 {
        return Err(DataFusionError::Plan(format!(
            "EVERY '{text}': a schedule runs at most every second and at least once a year"
        )));
    }
    Ok(ms.round() as u64)
}

/// Parses a cron expression: 5 fields (minute, hour, day of month, month, day of week), or 6
/// with seconds first; evaluated in UTC.
pub fn parse_cron(text: &str) -> Result<Cron> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(text.trim())
        .map_err(|e| {
            DataFusionError::Plan(format!(
                "CRON '{text}': {e} (write 5 fields: minute hour day-of-month month day-of-week, \
                 as in '0 * * * *')"
            ))
        })
}

fn utc(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// The latest tick of `s` at or before `now` (ms since the epoch), if it is at or after the
/// schedule's creation.
pub fn due_tick(s: &ScheduleMeta, now: i64) -> Option<i64> {
    let tick = match &s.cron {
        Some(c) => parse_cron(c)
            .ok()?
            .find_previous_occurrence(&utc(now)?, true)
            .ok()?
            .timestamp_millis(),
        None => {
            let every = i64::try_from(s.every_ms).ok().filter(|e| *e > 0)?;
            now - now.rem_euclid(every)
        }
    };
    (tick >= s.created_ms).then_some(tick)
}

/// The tick of `s` just before `tick`, if it is at or after the schedule's creation.
pub fn tick_before(s: &ScheduleMeta, tick: i64) -> Option<i64> {
    let before = match &s.cron {
        Some(c) => parse_cron(c)
            .ok()?
            .find_previous_occurrence(&utc(tick)?, false)
            .ok()?
            .timestamp_millis(),
        None => tick - i64::try_from(s.every_ms).ok()?,
    };
    (before >= s.created_ms).then_some(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(every_ms: u64, cron: Option<&str>, created_ms: i64) -> ScheduleMeta {
        ScheduleMeta {
            name: "s".into(),
            id: 1,
            statement: "SELECT 1".into(),
            every_ms,
            cron: cron.map(str::to_string),
            after: vec![],
            paused: false,
            created_ms,
            run_now: None,
        }
    }

    #[test]
    fn ticks_fall_on_the_timetable_from_creation_on() {
        let s = schedule(60_000, None, 125_000);
        assert_eq!(due_tick(&s, 130_000), None);
        assert_eq!(due_tick(&s, 180_000), Some(180_000));
        assert_eq!(due_tick(&s, 239_999), Some(180_000));
        assert_eq!(due_tick(&s, 240_000), Some(240_000));
        assert_eq!(tick_before(&s, 240_000), Some(180_000));
        assert_eq!(tick_before(&s, 180_000), None);
        // On the hour, in UTC: 2024-06-01T10:00Z and 11:00Z.
        let (ten, eleven) = (1_717_236_000_000i64, 1_717_239_600_000i64);
        let h = schedule(0, Some("0 * * * *"), ten - 1);
        assert_eq!(due_tick(&h, ten + 59 * 60_000), Some(ten));
        assert_eq!(due_tick(&h, eleven), Some(eleven));
        assert_eq!(tick_before(&h, eleven), Some(ten));
        assert_eq!(tick_before(&h, ten), None);
    }

    #[test]
    fn intervals_parse_and_bad_ones_are_named() {
        assert_eq!(parse_every("10 minutes").unwrap(), 600_000);
        assert_eq!(parse_every("1 hour").unwrap(), 3_600_000);
        assert_eq!(parse_every("30s").unwrap(), 30_000);
        assert_eq!(parse_every(" 2 Days ").unwrap(), 172_800_000);
        assert_eq!(parse_every("1.5 seconds").unwrap(), 1500);
        for bad in [
            "",
            "ten minutes",
            "10",
            "10 fortnights",
            "500 ms",
            "0 s",
            "2 years",
        ] {
            let e = parse_every(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")), "{bad}: {e}");
        }
    }
}
