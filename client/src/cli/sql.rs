//! `weir sql`: one statement, a file of statements, or an interactive shell.

use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use arrow::array::Array;
use arrow::json::writer::{JsonArray, WriterBuilder};
use arrow::record_batch::RecordBatch;
use arrow::util::display::array_value_to_string;
use rustyline::error::ReadlineError;
use weir_client::{Client, SqlEvent, SqlSession};

use super::output::{print_rows, Format, Rows};
use super::{Context, SqlArgs};

/// Runs `weir sql`.
pub async fn run(ctx: &Context, args: SqlArgs) -> Result<()> {
    let client = ctx.client().await?;
    let script = match (&args.statement, &args.file) {
        (Some(s), None) => Some(s.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        (Some(_), Some(_)) => anyhow::bail!("give a statement or --file, not both"),
        (None, None) if !std::io::stdin().is_terminal() => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read statements from stdin")?;
            Some(s)
        }
        (None, None) => None,
    };
    match script {
        Some(sql) => execute(&client, ctx.format, &sql, false, &mut session(args.timeout)).await,
        None => shell(&client, ctx.format, &mut session(args.timeout)).await,
    }
}

/// Runs `weir job ...` as the job statement it stands for.
pub async fn job(ctx: &Context, cmd: super::JobCommand) -> Result<()> {
    use super::JobCommand;
    let quoted = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    let sql = match cmd {
        JobCommand::List => "SHOW JOBS".to_string(),
        JobCommand::Describe { name } => format!("DESCRIBE JOB {}", quoted(&name)),
        JobCommand::Stop { name } => format!("STOP JOB {}", quoted(&name)),
        JobCommand::Start { name } => format!("START JOB {}", quoted(&name)),
        JobCommand::Drop { name } => format!("DROP JOB {}", quoted(&name)),
    };
    let client = ctx.client().await?;
    execute(&client, ctx.format, &sql, false, &mut SqlSession::default()).await
}

/// Runs `weir schedule ...` as the schedule statement it stands for.
pub async fn schedule(ctx: &Context, cmd: super::ScheduleCommand) -> Result<()> {
    use super::ScheduleCommand;
    let quoted = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    let sql = match cmd {
        ScheduleCommand::List => "SHOW SCHEDULES".to_string(),
        ScheduleCommand::Runs { name: None } => "SHOW RUNS".to_string(),
        ScheduleCommand::Runs { name: Some(name) } => format!("SHOW RUNS FOR {}", quoted(&name)),
        ScheduleCommand::Pause { name } => format!("ALTER SCHEDULE {} PAUSE", quoted(&name)),
        ScheduleCommand::Resume { name } => format!("ALTER SCHEDULE {} RESUME", quoted(&name)),
        ScheduleCommand::RunNow { name } => format!("RUN SCHEDULE {}", quoted(&name)),
        ScheduleCommand::Drop { name } => format!("DROP SCHEDULE {}", quoted(&name)),
    };
    let client = ctx.client().await?;
    execute(&client, ctx.format, &sql, false, &mut SqlSession::default()).await
}

/// A session whose statements may each run for `timeout` (none: the node's default).
fn session(timeout: Option<Duration>) -> SqlSession {
    SqlSession {
        timeout,
        ..SqlSession::default()
    }
}

/// Rows of a statement's batches as printable cells: for JSON, JSON values (numbers stay
/// numbers); for tables and CSV, Arrow's own rendering (decimals keep their scale).
fn to_rows(
    format: Format,
    schema: &arrow::datatypes::Schema,
    batches: &[RecordBatch],
) -> Result<Rows> {
    let mut rows = Rows::new(schema.fields().iter().map(|f| f.name().clone()).collect());
    for batch in batches {
        if format != Format::Json {
            for r in 0..batch.num_rows() {
                let row = batch
                    .columns()
                    .iter()
                    .map(|a| {
                        if a.is_null(r) {
                            Ok(serde_json::Value::Null)
                        } else {
                            Ok(serde_json::Value::String(array_value_to_string(a, r)?))
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                rows.push(row);
            }
            continue;
        }
        // Keyed by position while rendered: a result may name two columns alike.
        let positional = Arc::new(arrow::datatypes::Schema::new(
            batch
                .schema()
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| f.as_ref().clone().with_name(i.to_string()))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new_with_options(
            positional,
            batch.columns().to_vec(),
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?;
        let mut buf = Vec::new();
        let mut w = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, JsonArray>(&mut buf);
        w.write(&batch)?;
        w.finish()?;
        drop(w);
        let objects: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_slice(&buf).context("rendering a result")?;
        for mut o in objects {
            rows.push(
                (0..rows.columns.len())
                    .map(|i| o.remove(&i.to_string()).unwrap_or(serde_json::Value::Null))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// Sends `sql` in `session` and prints each statement's result as it finishes (keeping the
/// settings its `SET`s leave); with `timing`, a line with the row count and time after each (the
/// shell's summary).
async fn execute(
    client: &Client,
    format: Format,
    sql: &str,
    timing: bool,
    session: &mut SqlSession,
) -> Result<()> {
    let started = Instant::now();
    let mut stream = client.sql_in(sql, session).await?;
    let mut schema = None;
    let mut batches = Vec::new();
    let mut out = std::io::stdout().lock();
    while let Some(event) = stream.next().await? {
        match event {
            SqlEvent::Schema { schema: s, .. } => schema = Some(s),
            SqlEvent::Batch { batch, .. } => {
                schema.get_or_insert_with(|| batch.schema());
                batches.push(batch);
            }
            SqlEvent::Done {
                tag,
                rows,
                warnings,
                settings,
                ..
            } => {
                session.settings = settings;
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                if let Some(s) = schema.take() {
                    print_rows(format, &to_rows(format, &s, &batches)?, &mut out)?;
                } else if format == Format::Table || timing {
                    writeln!(out, "{tag}")?;
                }
                batches.clear();
                if timing {
                    let noun = if rows == 1 { "row" } else { "rows" };
                    writeln!(
                        out,
                        "{rows} {noun} in {:.3} s",
                        started.elapsed().as_secs_f64()
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// The interactive shell: statements end with `;` and may span lines; history is kept in
/// `~/.weir_sql_history`.
async fn shell(client: &Client, format: Format, session: &mut SqlSession) -> Result<()> {
    let mut editor = rustyline::DefaultEditor::new().context("cannot start the line editor")?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".weir_sql_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "weir sql on {} — end statements with ';', Ctrl-D to quit",
        client.seed()
    );
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() {
            "weir> "
        } else {
            "   -> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if !pending.is_empty() {
                    pending.push('\n');
                }
                pending.push_str(&line);
                if !pending.trim_end().ends_with(';') {
                    continue;
                }
                let sql = std::mem::take(&mut pending);
                let _ = editor.add_history_entry(sql.as_str());
                // Ctrl-C stops the statement (dropping its stream cancels it on the node) and
                // leaves the shell open, as psql does.
                tokio::select! {
                    done = execute(client, format, &sql, true, session) => {
                        if let Err(e) = done {
                            eprintln!("error: {e:#}");
                        }
                    }
                    _ = tokio::signal::ctrl_c() => eprintln!("cancelled"),
                }
            }
            Err(ReadlineError::Interrupted) => pending.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}
