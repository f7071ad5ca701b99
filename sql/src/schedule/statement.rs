//! The schedule statements, which DataFusion's dialect has no syntax for: `CREATE SCHEDULE name
//! EVERY 'interval' | CRON 'expression' [AFTER other, ...] AS <statement>`, `ALTER SCHEDULE name PAUSE | RESUME`,
//! `DROP SCHEDULE [IF EXISTS] name`, `RUN SCHEDULE name` (once, now), `SHOW SCHEDULES` and
//! `SHOW RUNS [FOR name]`.

use datafusion::error::Result;
use datafusion::sql::sqlparser::ast::{Expr, Value as SqlValue};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::cluster::ScheduleAction;
use crate::syntax::{expect_end, syntax};

/// When a schedule's ticks fall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timetable {
    /// `EVERY '10 minutes'`: on multiples of the interval since the epoch.
    Every {
        /// Milliseconds between ticks.
        ms: u64,
        /// The interval as written.
        text: String,
    },
    /// `CRON '0 * * * *'`: at the expression's times (UTC).
    Cron(String),
}

/// A schedule statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleStatement {
    /// `CREATE SCHEDULE name EVERY '...' | CRON '...' [AFTER a, b] AS statement`.
    Create {
        /// The schedule's name.
        name: String,
        /// When its ticks fall.
        timetable: Timetable,
        /// Schedules it runs after.
        after: Vec<String>,
        /// The statement each run executes, as written.
        statement: String,
    },
    /// `ALTER SCHEDULE name PAUSE|RESUME`, `DROP SCHEDULE name`, `RUN SCHEDULE name`.
    Alter {
        /// The schedule's name.
        name: String,
        /// What to do.
        action: ScheduleAction,
        /// Whether a missing schedule is fine (`DROP SCHEDULE IF EXISTS`).
        if_exists: bool,
    },
    /// `SHOW SCHEDULES`.
    Show,
    /// `SHOW RUNS [FOR name]`.
    ShowRuns {
        /// Only this schedule's runs.
        name: Option<String>,
    },
}

impl std::fmt::Display for ScheduleStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleStatement::Create {
                name,
                timetable,
                after,
                statement,
            } => {
                match timetable {
                    Timetable::Every { text, .. } => {
                        write!(f, "CREATE SCHEDULE {name} EVERY '{text}'")?
                    }
                    Timetable::Cron(c) => write!(f, "CREATE SCHEDULE {name} CRON '{c}'")?,
                }
                if !after.is_empty() {
                    write!(f, " AFTER {}", after.join(", "))?;
                }
                write!(f, " AS {statement}")
            }
            ScheduleStatement::Alter { name, action, .. } => match action {
                ScheduleAction::Pause => write!(f, "ALTER SCHEDULE {name} PAUSE"),
                ScheduleAction::Resume => write!(f, "ALTER SCHEDULE {name} RESUME"),
                ScheduleAction::Drop => write!(f, "DROP SCHEDULE {name}"),
                ScheduleAction::RunNow => write!(f, "RUN SCHEDULE {name}"),
            },
            ScheduleStatement::Show => write!(f, "SHOW SCHEDULES"),
            ScheduleStatement::ShowRuns { name: None } => write!(f, "SHOW RUNS"),
            ScheduleStatement::ShowRuns { name: Some(n) } => write!(f, "SHOW RUNS FOR {n}"),
        }
    }
}

/// Whether a statement starting with these two words is a schedule statement.
pub fn is_schedule_statement(first: &str, second: &str) -> bool {
    let (first, second) = (first.to_ascii_uppercase(), second.to_ascii_uppercase());
    matches!(
        (first.as_str(), second.as_str()),
        ("CREATE" | "DROP" | "ALTER" | "RUN", "SCHEDULE") | ("SHOW", "SCHEDULES" | "RUNS")
    )
}

/// Where the statement after `AS` starts in `sql`: the byte offset just past the first
/// top-level `AS` keyword, so the body is kept exactly as written.
fn body_start(sql: &str) -> Result<usize> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(syntax)?;
    let as_at = tokens
        .iter()
        .find(|t| matches!(&t.token, Token::Word(w) if w.keyword == Keyword::AS))
        .ok_or_else(|| syntax("CREATE SCHEDULE needs AS <statement>"))?;
    // Locations are 1-based lines and columns (in characters).
    let (line, column) = (as_at.span.end.line as usize, as_at.span.end.column as usize);
    let mut offset = 0;
    for (i, l) in sql.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let chars: usize = l.char_indices().nth(column - 1).map_or(l.len(), |(b, _)| b);
            return Ok(offset + chars);
        }
        offset += l.len();
    }
    Err(syntax("CREATE SCHEDULE needs AS <statement>"))
}

