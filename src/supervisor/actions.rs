//! ZooKeeper Actions (SPEC §3.4): operations a scheduler or an operator elsewhere asks of this
//! agent by creating a node under `<root>/actions/<supervisor-id>/`.
//!
//! Runs on the `sync-supervisor` queue, when the persistent watch on that directory fires and
//! on every full sync. Each node is read, applied through the same path as the control socket
//! (the executor answers), then deleted. An invalid or unknown action is reported (log,
//! metric) and deleted. Applied-then-deleted: if the delete fails, the node is remembered
//! in memory so the same node is never applied twice by this process. (A crash between
//! applying and deleting applies it again after the restart: at-least-once across crashes.)

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::admin::control::{Operation, Reply, Request, submit};
use crate::admin::metrics;
use crate::cluster::model;
use crate::cluster::zk::{ZkClient, ZkError};

/// The payload (SPEC §3.4).
#[derive(Debug, Deserialize)]
struct Action {
    action: String,
    port: Option<u16>,
    signal: Option<String>,
}

/// The action payload as an operation, or what is wrong with it.
fn operation(path: &str, data: &[u8]) -> Result<Operation, String> {
    let action: Action = model::decode(path, data).map_err(|e| e.to_string())?;
    let port = || action.port.ok_or_else(|| format!("{path}: action `{}` needs a `port`", action.action));
    Ok(match action.action.as_str() {
        "restart_worker" => Operation::RestartWorker { port: port()? },
        "reset_backoff" => Operation::ResetBackoff { port: port()? },
        "signal_worker" => Operation::SignalWorker {
            port: port()?,
            signal: action.signal.clone().ok_or_else(|| format!("{path}: signal_worker needs a `signal`"))?,
        },
        "drain" => Operation::Drain { wait: false },
        "undrain" => Operation::Undrain,
        other => return Err(format!("{path}: unknown action `{other}`")),
    })
}

#[derive(Debug)]
pub struct ActionSync {
    dir: String,
    ops: mpsc::UnboundedSender<Request>,
    /// Nodes applied whose delete failed, by (path, mzxid): never applied twice.
    applied: BTreeSet<(String, i64)>,
}

impl ActionSync {
    pub fn new(root: &str, supervisor_id: &str, ops: mpsc::UnboundedSender<Request>) -> ActionSync {
        ActionSync { dir: action_dir(root, supervisor_id), ops, applied: BTreeSet::new() }
    }

    /// Applies and deletes every pending action, oldest (by name: sequential nodes sort) first.
    pub async fn sync(&mut self, client: &ZkClient) -> Result<(), ZkError> {
        let mut names = match client.children(&self.dir).await {
            Ok(names) => names,
            Err(e) if e.class() == crate::cluster::zk::ErrorClass::NoNode => return Ok(()),
            Err(e) => return Err(e),
        };
        names.sort();
        let present: BTreeSet<String> = names.iter().map(|n| format!("{}/{n}", self.dir)).collect();
        self.applied.retain(|(p, _)| present.contains(p));
        for name in names {
            let path = format!("{}/{name}", self.dir);
            let Some((data, stat)) = client.get(&path).await? else { continue };
            if self.applied.contains(&(path.clone(), stat.mzxid)) {
                let _ = client.delete(&path, None).await;
                continue;
            }
            let (label, result) = match operation(&path, &data) {
                Ok(op) => {
                    let label = op.name();
                    let reply = submit(&self.ops, op, Duration::from_secs(30)).await;
                    (label, reply)
                }
                Err(e) => ("invalid", Reply::err(e)),
            };
            let outcome = if result.ok { "ok" } else { "error" };
            metrics().actions.get_or_create(&vec![("action", label.to_owned()), ("result", outcome.to_owned())]).inc();
            if result.ok {
                info!(action = %path, result = %result.message, "zookeeper action applied");
            } else {
                warn!(action = %path, problem = %result.message, "zookeeper action rejected; deleting it");
            }
            self.applied.insert((path.clone(), stat.mzxid));
            match client.delete(&path, None).await {
                Ok(()) => {
                    self.applied.remove(&(path, stat.mzxid));
                }
                Err(e) if e.class() == crate::cluster::zk::ErrorClass::NoNode => {
                    self.applied.remove(&(path, stat.mzxid));
                }
                Err(e) => warn!(action = %path, error = %e, "cannot delete an applied action; will retry"),
            }
        }
        Ok(())
    }
}

