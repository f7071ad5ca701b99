//! `weir`: the command-line tool for a Weir cluster.
//!
//! - `main`: parses arguments, starts the runtime, and turns any failure into one `error: ...` line
//!   on stderr with exit status 1 (usage errors exit with 2, as clap does).
//! - `cli`: the argument definitions and one module per command group (`cluster`, `topic`,
//!   `produce`, `consume`, `bench`), plus `output` for tables, JSON and CSV.
//!
//! The commands are thin: the routing, retries, batching and consumer groups live in the
//! `weir_client` library so that Rust programs get the same behaviour.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // Diagnostics go to stderr and stay quiet unless asked for (WEIR_LOG=debug), so stdout carries
    // only results and stderr at most the one error line.
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Folds a multi-line message onto one line, so every failure is exactly one line on stderr.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn errors_are_folded_onto_one_line() {
        assert_eq!(
            one_line("topic 'x' does not exist\n  (NOT_FOUND)\r\n"),
            "topic 'x' does not exist (NOT_FOUND)"
        );
    }
}
