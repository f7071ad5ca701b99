//! DataFusion's planning errors restated for the person who wrote the statement: a relation that
//! does not exist is named as written with the closest existing name (the planner says `table
//! 'weir.public.pagez' not found`), and a function called with arguments no signature takes loses
//! DataFusion's "internal error, please file a bug report" preamble, keeping what to do. Each
//! carries the SQLSTATE Postgres answers such an error with.

use datafusion::common::TableReference;
use datafusion::error::DataFusionError;
use weir_proto::names::does_not_exist;

use crate::cluster::ClusterError;
use crate::sqlstate::{NO_SIGNATURE, UNDEFINED_FUNCTION, UNDEFINED_TABLE};
use crate::types::sql_type_names;

/// A planning error as Weir states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restated {
    /// What went wrong, and what to do about it.
    pub message: String,
    /// The SQLSTATE Postgres gives the same error.
    pub sqlstate: &'static str,
}

/// `message` (an error's text, with or without DataFusion's prefixes) restated, or `None` when it
/// is not one this module words better; `names` lists the relations that exist.
pub fn restate(message: &str, names: impl FnOnce() -> Vec<String>) -> Option<Restated> {
    if let Some(at) = message.find(NO_SIGNATURE) {
        return Some(Restated {
            message: sql_type_names(&message[at..]),
            sqlstate: UNDEFINED_FUNCTION,
        });
    }
    let (_, rest) = message.split_once("table '")?;
    let (reference, _) = rest.split_once("' not found")?;
    let name = TableReference::parse_str(reference).table().to_string();
    let names = names();
    Some(Restated {
        message: does_not_exist("table or topic", &name, names.iter().map(String::as_str)),
        sqlstate: UNDEFINED_TABLE,
    })
}

/// `e` restated when [`restate`] words it better, else `e` itself: a missing relation becomes the
/// cluster's "not found" (as the catalog reports it), a signature mismatch a planning error.
pub fn restate_error(e: DataFusionError, names: impl FnOnce() -> Vec<String>) -> DataFusionError {
    let restated = match e.find_root() {
        DataFusionError::Plan(msg) | DataFusionError::Internal(msg) => restate(msg, names),
        _ => None,
    };
    match restated {
        Some(r) if r.sqlstate == UNDEFINED_TABLE => {
            DataFusionError::External(Box::new(ClusterError::NotFound(r.message)))
        }
        Some(r) => DataFusionError::Plan(r.message),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["pages".into(), "clicks".into(), "clicks.dlq".into()]
    }

    #[test]
    fn missing_relations_name_the_closest_and_signatures_drop_the_preamble() {
        let r = restate("table 'weir.public.pagez' not found", names).unwrap();
        assert_eq!(
            r.message,
            "table or topic 'pagez' does not exist; did you mean 'pages'?"
        );
        assert_eq!(r.sqlstate, UNDEFINED_TABLE);
        let r = restate(
            "Error during planning: table 'weir.public.\"clicks_dlq\"' not found",
            names,
        )
        .unwrap();
        assert!(r.message.ends_with("did you mean 'clicks.dlq'?"), "{r:?}");
        let r = restate("table 'weir.public.zzz' not found", names).unwrap();
        assert_eq!(r.message, "table or topic 'zzz' does not exist");

        let sum = "Internal error: Function 'sum' failed to match any signature, errors: .... \
                   This issue was likely caused by a bug in DataFusion's code. Please help us to \
                   resolve this by filing a bug report. No function matches the given name and \
                   argument types 'sum(Utf8)'. You might need to add explicit type casts.";
        let r = restate(sum, names).unwrap();
        assert!(r.message.starts_with(NO_SIGNATURE), "{r:?}");
        assert!(!r.message.contains("bug"), "{r:?}");
        assert_eq!(r.sqlstate, UNDEFINED_FUNCTION);

        assert_eq!(restate("Divide by zero error", names), None);
        let e = restate_error(
            DataFusionError::Plan("table 'weir.public.pagez' not found".into()),
            names,
        );
        assert_eq!(
            crate::sqlstate::message(&e),
            "table or topic 'pagez' does not exist; did you mean 'pages'?"
        );
        assert_eq!(crate::sqlstate::of(&e), UNDEFINED_TABLE);
        let e = restate_error(DataFusionError::Execution("other".into()), names);
        assert_eq!(e.to_string(), "Execution error: other");
    }
}
