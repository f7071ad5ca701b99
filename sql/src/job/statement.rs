//! The job statements, which DataFusion's dialect has no syntax for: `CREATE JOB name [WITH (start
//! = 'earliest' | 'latest')] AS INSERT INTO ... SELECT ...`, `DROP JOB [IF EXISTS] name`, `STOP JOB
//! name`, `START JOB name`, `SHOW JOBS` and `DESCRIBE JOB name`.

use datafusion::error::{DataFusionError, Result};
use datafusion::sql::sqlparser::ast::{Expr, Statement as Sql, Value as SqlValue};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::syntax::{expect_end, syntax};

/// A job statement.
#[derive(Debug, Clone)]
pub enum JobStatement {
    /// `CREATE JOB name [WITH (...)] AS INSERT ...`.
    Create {
        /// The job's name.
        name: String,
        /// Start at the end of the topic rather than its earliest record.
        start_latest: bool,
        /// The `INSERT INTO ... SELECT ...` it runs.
        body: Box<Sql>,
    },
    /// `DROP JOB [IF EXISTS] name`.
    Drop {
        /// The job's name.
        name: String,
        /// Whether a missing job is fine.
        if_exists: bool,
    },
    /// `STOP JOB name` (running = false) or `START JOB name`.
    SetRunning {
        /// The job's name.
        name: String,
        /// Whether it should run.
        running: bool,
    },
    /// `SHOW JOBS`.
    Show,
    /// `DESCRIBE JOB name`.
    Describe {
        /// The job's name.
        name: String,
    },
}

impl std::fmt::Display for JobStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobStatement::Create {
                name,
                start_latest,
                body,
            } => {
                let start = if *start_latest { "latest" } else { "earliest" };
                write!(f, "CREATE JOB {name} WITH (start = '{start}') AS {body}")
            }
            JobStatement::Drop { name, .. } => write!(f, "DROP JOB {name}"),
            JobStatement::SetRunning { name, running } => {
                write!(f, "{} JOB {name}", if *running { "START" } else { "STOP" })
            }
            JobStatement::Show => write!(f, "SHOW JOBS"),
            JobStatement::Describe { name } => write!(f, "DESCRIBE JOB {name}"),
        }
    }
}

/// Whether a statement starting with these two words is a job statement.
pub fn is_job_statement(first: &str, second: &str) -> bool {
    let (first, second) = (first.to_ascii_uppercase(), second.to_ascii_uppercase());
    matches!(
        (first.as_str(), second.as_str()),
        ("CREATE" | "DROP" | "STOP" | "START" | "DESCRIBE", "JOB") | ("SHOW", "JOBS")
    )
}

/// Parses one job statement (without its terminating semicolon).
pub fn parse_job_statement(sql: &str) -> Result<JobStatement> {
    let dialect = PostgreSqlDialect {};
    let mut p = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
    let verb = p
        .parse_identifier()
        .map_err(syntax)?
        .value
        .to_ascii_uppercase();
    let _object = p.parse_identifier().map_err(syntax)?;
    let stmt = match verb.as_str() {
        "SHOW" => JobStatement::Show,
        "CREATE" => {
            let name = p.parse_identifier().map_err(syntax)?.value;
            let mut start_latest = false;
            if p.parse_keyword(Keyword::WITH) {
                p.expect_token(&Token::LParen).map_err(syntax)?;
                loop {
                    let key = p.parse_identifier().map_err(syntax)?.value;
                    p.expect_token(&Token::Eq).map_err(syntax)?;
                    let value = match p.parse_expr().map_err(syntax)? {
                        Expr::Value(v) => match v.value {
                            SqlValue::SingleQuotedString(s) => s,
                            other => other.to_string(),
                        },
                        Expr::Identifier(i) => i.value,
                        other => other.to_string(),
                    };
                    match (
                        key.to_ascii_lowercase().as_str(),
                        value.to_ascii_lowercase().as_str(),
                    ) {
                        ("start", "earliest") => start_latest = false,
                        ("start", "latest") => start_latest = true,
                        ("start", v) => {
                            return Err(DataFusionError::Plan(format!(
                                "start = '{v}': a job starts at 'earliest' or 'latest'"
                            )))
                        }
                        (k, _) => {
                            return Err(DataFusionError::Plan(format!(
                                "unknown job option '{k}' (known: start)"
                            )))
                        }
                    }
                    if !p.consume_token(&Token::Comma) {
                        break;
                    }
                }
                p.expect_token(&Token::RParen).map_err(syntax)?;
            }
            p.expect_keyword(Keyword::AS).map_err(syntax)?;
            let body = p.parse_statement().map_err(syntax)?;
            if !matches!(body, Sql::Insert(_)) {
                return Err(DataFusionError::Plan(format!(
                    "a job runs INSERT INTO table SELECT ... FROM topic ..., not: {body}"
                )));
            }
            JobStatement::Create {
                name,
                start_latest,
                body: Box::new(body),
            }
        }
        "DROP" => {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            JobStatement::Drop {
                name: p.parse_identifier().map_err(syntax)?.value,
                if_exists,
            }
        }
        "STOP" | "START" => JobStatement::SetRunning {
            name: p.parse_identifier().map_err(syntax)?.value,
            running: verb == "START",
        },
        "DESCRIBE" => JobStatement::Describe {
            name: p.parse_identifier().map_err(syntax)?.value,
        },
        other => return Err(syntax(format!("not a job statement: {other}"))),
    };
    expect_end(&p, "job")?;
    Ok(stmt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_statements_parse() {
        let s = parse_job_statement(
            "CREATE JOB j WITH (start = 'latest') AS INSERT INTO s SELECT a, count(*) FROM t GROUP BY a",
        )
        .unwrap();
        match &s {
            JobStatement::Create {
                name, start_latest, ..
            } => {
                assert_eq!(name, "j");
                assert!(*start_latest);
            }
            other => panic!("{other:?}"),
        }
        // The definition reads back as the same statement.
        let again = parse_job_statement(&s.to_string()).unwrap();
        assert_eq!(again.to_string(), s.to_string());
        assert!(matches!(
            parse_job_statement("drop job if exists j").unwrap(),
            JobStatement::Drop {
                if_exists: true,
                ..
            }
        ));
        assert!(matches!(
            parse_job_statement("STOP JOB j").unwrap(),
            JobStatement::SetRunning { running: false, .. }
        ));
        assert!(matches!(
            parse_job_statement("SHOW JOBS").unwrap(),
            JobStatement::Show
        ));
        assert!(parse_job_statement("CREATE JOB j AS SELECT 1").is_err());
        assert!(parse_job_statement(
            "CREATE JOB j WITH (start = 'soon') AS INSERT INTO s SELECT 1"
        )
        .is_err());
        assert!(parse_job_statement("STOP JOB j extra").is_err());
    }
}
