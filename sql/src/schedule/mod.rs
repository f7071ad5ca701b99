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

use datafusion::error::{DataFusionError, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
