//! The statements Weir runs: what DataFusion parses, plus the statements about topics
//! (`CREATE TOPIC`, `DROP TOPIC`, `SHOW TOPICS`) that its SQL dialect has no syntax for.
//!
//! A topic statement is written like its table counterpart, so it is parsed as one: the word
//! `TOPIC` is replaced by `TABLE` (`SHOW TOPICS` by `SHOW TABLES`), words of the same length, so
//! a syntax error still points at the line and column the user wrote.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use datafusion::error::{DataFusionError, Result};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{CreateTable, ObjectName, ObjectType, Statement as Sql};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::job::statement::{is_job_statement, parse_job_statement, JobStatement};
use crate::schedule::statement::{
    is_schedule_statement, parse_schedule_statement, ScheduleStatement,
};

/// One statement of a request.
#[derive(Debug, Clone)]
pub enum Statement {
    /// A statement DataFusion plans (or Weir's table statements, which it parses).
    Sql(DfStatement),
    /// `CREATE TOPIC name (cols...) WITH (partitions = N, replicas = N, format = '...')`.
    CreateTopic(Box<CreateTable>),
    /// `DROP TOPIC [IF EXISTS] name, ...`.
    DropTopic {
        /// The topics named.
        names: Vec<ObjectName>,
        /// Whether a missing topic is fine.
        if_exists: bool,
    },
    /// `SHOW TOPICS`.
    ShowTopics,
    /// A stream job statement (`CREATE JOB`, `SHOW JOBS`, ...).
    Job(JobStatement),
    /// A schedule statement (`CREATE SCHEDULE`, `SHOW RUNS`, ...).
    Schedule(ScheduleStatement),
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::Sql(s) => write!(f, "{s}"),
            Statement::CreateTopic(ct) => {
                let table = Sql::CreateTable((**ct).clone()).to_string();
                write!(f, "{}", table.replacen("TABLE", "TOPIC", 1))
            }
            Statement::DropTopic { names, .. } => {
                let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                write!(f, "DROP TOPIC {}", names.join(", "))
            }
            Statement::ShowTopics => write!(f, "SHOW TOPICS"),
            Statement::Job(j) => write!(f, "{j}"),
            Statement::Schedule(s) => write!(f, "{s}"),
        }
    }
}

/// What a topic statement was rewritten from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicVerb {
    Create,
    Drop,
    Show,
}

/// Splits `sql` into statements; a syntax error names the line and column.
pub fn parse(sql: &str) -> Result<VecDeque<Statement>> {
    let chunks = job_chunks(sql);
    if chunks.iter().all(|(_, kind)| *kind == Chunk::Plain) {
        return parse_plain(sql);
    }
    let mut out = VecDeque::new();
    for (chunk, kind) in chunks {
        match kind {
            Chunk::Job => out.push_back(Statement::Job(parse_job_statement(&chunk)?)),
            Chunk::Schedule => {
                out.push_back(Statement::Schedule(parse_schedule_statement(&chunk)?))
            }
            Chunk::Plain => out.extend(parse_plain(&chunk)?),
        }
    }
    Ok(out)
}

/// Which parser a piece of a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// DataFusion's (with the topic statements rewritten).
    Plain,
    /// The job statements'.
    Job,
    /// The schedule statements'.
    Schedule,
}

/// `sql` cut at its top-level semicolons, each piece marked with the parser it needs; one piece
/// holding everything when it does not tokenize (the parser then reports where).
fn job_chunks(sql: &str) -> Vec<(String, Chunk)> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return vec![(sql.to_string(), Chunk::Plain)];
    };
    let mut chunks = Vec::new();
    let mut current: Vec<Token> = Vec::new();
    let mut flush = |current: &mut Vec<Token>| {
        let words: Vec<String> = current
            .iter()
            .filter_map(|t| match t {
                Token::Word(w) if w.quote_style.is_none() => Some(w.value.clone()),
                Token::Whitespace(_) => None,
                _ => Some(String::new()),
            })
            .take(2)
            .collect();
        let text: String = current.iter().map(|t| t.to_string()).collect();
        if !text.trim().is_empty() {
            let kind = match words.as_slice() {
                [a, b] if is_job_statement(a, b) => Chunk::Job,
                [a, b] if is_schedule_statement(a, b) => Chunk::Schedule,
                _ => Chunk::Plain,
            };
            chunks.push((text, kind));
        }
        current.clear();
    };
    for t in tokens {
        if t == Token::SemiColon {
            flush(&mut current);
        } else {
            current.push(t);
        }
    }
    flush(&mut current);
    chunks
}