/// Parses one schedule statement (without its terminating semicolon).
pub fn parse_schedule_statement(sql: &str) -> Result<ScheduleStatement> {
    let dialect = PostgreSqlDialect {};
    let mut p = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
    let verb = p
        .parse_identifier()
        .map_err(syntax)?
        .value
        .to_ascii_uppercase();
    let _object = p.parse_identifier().map_err(syntax)?;
    let stmt = match verb.as_str() {
        "SHOW" if _object.value.eq_ignore_ascii_case("SCHEDULES") => ScheduleStatement::Show,
        "SHOW" => {
            let name = if p.parse_keyword(Keyword::FOR) {
                Some(p.parse_identifier().map_err(syntax)?.value)
            } else {
                None
            };
            ScheduleStatement::ShowRuns { name }
        }
        "CREATE" => {
            let name = p.parse_identifier().map_err(syntax)?.value;
            let word = p
                .parse_identifier()
                .map_err(syntax)?
                .value
                .to_ascii_uppercase();
            if word != "EVERY" && word != "CRON" {
                return Err(syntax(format!(
                    "expected EVERY '<interval>' or CRON '<expression>' after the schedule's \
                     name, found {word}"
                )));
            }
            let text = match p.parse_expr().map_err(syntax)? {
                Expr::Value(v) => match v.value {
                    SqlValue::SingleQuotedString(s) => s,
                    other => other.to_string(),
                },
                other => {
                    return Err(syntax(format!(
                        "{word} takes a quoted string such as '10 minutes' or '0 * * * *', \
                         not {other}"
                    )))
                }
            };
            let timetable = if word == "EVERY" {
                Timetable::Every {
                    ms: super::parse_every(&text)?,
                    text,
                }
            } else {
                super::parse_cron(&text)?;
                Timetable::Cron(text.trim().to_string())
            };
            let mut after = Vec::new();
            if p.parse_keyword(Keyword::AFTER) {
                loop {
                    after.push(p.parse_identifier().map_err(syntax)?.value);
                    if !p.consume_token(&Token::Comma) {
                        break;
                    }
                }
            }
            p.expect_keyword(Keyword::AS).map_err(syntax)?;
            // The body runs later through the whole SQL layer: keep it as written; the engine
            // checks it plans before the schedule is recorded.
            let statement = sql[body_start(sql)?..].trim().to_string();
            if statement.is_empty() {
                return Err(syntax("CREATE SCHEDULE needs a statement after AS"));
            }
            return Ok(ScheduleStatement::Create {
                name,
                timetable,
                after,
                statement,
            });
        }
        "ALTER" => {
            let name = p.parse_identifier().map_err(syntax)?.value;
            let word = p.parse_identifier().map_err(syntax)?.value;
            let action = match word.to_ascii_uppercase().as_str() {
                "PAUSE" => ScheduleAction::Pause,
                "RESUME" => ScheduleAction::Resume,
                other => {
                    return Err(syntax(format!(
                        "ALTER SCHEDULE {name} takes PAUSE or RESUME, not {other}"
                    )))
                }
            };
            ScheduleStatement::Alter {
                name,
                action,
                if_exists: false,
            }
        }
        "DROP" => {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            ScheduleStatement::Alter {
                name: p.parse_identifier().map_err(syntax)?.value,
                action: ScheduleAction::Drop,
                if_exists,
            }
        }
        "RUN" => ScheduleStatement::Alter {
            name: p.parse_identifier().map_err(syntax)?.value,
            action: ScheduleAction::RunNow,
            if_exists: false,
        },
        other => return Err(syntax(format!("not a schedule statement: {other}"))),
    };
    expect_end(&p, "schedule")?;
    Ok(stmt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_statements_parse() {
        let s = parse_schedule_statement(
            "CREATE SCHEDULE daily EVERY '1 day' AFTER load, clean AS\n  INSERT INTO loyalty SELECT a AS b FROM t",
        )
        .unwrap();
        match &s {
            ScheduleStatement::Create {
                name,
                timetable,
                after,
                statement,
            } => {
                assert_eq!(name, "daily");
                assert!(matches!(timetable, Timetable::Every { ms: 86_400_000, .. }));
                assert_eq!(after, &["load", "clean"]);
                assert_eq!(statement, "INSERT INTO loyalty SELECT a AS b FROM t");
            }
            other => panic!("{other:?}"),
        }
        // The definition reads back as the same statement.
        assert_eq!(parse_schedule_statement(&s.to_string()).unwrap(), s);
        let c = parse_schedule_statement("CREATE SCHEDULE h CRON '0 * * * *' AS SELECT 1").unwrap();
        assert!(
            matches!(&c, ScheduleStatement::Create { timetable: Timetable::Cron(e), .. } if e == "0 * * * *")
        );
        assert_eq!(parse_schedule_statement(&c.to_string()).unwrap(), c);
        assert_eq!(
            parse_schedule_statement("alter schedule s pause").unwrap(),
            ScheduleStatement::Alter {
                name: "s".into(),
                action: ScheduleAction::Pause,
                if_exists: false
            }
        );
        assert!(matches!(
            parse_schedule_statement("DROP SCHEDULE IF EXISTS s").unwrap(),
            ScheduleStatement::Alter {
                action: ScheduleAction::Drop,
                if_exists: true,
                ..
            }
        ));
        assert_eq!(
            parse_schedule_statement("SHOW RUNS FOR s").unwrap(),
            ScheduleStatement::ShowRuns {
                name: Some("s".into())
            }
        );
        assert_eq!(
            parse_schedule_statement("SHOW SCHEDULES").unwrap(),
            ScheduleStatement::Show
        );
        for bad in [
            "CREATE SCHEDULE s EVERY 'often' AS SELECT 1",
            "CREATE SCHEDULE s CRON 'every day' AS SELECT 1",
            "CREATE SCHEDULE s CRON '61 * * * *' AS SELECT 1",
            "CREATE SCHEDULE s EVERY '1 minute' SELECT 1",
            "CREATE SCHEDULE s AS SELECT 1",
            "ALTER SCHEDULE s STOP",
            "RUN SCHEDULE s now",
        ] {
            assert!(parse_schedule_statement(bad).is_err(), "{bad}");
        }
    }
}
