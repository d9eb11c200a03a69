//! `gale cluster supervisors`: the live supervisors, read from ZooKeeper.

use std::path::Path;
use std::time::Duration;

use super::{CliError, client_runtime, load_config};
use crate::cluster::model::SupervisorInfo;
use crate::cluster::zk::{self, ConnectOptions};
use crate::lifecycle::ExitCode;

pub fn supervisors(config_path: &Path, json: bool) -> Result<ExitCode, CliError> {
    let config = load_config(config_path)?;
    let failure = |e: String| CliError::new(ExitCode::Failure, e);
    client_runtime()?.block_on(async {
        let opts = ConnectOptions::from_config(&config).map_err(|e| CliError::new(ExitCode::Config, e.to_string()))?;
        let client = zk::connect_once(&opts).await.map_err(|e| failure(e.to_string()))?;
        let dir = config.zk_path("/supervisors");
        let mut rows = Vec::new();
        for child in client.children(&dir).await.map_err(|e| failure(e.to_string()))? {
            let path = format!("{dir}/{child}");
            // A node can vanish between list and get: that supervisor just left.
            if let Some((data, _)) = client.get(&path).await.map_err(|e| failure(e.to_string()))? {
                rows.push((path.clone(), SupervisorInfo::decode(&path, &data)));
            }
        }
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

fn print_table(rows: &[(String, Result<SupervisorInfo, crate::cluster::model::PayloadError>)]) {
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
