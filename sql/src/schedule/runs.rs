//! The run history of schedules: the internal table `__schedule_runs`, one row per schedule and
//! tick, which SQL reads like any table (`SHOW RUNS` is a query over it).
//!
//! The row is also the tick's lock. A node claims a tick by writing its row with a
//! compare-and-set on the version it read (absent for a new tick), with a lease it renews the
//! same way; it records the outcome by a compare-and-set on its own last version. A node that
//! finds the lease passed (its holder died or stalled) claims the tick again as the next attempt,
//! which changes the version, so the old holder can neither renew nor record success.
//!
//! Runs of one schedule never overlap, and every attempt writes under a fencing token: both come
//! from the schedule's row in the internal table `__schedule_leases`. An attempt is claimed by a
//! compare-and-set of that row (one row per schedule, so two nodes claiming different ticks of one
//! schedule cannot both win) that raises its token by one; the attempt's writes carry the token,
//! and the regions they reach refuse any lower one (`weir_storage::types::WriterFence`), so an
//! attempt that stalled past its lease cannot write where its successor has.

use weir_proto::table::{TableSchema, Value};

/// The run history table.
pub const RUNS_TABLE: &str = "__schedule_runs";

/// The run history table's columns and key (schedule, tick).
pub fn runs_schema() -> TableSchema {
    TableSchema::parse(
        "schedule VARCHAR NOT NULL, tick TIMESTAMP NOT NULL, status VARCHAR NOT NULL, \
         attempt BIGINT NOT NULL, node BIGINT NOT NULL, started TIMESTAMP, ended TIMESTAMP, \
         rows BIGINT, error VARCHAR, manual BOOLEAN NOT NULL, lease_until TIMESTAMP, \
         retry_at TIMESTAMP, schedule_id BIGINT NOT NULL",
        &["schedule".to_string(), "tick".to_string()],
    )
    // A constant definition; the unit test below parses it.
    .expect("the run history schema parses")
}

/// The table of schedule leases: per schedule, who runs it now and the last fencing token.
pub const LEASES_TABLE: &str = "__schedule_leases";

/// The lease table's columns and key (schedule_id).
pub fn leases_schema() -> TableSchema {
    TableSchema::parse(
        "schedule_id BIGINT NOT NULL, token BIGINT NOT NULL, tick TIMESTAMP NOT NULL, \
         attempt BIGINT NOT NULL, node BIGINT NOT NULL, lease_until TIMESTAMP",
        &["schedule_id".to_string()],
    )
    // A constant definition; the unit test below parses it.
    .expect("the lease schema parses")
}

/// The holder of a schedule's lease and its fencing token.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRecord {
    /// The schedule's id.
    pub schedule_id: u64,
    /// The token of the latest attempt; each claim takes the next.
    pub token: u64,
    /// The tick the attempt runs.
    pub tick_ms: i64,
    /// The attempt's number for its tick.
    pub attempt: i64,
    /// The node running it.
    pub node: u64,
    /// Until when it holds the lease (ms); none once it has ended.
    pub lease_until_ms: Option<i64>,
}

impl LeaseRecord {
    /// The row's key.
    pub fn key(schedule_id: u64) -> Vec<Value> {
        vec![Value::Int(schedule_id as i64)]
    }

    /// The row, in the table's column order.
    pub fn to_row(&self) -> Vec<Value> {
        vec![
            Value::Int(self.schedule_id as i64),
            Value::Int(self.token as i64),
            ts(Some(self.tick_ms)),
            Value::Int(self.attempt),
            Value::Int(self.node as i64),
            ts(self.lease_until_ms),
        ]
    }

    /// Reads a row of the table; none when it is not one this version wrote.
    pub fn from_row(row: &[Value]) -> Option<LeaseRecord> {
        let [id, token, tick, attempt, node, lease] = row else {
            return None;
        };
        Some(LeaseRecord {
            schedule_id: int_of(id)? as u64,
            token: int_of(token)? as u64,
            tick_ms: ms_of(tick)?,
            attempt: int_of(attempt)?,
            node: int_of(node)? as u64,
            lease_until_ms: ms_of(lease),
        })
    }

    /// The holder name a schedule's writes carry with their token.
    pub fn holder(schedule_id: u64) -> String {
        format!("schedule {schedule_id}")
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// A node holds the tick's lease and runs the statement.
    Running,
    /// The statement ran to its end.
    Succeeded,
    /// The last attempt failed; another follows at `retry_at`, if set.
    Failed,
}

impl RunStatus {
    /// The word stored in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<RunStatus> {
        match s {
            "running" => Some(RunStatus::Running),
            "succeeded" => Some(RunStatus::Succeeded),
            "failed" => Some(RunStatus::Failed),
            _ => None,
        }
    }
}

