//! `weir topic create | list | describe | delete`.

use anyhow::Result;
use serde_json::Value;
use weir_client::{NewTopic, TopicInfo};

use super::output::{print_rows, print_summary, Rows};
use super::{Context, TopicCommand};

/// Runs one `weir topic` subcommand.
pub async fn run(ctx: &Context, cmd: TopicCommand) -> Result<()> {
    let client = ctx.client().await?;
    let mut out = std::io::stdout();
    match cmd {
        TopicCommand::Create(args) => {
            let mut spec = NewTopic::new(&args.name, args.partitions, args.replicas);
            spec.retention_ms = args.retention_ms;
            spec.retention_bytes = args.retention_bytes;
            let info = client.create_topic(&spec).await?;
            let sentence = format!(
                "created topic {} with {} partitions and {} replicas",
                info.name, info.partitions, info.replicas
            );
            print_summary(ctx.format, &sentence, &topic_fields(&info), &mut out)
        }
        TopicCommand::List => {
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            let mut rows = Rows::new(vec![
                "name",
                "partitions",
                "replicas",
                "retention_ms",
                "retention_bytes",
            ]);
            for t in &topics {
                rows.push(topic_fields(t).into_iter().map(|(_, v)| v).collect());
            }
            print_rows(ctx.format, &rows, &mut out)
        }
        TopicCommand::Describe { name } => {
            let info = client.describe_topic(&name).await?;
            let mut rows = Rows::new(vec![
                "partition",
                "leader",
                "replicas",
                "earliest",
                "latest",
                "leader_address",
                "voters",
                "max_lag",
            ]);
            let mut parts = info.partition_info.clone();
            parts.sort_by_key(|p| p.partition);
            for p in &parts {
                rows.push(vec![
                    Value::from(p.partition),
                    // Node ids start at 1; 0 means no leader is known (e.g. during an election).
                    if p.leader == 0 {
                        Value::Null
                    } else {
                        Value::from(p.leader)
                    },
                    Value::from(p.replicas.clone()),
                    Value::from(p.earliest_offset),
                    Value::from(p.latest_offset),
                    if p.leader_addr.is_empty() {
                        Value::Null
                    } else {
                        Value::from(p.leader_addr.clone())
                    },
                    // Differs from `replicas` while a replica is being moved.
                    Value::from(p.voters.clone()),
                    Value::from(p.max_lag),
                ]);
            }
            print_rows(ctx.format, &rows, &mut out)
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            print_summary(
                ctx.format,
                &format!("deleted topic {name}"),
                &[("deleted", Value::from(name.clone()))],
                &mut out,
            )
        }
    }
}

/// A topic's configuration as named fields; unlimited retention shows as null.
fn topic_fields(t: &TopicInfo) -> Vec<(&'static str, Value)> {
    let limit = |v: u64| if v == 0 { Value::Null } else { Value::from(v) };
    vec![
        ("name", Value::from(t.name.clone())),
        ("partitions", Value::from(t.partitions)),
        ("replicas", Value::from(t.replicas)),
        ("retention_ms", limit(t.retention_ms)),
        ("retention_bytes", limit(t.retention_bytes)),
    ]
}
