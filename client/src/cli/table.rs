//! `weir table create | list | describe | drop`.

use anyhow::{Context as _, Result};
use serde_json::Value as J;
use weir_client::table::TableInfo;
use weir_client::TableSchema;

use super::output::{print_rows, print_summary, Rows};
use super::{Context, TableCommand};

/// Runs one `weir table` subcommand.
pub async fn run(ctx: &Context, cmd: TableCommand) -> Result<()> {
    let client = ctx.client().await?;
    let mut out = std::io::stdout();
    match cmd {
        TableCommand::Create(args) => {
            let pk = super::split_names(&args.primary_key);
            let schema = TableSchema::parse(&args.schema, &pk)
                .context("invalid --schema / --primary-key")?;
            let points = args
                .split_at
                .iter()
                .map(|k| super::kv::parse_key(&schema, k, true))
                .collect::<Result<Vec<_>>>()?;
            let info = client
                .create_table_split_at(
                    &args.name,
                    &schema,
                    args.replicas,
                    args.split_bytes,
                    &points,
                )
                .await?;
            let sentence = format!(
                "created table {} ({}) with primary key ({}), {} replica(s), {} region(s)",
                info.name,
                schema.to_sql(),
                info.primary_key.join(", "),
                info.replicas,
                info.regions.len()
            );
            print_summary(ctx.format, &sentence, &table_fields(&info), &mut out)
        }
        TableCommand::List => {
            let mut tables = client.list_tables().await?;
            tables.sort_by(|a, b| a.name.cmp(&b.name));
            let mut rows = Rows::new(vec![
                "name",
                "columns",
                "primary_key",
                "replicas",
                "regions",
                "approx_bytes",
            ]);
            for t in &tables {
                rows.push(table_fields(t).into_iter().map(|(_, v)| v).collect());
            }
            print_rows(ctx.format, &rows, &mut out)
        }
        TableCommand::Describe { name } => {
            let info = client.describe_table(&name).await?;
            let mut cols = Rows::new(vec!["column", "type", "nullable", "key"]);
            for c in &info.columns {
                cols.push(vec![
                    J::from(c.name.clone()),
                    J::from(c.r#type.clone()),
                    J::from(c.nullable),
                    info.primary_key
                        .iter()
                        .position(|k| k == &c.name)
                        .map(|i| J::from(i + 1))
                        .unwrap_or(J::Null),
                ]);
            }
            let schema = weir_client::table::schema_of(&info)?;
            let mut regions = Rows::new(vec![
                "region",
                "start",
                "end",
                "epoch",
                "leader",
                "replicas",
                "approx_bytes",
            ]);
            for r in &info.regions {
                regions.push(vec![
                    J::from(r.id),
                    J::from(render_bound(&schema, &r.start_key, "-inf")),
                    J::from(render_bound(&schema, &r.end_key, "+inf")),
                    J::from(r.epoch),
                    if r.leader == 0 {
                        J::Null
                    } else {
                        J::from(r.leader)
                    },
                    J::from(r.replicas.clone()),
                    J::from(r.approx_bytes),
                ]);
            }
            if ctx.format == super::output::Format::Json {
                let obj = serde_json::json!({
                    "name": info.name,
                    "replicas": info.replicas,
                    "split_bytes": info.split_bytes,
                    "columns": cols.rows.iter().map(|r| super::output::object(&cols.columns, r)).collect::<Vec<_>>(),
                    "regions": regions.rows.iter().map(|r| super::output::object(&regions.columns, r)).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&obj)?);
                return Ok(());
            }
            print_rows(ctx.format, &cols, &mut out)?;
            print_rows(ctx.format, &regions, &mut out)
        }
        TableCommand::Drop { name } => {
            client.drop_table(&name).await?;
            print_summary(
                ctx.format,
                &format!("dropped table {name}"),
                &[("dropped", J::from(name.clone()))],
                &mut out,
            )
        }
    }
}

/// A region bound as key values when it decodes as a full or partial key, else hex.
fn render_bound(schema: &TableSchema, bound: &[u8], empty: &str) -> String {
    if bound.is_empty() {
        return empty.to_string();
    }
    match weir_client::table::decode_bound(schema, bound) {
        Some(text) => text,
        None => bound.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn table_fields(t: &TableInfo) -> Vec<(&'static str, J)> {
    vec![
        ("name", J::from(t.name.clone())),
        (
            "columns",
            J::from(
                t.columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.r#type))
                    .collect::<Vec<_>>(),
            ),
        ),
        ("primary_key", J::from(t.primary_key.clone())),
        ("replicas", J::from(t.replicas)),
        ("regions", J::from(t.regions.len())),
        (
            "approx_bytes",
            J::from(t.regions.iter().map(|r| r.approx_bytes).sum::<u64>()),
        ),
    ]
}