pub fn action_dir(root: &str, supervisor_id: &str) -> String {
    format!("{root}/actions/{supervisor_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_become_operations_or_named_errors() {
        let p = "/gale/actions/s/a1";
        assert_eq!(
            operation(p, br#"{"schema":1,"action":"restart_worker","port":6700}"#),
            Ok(Operation::RestartWorker { port: 6700 })
        );
        assert_eq!(
            operation(p, br#"{"schema":1,"action":"signal_worker","port":6700,"signal":"QUIT"}"#),
            Ok(Operation::SignalWorker { port: 6700, signal: "QUIT".into() })
        );
        assert_eq!(operation(p, br#"{"schema":1,"action":"drain"}"#), Ok(Operation::Drain { wait: false }));
        let bad = [
            (&br#"{"schema":1,"action":"reboot"}"#[..], "unknown action `reboot`"),
            (br#"{"schema":1,"action":"restart_worker"}"#, "needs a `port`"),
            (br#"{"schema":2,"action":"drain"}"#, "unknown schema 2"),
            (br#"not json"#, "not a valid payload"),
            (br#"{"schema":1,"action":"restart_worker","port":70000}"#, "not a valid payload"),
        ];
        for (data, want) in bad {
            let err = operation(p, data).unwrap_err();
            assert!(err.contains(want) && err.contains(p), "{err}");
        }
    }

    mod props {
        //! Any payload, shaped like an Action or not, becomes an operation or an error that
        //! names the node; an operation is exactly what the payload asked for.

        use proptest::prelude::*;
        use proptest::sample::select;
        use serde_json::{Map, Value, json};

        use super::*;
        use crate::proptest_support::{bounded, cases};

        const PATH: &str = "/gale/actions/s1/a0000000007";
        const ACTIONS: &[&str] = &["restart_worker", "reset_backoff", "signal_worker", "drain", "undrain"];

        fn weird() -> impl Strategy<Value = Value> {
            prop_oneof![
                select(vec![
                    json!(null),
                    json!(true),
                    json!(-1),
                    json!(0),
                    json!(65_536),
                    json!(1.5),
                    json!(6700.0),
                    json!(u64::MAX),
                    json!(i64::MIN),
                    json!(1e300),
                    json!(""),
                    json!("6700"),
                    json!([6700]),
                    json!({"port": 6700}),
                    json!("\u{0}"),
                    json!("restart_worker\n")
                ]),
                any::<String>().prop_map(Value::String),
                any::<i64>().prop_map(Value::from),
            ]
        }

        /// The field's usual value, a wrong one, or nothing.
        fn field(good: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
            prop_oneof![6 => good.prop_map(Some), 1 => weird().prop_map(Some), 1 => Just(None)]
        }

        fn payload() -> impl Strategy<Value = Value> {
            let action = prop_oneof![
                6 => select(ACTIONS).prop_map(Value::from),
                1 => select(&["reboot", "RESTART_WORKER", " drain", "drain ", "signal-worker", ""][..])
                    .prop_map(Value::from),
            ];
            let signal = prop_oneof![
                select(&["QUIT", "USR1", "SIGTERM", "kill", "", "NOPE"][..]).prop_map(Value::from),
                any::<String>().prop_map(Value::from)
            ];
            (
                field(Just(json!(1))),
                field(action),
                field(any::<u16>().prop_map(Value::from)),
                field(signal),
                prop::collection::vec(("[a-z_]{1,10}", weird()), 0..2),
            )
                .prop_map(|(schema, action, port, signal, extra)| {
                    let mut map: Map<String, Value> = extra.into_iter().collect();
                    for (key, value) in [("schema", schema), ("action", action), ("port", port), ("signal", signal)] {
                        match value {
                            Some(v) => map.insert(key.to_owned(), v),
                            None => map.remove(key),
                        };
                    }
                    Value::Object(map)
                })
        }

        fn decode(data: Vec<u8>) -> Result<Operation, String> {
            bounded("operation", move || operation(PATH, &data))
        }

        proptest! {
            #![proptest_config(cases())]

            #[test]
            fn payloads_become_the_operation_they_ask_for_or_a_named_error(
                v in payload(),
                noise in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                match decode(serde_json::to_vec(&v).unwrap()) {
                    Ok(op) => {
                        prop_assert_eq!(&v["schema"], &json!(1));
                        prop_assert_eq!(Some(op.name()), v["action"].as_str());
                        let port = v["port"].as_u64();
                        match op {
                            Operation::RestartWorker { port: p } | Operation::ResetBackoff { port: p } => {
                                prop_assert_eq!(Some(u64::from(p)), port);
                            }
                            Operation::SignalWorker { port: p, signal } => {
                                prop_assert_eq!(Some(u64::from(p)), port);
                                prop_assert_eq!(Some(signal.as_str()), v["signal"].as_str());
                            }
                            Operation::Drain { wait } => prop_assert!(!wait),
                            Operation::Undrain => {}
                        }
                    }
                    Err(e) => prop_assert!(e.contains(PATH), "error does not name the node: {}", e),
                }
                if let Err(e) = decode(noise) {
                    prop_assert!(e.contains(PATH), "error does not name the node: {}", e);
                }
            }
        }
    }
}