/// Parses statements none of which is a job statement.
fn parse_plain(sql: &str) -> Result<VecDeque<Statement>> {
    let (text, verbs) = rewrite_topic_statements(sql)?;
    let parsed = DFParser::parse_sql_with_dialect(&text, &PostgreSqlDialect {})?;
    parsed
        .into_iter()
        .enumerate()
        .map(|(i, s)| match (verbs.get(&i), s) {
            (None, s) => Ok(Statement::Sql(s)),
            (Some(TopicVerb::Create), DfStatement::Statement(s)) => match *s {
                Sql::CreateTable(ct) => Ok(Statement::CreateTopic(Box::new(ct))),
                other => Err(not_topic(&other)),
            },
            (Some(TopicVerb::Drop), DfStatement::Statement(s)) => match *s {
                Sql::Drop {
                    object_type: ObjectType::Table,
                    names,
                    if_exists,
                    ..
                } => Ok(Statement::DropTopic { names, if_exists }),
                other => Err(not_topic(&other)),
            },
            (Some(TopicVerb::Show), _) => Ok(Statement::ShowTopics),
            (Some(_), other) => Err(DataFusionError::Plan(format!(
                "not a topic statement: {other}"
            ))),
        })
        .collect()
}

fn not_topic(s: &Sql) -> DataFusionError {
    DataFusionError::Plan(format!("not a topic statement: {s}"))
}

/// `sql` with each topic statement's `TOPIC`/`TOPICS` replaced, and which statements (by index
/// among the non-empty ones) were topic statements.
fn rewrite_topic_statements(sql: &str) -> Result<(String, BTreeMap<usize, TopicVerb>)> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize_with_location() else {
        // The parser reports the tokenizer's error with its position.
        return Ok((sql.to_string(), BTreeMap::new()));
    };
    let mut text = sql.to_string();
    let mut verbs = BTreeMap::new();
    let mut index = 0usize;
    let mut words: Vec<&TokenWithSpan> = Vec::new();
    for t in &tokens {
        match &t.token {
            Token::Whitespace(_) => continue,
            Token::SemiColon => {
                if !words.is_empty() {
                    index += 1;
                }
                words.clear();
                continue;
            }
            _ => {}
        }
        words.push(t);
        if words.len() != 2 {
            continue;
        }
        let (Token::Word(first), Token::Word(second)) = (&words[0].token, &words[1].token) else {
            continue;
        };
        let verb = match (first.keyword, second.value.to_ascii_uppercase().as_str()) {
            (Keyword::CREATE, "TOPIC") => TopicVerb::Create,
            (Keyword::DROP, "TOPIC") => TopicVerb::Drop,
            (Keyword::SHOW, "TOPICS") => TopicVerb::Show,
            _ => continue,
        };
        if second.quote_style.is_some() {
            continue;
        }
        let at = byte_offset(sql, words[1].span.start.line, words[1].span.start.column)
            .ok_or_else(|| DataFusionError::Internal("token position out of range".into()))?;
        let (word, replacement) = match verb {
            TopicVerb::Show => (6, "TABLES"),
            _ => (5, "TABLE"),
        };
        text.replace_range(at..at + word, replacement);
        verbs.insert(index, verb);
    }
    Ok((text, verbs))
}

/// The byte offset of 1-based `line` and character `column` in `s`.
fn byte_offset(s: &str, line: u64, column: u64) -> Option<usize> {
    let mut start = 0usize;
    for _ in 1..line {
        start += s[start..].find('\n')? + 1;
    }
    let col = usize::try_from(column.checked_sub(1)?).ok()?;
    s[start..].char_indices().nth(col).map(|(i, _)| start + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_statements_parse_like_their_table_counterparts() {
        let sql = "SELECT 1;\n  create topic clicks (user_id BIGINT, page VARCHAR) WITH (partitions = 3, \
                   format = 'json');;\nDROP TOPIC IF EXISTS old; show topics; SELECT 'CREATE TOPIC x'";
        let s: Vec<Statement> = parse(sql).unwrap().into();
        assert_eq!(s.len(), 5, "{s:?}");
        assert!(matches!(s[0], Statement::Sql(_)));
        let Statement::CreateTopic(ct) = &s[1] else {
            panic!("{:?}", s[1])
        };
        assert_eq!(ct.name.to_string(), "clicks");
        assert_eq!(ct.columns.len(), 2);
        assert!(
            matches!(&s[2], Statement::DropTopic { if_exists: true, names } if names.len() == 1)
        );
        assert!(matches!(s[3], Statement::ShowTopics));
        let Statement::Sql(last) = &s[4] else {
            panic!("{:?}", s[4])
        };
        assert!(
            last.to_string().contains("'CREATE TOPIC x'"),
            "strings are left alone"
        );
    }

    #[test]
    fn a_syntax_error_after_a_rewrite_keeps_its_position() {
        let topic = parse("CREATE TOPIC t (a INT,\n  , b INT)")
            .unwrap_err()
            .to_string();
        let table = parse("CREATE TABLE t (a INT,\n  , b INT)")
            .unwrap_err()
            .to_string();
        assert!(topic.contains("Line: 2, Column: 3"), "{topic}");
        assert_eq!(topic, table);
    }
}
