//! What a failed statement tells a Postgres client: its message, and the SQLSTATE Postgres gives
//! the same error, so drivers and tools that branch on codes (an "undefined table" check, a retry
//! after `57014`) treat Weir's errors as they treat Postgres's.

use datafusion::arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;

use crate::cluster::ClusterError;
use crate::types::{sql_type_names, RowError};
use weir_proto::table::TableError;

/// A relation (table, topic) that does not exist.
pub const UNDEFINED_TABLE: &str = "42P01";
/// Another named object (a job, a schedule, a node) that does not exist.
pub const UNDEFINED_OBJECT: &str = "42704";
/// A column that does not exist.
pub const UNDEFINED_COLUMN: &str = "42703";
/// A function that does not take the arguments given.
pub const UNDEFINED_FUNCTION: &str = "42883";
/// A column name that could mean more than one column.
pub const AMBIGUOUS_COLUMN: &str = "42702";
/// A column named twice.
pub const DUPLICATE_COLUMN: &str = "42701";
/// A relation whose name is taken.
pub const DUPLICATE_TABLE: &str = "42P07";
/// Another named object whose name is taken.
pub const DUPLICATE_OBJECT: &str = "42710";
/// Text that is not SQL.
pub const SYNTAX_ERROR: &str = "42601";
/// A statement that is SQL but cannot be planned as written.
pub const PLANNING_ERROR: &str = "42000";
/// A request with a value that is not allowed (a bad option, a name out of bounds).
pub const INVALID_PARAMETER_VALUE: &str = "22023";
/// A value that does not convert to the type asked for.
pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
/// Division by zero.
pub const DIVISION_BY_ZERO: &str = "22012";
/// A value out of its type's range.
pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
/// A NULL written to a column that does not take it.
pub const NOT_NULL_VIOLATION: &str = "23502";
/// Data a statement met that it cannot work with.
pub const DATA_EXCEPTION: &str = "22000";
/// Something Weir does not do (yet).
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// A statement that needs more memory than it may have.
pub const OUT_OF_MEMORY: &str = "53200";
/// A statement cancelled by its client or stopped at its timeout.
pub const QUERY_CANCELED: &str = "57014";
/// The cluster could not serve the statement now (no leader, a node down); retrying may work.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// Anything else.
pub const INTERNAL_ERROR: &str = "XX000";

/// The text DataFusion ends a failed function-signature match with.
pub(crate) const NO_SIGNATURE: &str = "No function matches the given name and argument types";

/// The error a client is told about: the innermost one, where the cause is.
fn root(e: &DataFusionError) -> &DataFusionError {
    e.find_root()
}

/// The text a client is shown for `e`: the cluster's own wording for what the cluster refused,
/// else DataFusion's (which names the line and column of a syntax error and the unknown column)
/// without its class prefix (`Error during planning: `, `Arrow error: Cast error: `; as in
/// Postgres, the SQLSTATE says the class) and with its types named as SQL names them.
pub fn message(e: &DataFusionError) -> String {
    if let Some(c) = ClusterError::carried(e) {
        return c.to_string();
    }
    let e = root(e);
    let text = match e {
        DataFusionError::External(inner) => {
            if let Some(r) = inner.downcast_ref::<RowError>() {
                return sql_type_names(&r.to_string());
            }
            if let Some(status) = inner.downcast_ref::<tonic::Status>() {
                return unreachable_node(status);
            }
            inner.to_string()
        }
        // The parser's own words ("sql parser error: Expected: ... at Line: 1, Column: 8"), not
        // DataFusion's debug form of them.
        DataFusionError::SQL(parser, _) => return parser.to_string(),
        DataFusionError::Plan(m)
        | DataFusionError::Execution(m)
        | DataFusionError::Configuration(m) => m.clone(),
        DataFusionError::SchemaError(s, _) => s.to_string(),
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            ArrowError::CastError(m) => m.clone(),
            ArrowError::DivideByZero => "division by zero".into(),
            other => other.to_string(),
        },
        _ => e.strip_backtrace(),
    };
    sql_type_names(&text)
}

/// What a client is told when a node running part of a query (a task sent to it) could not be
/// reached or went away: the transport's words, down to the cause.
fn unreachable_node(status: &tonic::Status) -> String {
    let mut cause = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let text = s.to_string();
        if !cause.contains(&text) {
            cause = format!("{cause}: {text}");
        }
        source = s.source();
    }
    format!("a node running part of this query cannot be reached now ({cause}); retry")
}

