//! `weir cluster status`: who is in the cluster and what each node carries.

use std::io::Write;

use anyhow::Result;
use serde_json::Value;

use super::output::{print_rows, Format, Rows};
use super::Context;

/// Prints one row per member: id, address, state, groups held and led, metadata role.
pub async fn status(ctx: &Context) -> Result<()> {
    let client = ctx.client().await?;
    let status = client.cluster_status().await?;
    let mut rows = Rows::new(vec![
        "id",
        "address",
        "state",
        "groups_held",
        "groups_led",
        "metadata_role",
        "metadata_leader",
        "http_address",
    ]);
    let mut members = status.members;
    members.sort_by_key(|m| m.id);
    for m in &members {
        rows.push(vec![
            Value::from(m.id),
            Value::from(m.addr.clone()),
            Value::from(m.state.clone()),
            Value::from(m.groups_held),
            Value::from(m.groups_led),
            Value::from(m.metadata_role.clone()),
            Value::from(m.id == status.metadata_leader),
            Value::from(m.http_addr.clone()),
        ]);
    }
    let mut out = std::io::stdout();
    print_rows(ctx.format, &rows, &mut out)?;
    if ctx.format == Format::Table && members.is_empty() {
        writeln!(out, "no members reported")?;
    }
    Ok(())
}
