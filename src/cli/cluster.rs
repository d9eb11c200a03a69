//! `gale cluster supervisors`: the live supervisors, read from ZooKeeper.

use std::path::Path;
use std::time::Duration;

use super::{CliError, client_runtime, connect, load_config, read_all};
use crate::lifecycle::ExitCode;
use crate::model::SupervisorInfo;

pub(crate) fn supervisors(config_path: &Path, json: bool) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    client_runtime()?.block_on(async {
        let client = connect(&config).await?;
        let dir = config.zk_path("/supervisors");
        // A node can vanish between list and get: that supervisor just left.
        let rows: Vec<_> = read_all(&client, &dir)
            .await?
            .into_iter()
            .map(|(_, path, data)| {
                let info = SupervisorInfo::decode(&path, &data);
                (path, info)
            })
            .collect();
        client.close(Duration::from_secs(2)).await;
        if json {
            let list: Vec<serde_json::Value> = rows
                .iter()
                .map(|(path, r)| match r {
                    Ok(info) => serde_json::to_value(info).expect("serializable"),
                    Err(e) => serde_json::json!({ "path": path, "error": e.to_string() }),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list).expect("serializable"));
        } else {
            print_table(&rows);
        }
        Ok(ExitCode::Clean)
    })
}

fn print_table(rows: &[(String, Result<SupervisorInfo, crate::model::PayloadError>)]) {
    println!("{:<38} {:<20} {:>5} {:<10} {:<9}", "ID", "HOST", "SLOTS", "STATE", "HEALTH");
    for (_, row) in rows {
        match row {
            Ok(i) => println!(
                "{:<38} {:<20} {:>5} {:<10} {:<9}",
                i.id,
                i.hostname,
                format!("{}/{}", i.used_slots.len(), i.slots.len()),
                i.state.as_str(),
                serde_json::to_value(i.health).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            ),
            Err(e) => println!("(unreadable) {e}"),
        }
    }
    if rows.is_empty() {
        println!("(no live supervisors)");
    }
}