/// The SQLSTATE Postgres answers an error like `e` with.
pub fn of(e: &DataFusionError) -> &'static str {
    if let Some(c) = ClusterError::carried(e) {
        return match c {
            ClusterError::NotFound(m) if names_relation(&m) => UNDEFINED_TABLE,
            ClusterError::NotFound(_) => UNDEFINED_OBJECT,
            ClusterError::AlreadyExists(m) if names_relation(&m) => DUPLICATE_TABLE,
            ClusterError::AlreadyExists(_) => DUPLICATE_OBJECT,
            ClusterError::Invalid(_) => INVALID_PARAMETER_VALUE,
            ClusterError::Unavailable(_) => CANNOT_CONNECT_NOW,
        };
    }
    match root(e) {
        DataFusionError::External(inner) => match (
            inner.downcast_ref::<RowError>(),
            inner.downcast_ref::<ArrowError>(),
            inner.downcast_ref::<tonic::Status>(),
        ) {
            (Some(r), _, _) => match r.error {
                TableError::Null { .. } => NOT_NULL_VIOLATION,
                _ => DATA_EXCEPTION,
            },
            (None, Some(a), _) => of_arrow(a),
            (None, None, Some(s)) => match s.code() {
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => QUERY_CANCELED,
                _ => CANNOT_CONNECT_NOW,
            },
            (None, None, None) => INTERNAL_ERROR,
        },
        DataFusionError::SQL(..) => SYNTAX_ERROR,
        DataFusionError::Plan(m) if m.starts_with(NO_SIGNATURE) => UNDEFINED_FUNCTION,
        DataFusionError::Plan(_) => PLANNING_ERROR,
        DataFusionError::SchemaError(s, _) => match s.as_ref() {
            SchemaError::FieldNotFound { .. } => UNDEFINED_COLUMN,
            SchemaError::AmbiguousReference { .. } => AMBIGUOUS_COLUMN,
            SchemaError::DuplicateQualifiedField { .. }
            | SchemaError::DuplicateUnqualifiedField { .. } => DUPLICATE_COLUMN,
        },
        DataFusionError::ArrowError(a, _) => of_arrow(a),
        DataFusionError::Execution(_) => DATA_EXCEPTION,
        DataFusionError::NotImplemented(_) => FEATURE_NOT_SUPPORTED,
        DataFusionError::Configuration(_) => INVALID_PARAMETER_VALUE,
        DataFusionError::ResourcesExhausted(_) => OUT_OF_MEMORY,
        _ => INTERNAL_ERROR,
    }
}

/// Whether a refusal's message is about a table or topic: the catalog and the engine name what
/// they refer to before its quoted name (`table 'x' ...`, `table or topic 'x' ...`, `a topic
/// named 'x' ...`; `job 'x' ...`, `schedule 'x' ...`).
fn names_relation(message: &str) -> bool {
    let head = message.split('\'').next().unwrap_or("");
    head.contains("table") || head.contains("topic")
}

