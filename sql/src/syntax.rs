//! What the parsers of Weir's own statements (jobs, schedules) share: syntax errors reported as
//! DataFusion reports its own, and the check that nothing follows a statement.

use datafusion::error::{DataFusionError, Result};
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

/// A syntax error with this message (a parser error passed on keeps its words, not its prefix
/// twice).
pub fn syntax(e: impl std::fmt::Display) -> DataFusionError {
    let text = e.to_string();
    let text = text.strip_prefix("sql parser error: ").unwrap_or(&text);
    DataFusionError::SQL(Box::new(ParserError::ParserError(text.to_string())), None)
}

/// Fails when anything but the end of the input follows the `what` statement just parsed.
pub fn expect_end(p: &Parser, what: &str) -> Result<()> {
    match p.peek_token().token {
        Token::EOF => Ok(()),
        t => Err(syntax(format!("unexpected {t} after the {what} statement"))),
    }
}