/// One row of the run history: a schedule's tick and its latest attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The schedule's name.
    pub schedule: String,
    /// The tick (milliseconds since the epoch).
    pub tick_ms: i64,
    /// Where the run stands.
    pub status: RunStatus,
    /// Attempts so far (1 for the first).
    pub attempt: i64,
    /// The node that ran (or runs) the latest attempt.
    pub node: u64,
    /// When the latest attempt started (ms).
    pub started_ms: i64,
    /// When it ended (ms), once it has.
    pub ended_ms: Option<i64>,
    /// Rows the statement wrote (or returned), once it succeeded.
    pub rows: Option<i64>,
    /// Why the latest attempt failed.
    pub error: Option<String>,
    /// Whether the run was asked for (`RUN SCHEDULE`) rather than due.
    pub manual: bool,
    /// Until when the running node holds the tick (ms).
    pub lease_until_ms: Option<i64>,
    /// When a failed run is tried again (ms); none: not again.
    pub retry_at_ms: Option<i64>,
    /// The schedule's id (a schedule re-created under its name does not inherit the history's
    /// ticks).
    pub schedule_id: u64,
}

fn ts(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| Value::Timestamp(ms.saturating_mul(1000)))
}

fn ms_of(v: &Value) -> Option<i64> {
    match v {
        Value::Timestamp(us) => Some(us.div_euclid(1000)),
        _ => None,
    }
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::UInt(u) => i64::try_from(*u).ok(),
        _ => None,
    }
}

impl RunRecord {
    /// The row's key.
    pub fn key(schedule: &str, tick_ms: i64) -> Vec<Value> {
        vec![Value::Str(schedule.to_string()), ts(Some(tick_ms))]
    }

    /// The row, in the table's column order.
    pub fn to_row(&self) -> Vec<Value> {
        vec![
            Value::Str(self.schedule.clone()),
            ts(Some(self.tick_ms)),
            Value::Str(self.status.as_str().into()),
            Value::Int(self.attempt),
            Value::Int(self.node as i64),
            ts(Some(self.started_ms)),
            ts(self.ended_ms),
            self.rows.map_or(Value::Null, Value::Int),
            self.error.clone().map_or(Value::Null, Value::Str),
            Value::Bool(self.manual),
            ts(self.lease_until_ms),
            ts(self.retry_at_ms),
            Value::Int(self.schedule_id as i64),
        ]
    }

    /// Reads a row of the table; none when it is not one this version wrote.
    pub fn from_row(row: &[Value]) -> Option<RunRecord> {
        let [schedule, tick, status, attempt, node, started, ended, rows, error, manual, lease, retry, id] =
            row
        else {
            return None;
        };
        Some(RunRecord {
            schedule: match schedule {
                Value::Str(s) => s.clone(),
                _ => return None,
            },
            tick_ms: ms_of(tick)?,
            status: match status {
                Value::Str(s) => RunStatus::parse(s)?,
                _ => return None,
            },
            attempt: int_of(attempt)?,
            node: int_of(node)? as u64,
            started_ms: ms_of(started).unwrap_or(0),
            ended_ms: ms_of(ended),
            rows: int_of(rows),
            error: match error {
                Value::Str(s) => Some(s.clone()),
                _ => None,
            },
            manual: matches!(manual, Value::Bool(true)),
            lease_until_ms: ms_of(lease),
            retry_at_ms: ms_of(retry),
            schedule_id: int_of(id)? as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_round_trips_through_its_row() {
        let schema = runs_schema();
        let r = RunRecord {
            schedule: "s".into(),
            tick_ms: 1_700_000_000_000,
            status: RunStatus::Failed,
            attempt: 2,
            node: 3,
            started_ms: 1_700_000_000_005,
            ended_ms: Some(1_700_000_000_900),
            rows: None,
            error: Some("division by zero".into()),
            manual: false,
            lease_until_ms: None,
            retry_at_ms: Some(1_700_000_002_900),
            schedule_id: 7,
        };
        let row = r.to_row();
        assert_eq!(row.len(), schema.columns.len());
        for (v, c) in row.iter().zip(&schema.columns) {
            assert!(v.clone().check(c).is_ok(), "{} holds {v:?}", c.name);
        }
        assert_eq!(RunRecord::from_row(&row), Some(r));
    }

    #[test]
    fn a_lease_round_trips_through_its_row() {
        let schema = leases_schema();
        let l = LeaseRecord {
            schedule_id: 7,
            token: 12,
            tick_ms: 1_700_000_000_000,
            attempt: 2,
            node: 3,
            lease_until_ms: Some(1_700_000_010_000),
        };
        let row = l.to_row();
        assert_eq!(row.len(), schema.columns.len());
        for (v, c) in row.iter().zip(&schema.columns) {
            assert!(v.clone().check(c).is_ok(), "{} holds {v:?}", c.name);
        }
        assert_eq!(LeaseRecord::from_row(&row), Some(l));
    }
}
