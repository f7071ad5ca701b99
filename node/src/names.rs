//! The naming rules shared by topics and tables.

use weir_storage::catalog::INTERNAL_PREFIX;

use crate::error::{NodeError, NodeResult};

/// Checks the name of a topic or table (`what`): 1 to 249 letters, digits, `.`, `_` or `-`, not
/// `.` or `..`, and not starting with the reserved internal prefix (Kafka's topic rules).
pub fn validate(what: &str, name: &str) -> NodeResult<()> {
    if name.is_empty() || name.len() > 249 {
        return Err(NodeError::InvalidArgument(format!(
            "{what} name must be 1 to 249 characters"
        )));
    }
    if name == "." || name == ".." {
        return Err(NodeError::InvalidArgument(format!(
            "'{name}' is not a valid {what} name"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NodeError::InvalidArgument(format!(
            "{what} name '{name}' contains '{c}'; use letters, digits, '.', '_' and '-'"
        )));
    }
    if name.starts_with(INTERNAL_PREFIX) {
        return Err(NodeError::InvalidArgument(format!(
            "{what} names starting with '{INTERNAL_PREFIX}' are reserved"
        )));
    }
    Ok(())
}