/// The SQLSTATE of an Arrow kernel's error.
fn of_arrow(e: &ArrowError) -> &'static str {
    match e {
        ArrowError::DivideByZero => DIVISION_BY_ZERO,
        ArrowError::ArithmeticOverflow(_) => NUMERIC_VALUE_OUT_OF_RANGE,
        ArrowError::CastError(_) | ArrowError::ParseError(_) => INVALID_TEXT_REPRESENTATION,
        ArrowError::NotYetImplemented(_) => FEATURE_NOT_SUPPORTED,
        ArrowError::MemoryError(_) => OUT_OF_MEMORY,
        ArrowError::ComputeError(_) | ArrowError::InvalidArgumentError(_) => DATA_EXCEPTION,
        _ => INTERNAL_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::Column;

    fn cluster(e: ClusterError) -> DataFusionError {
        DataFusionError::External(Box::new(e))
    }

    #[test]
    fn a_cluster_error_raised_by_a_task_on_another_node_keeps_its_code() {
        // What datafusion-distributed rebuilds from a remote task's error: the context's text,
        // and an external error's text alone.
        #[derive(Debug)]
        struct Text(String);
        impl std::fmt::Display for Text {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for Text {}
        let raised = ClusterError::Unavailable("region 7 has no leader".into()).into_task_error();
        let DataFusionError::Context(tag, _) = &raised else {
            panic!("{raised:?}");
        };
        let arrived = DataFusionError::Context(
            tag.clone(),
            Box::new(DataFusionError::External(Box::new(Text(
                "region 7 has no leader".into(),
            )))),
        );
        for e in [raised, arrived] {
            assert_eq!(of(&e), CANNOT_CONNECT_NOW, "{e:?}");
            assert_eq!(message(&e), "region 7 has no leader");
        }
    }

    #[test]
    fn rows_a_table_refuses_are_told_apart() {
        let row = |error| DataFusionError::External(Box::new(RowError { row: 3, error }));
        let null = row(TableError::Null {
            column: "id".into(),
        });
        assert_eq!(of(&null), NOT_NULL_VIOLATION);
        assert_eq!(message(&null), "row 3: column 'id': NULL is not allowed");
        let range = row(TableError::Value {
            column: "n".into(),
            reason: "300 is out of range for Int8".into(),
        });
        assert_eq!(of(&range), DATA_EXCEPTION);
        assert!(message(&range).starts_with("row 3: column 'n': 300"));
    }

    #[test]
    fn refusals_of_the_cluster_carry_postgres_codes_and_their_own_words() {
        let missing = cluster(ClusterError::NotFound(
            "table 'pagez' does not exist; did you mean 'pages'?".into(),
        ));
        assert_eq!(of(&missing), UNDEFINED_TABLE);
        assert_eq!(
            message(&missing),
            "table 'pagez' does not exist; did you mean 'pages'?"
        );
        let job = cluster(ClusterError::NotFound("job 'trnd' does not exist".into()));
        assert_eq!(of(&job), UNDEFINED_OBJECT);
        let taken = cluster(ClusterError::AlreadyExists(
            "topic 'clicks' already exists".into(),
        ));
        assert_eq!(of(&taken), DUPLICATE_TABLE);
        let schedule = cluster(ClusterError::AlreadyExists(
            "schedule 'nightly' already exists".into(),
        ));
        assert_eq!(of(&schedule), DUPLICATE_OBJECT);
        let down = cluster(ClusterError::Unavailable("no leader".into()));
        assert_eq!(of(&down), CANNOT_CONNECT_NOW);
        // Wrapped in context, the cause still decides.
        let wrapped = DataFusionError::Context("dropping".into(), Box::new(job));
        assert_eq!(of(&wrapped), UNDEFINED_OBJECT);
        assert_eq!(message(&wrapped), "job 'trnd' does not exist");
    }

    #[test]
    fn planner_and_kernel_errors_carry_postgres_codes() {
        let unknown = DataFusionError::SchemaError(
            Box::new(SchemaError::FieldNotFound {
                field: Box::new(Column::from_name("x")),
                valid_fields: vec![],
            }),
            Box::new(None),
        );
        assert_eq!(of(&unknown), UNDEFINED_COLUMN);
        assert_eq!(message(&unknown), "No field named x.");
        let zero = DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None);
        assert_eq!(of(&zero), DIVISION_BY_ZERO);
        assert_eq!(message(&zero), "division by zero");
        let cast = DataFusionError::ArrowError(
            Box::new(ArrowError::CastError(
                "Cannot cast string 'x' to Int64".into(),
            )),
            None,
        );
        assert_eq!(of(&cast), INVALID_TEXT_REPRESENTATION);
        assert_eq!(message(&cast), "Cannot cast string 'x' to BIGINT");
        assert_eq!(of(&DataFusionError::Plan("no".into())), PLANNING_ERROR);
        let syntax = DataFusionError::SQL(
            Box::new(
                datafusion::sql::sqlparser::parser::ParserError::ParserError(
                    "Expected: an SQL statement, found: SELEC at Line: 1, Column: 1".into(),
                ),
            ),
            None,
        );
        assert_eq!(of(&syntax), SYNTAX_ERROR);
        assert_eq!(
            message(&syntax),
            "sql parser error: Expected: an SQL statement, found: SELEC at Line: 1, Column: 1"
        );
        let signature = DataFusionError::Plan(format!("{} 'sum(Utf8)'", NO_SIGNATURE));
        assert_eq!(of(&signature), UNDEFINED_FUNCTION);
        assert_eq!(
            of(&DataFusionError::ResourcesExhausted("pool".into())),
            OUT_OF_MEMORY
        );
        assert_eq!(of(&DataFusionError::Internal("bug".into())), INTERNAL_ERROR);
    }
}
