//! Action (SPEC §3.4): an operation a scheduler or an operator elsewhere asks of an agent by
//! creating a node under `<root>/actions/<supervisor-id>/`, and [`Operation`], what it asks
//! for. The control socket speaks the same operations, so they are plain data here: the
//! ZooKeeper sync job (`supervisor::actions`) and the socket (`admin::control`) both hand them
//! to the executor.

use serde::{Deserialize, Serialize};

use super::{PayloadError, decode};

/// A request for a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Operation {
    /// Kill and relaunch the worker on `port` now (not a failure: no backoff).
    RestartWorker { port: u16 },
    /// Forget the port's earlier failures and leave `backoff` now.
    ResetBackoff { port: u16 },
    /// Send `signal` (`QUIT`, `USR1`, …) to the worker's process group, e.g. for a thread dump.
    SignalWorker { port: u16, signal: String },
    /// Stop every worker gracefully and keep them stopped; `wait`: answer once they are gone.
    Drain {
        #[serde(default)]
        wait: bool,
    },
    /// Undo `Drain`: workers are launched again.
    Undrain,
    /// Run diagnostics command `name` (`[diagnostics.commands]`) against the worker on
    /// `port`; `wait`: answer once the run has ended, not once it has started.
    Diag {
        port: u16,
        name: String,
        #[serde(default)]
        wait: bool,
    },
}

impl Operation {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Operation::RestartWorker { .. } => "restart_worker",
            Operation::ResetBackoff { .. } => "reset_backoff",
            Operation::SignalWorker { .. } => "signal_worker",
            Operation::Drain { .. } => "drain",
            Operation::Undrain => "undrain",
            Operation::Diag { .. } => "diag",
        }
    }
}

/// The payload (SPEC §3.4).
#[derive(Debug, Deserialize)]
struct Action {
    action: String,
    port: Option<u16>,
    signal: Option<String>,
    /// `diag`: the command's name.
    name: Option<String>,
}

/// Why an action node is not applied. The two kinds are handled differently (SPEC §3, §3.4).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActionError {
    /// The payload does not parse, or has an unknown schema: it stays, reported, until it is
    /// fixed or deleted (an unknown schema may be for a newer agent).
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A well-formed action this agent cannot do (an unknown action, a missing field):
    /// reported and deleted.
    #[error("{0}")]
    Invalid(String),
}

/// The action payload as an operation, or what is wrong with it.
pub(crate) fn operation(path: &str, data: &[u8]) -> Result<Operation, ActionError> {
    let action: Action = decode(path, data)?;
    let invalid = |why: String| ActionError::Invalid(format!("{path}: {why}"));
    let port = || action.port.ok_or_else(|| invalid(format!("action `{}` needs a `port`", action.action)));
    Ok(match action.action.as_str() {
        "restart_worker" => Operation::RestartWorker { port: port()? },
        "reset_backoff" => Operation::ResetBackoff { port: port()? },
        "signal_worker" => Operation::SignalWorker {
            port: port()?,
            signal: action.signal.clone().ok_or_else(|| invalid("signal_worker needs a `signal`".into()))?,
        },
        "drain" => Operation::Drain { wait: false },
        "undrain" => Operation::Undrain,
        "diag" => Operation::Diag {
            port: port()?,
            name: action
                .name
                .clone()
                .ok_or_else(|| invalid("diag needs a `name` (of [diagnostics.commands])".into()))?,
            wait: false,
        },
        other => return Err(invalid(format!("unknown action `{other}`"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_become_operations_or_named_errors() {
        let p = "/gale/actions/s/a1";
        assert_eq!(
            operation(p, br#"{"schema":1,"action":"restart_worker","port":6700}"#).unwrap(),
            Operation::RestartWorker { port: 6700 }
        );
        assert_eq!(
            operation(p, br#"{"schema":1,"action":"signal_worker","port":6700,"signal":"QUIT"}"#).unwrap(),
            Operation::SignalWorker { port: 6700, signal: "QUIT".into() }
        );
        assert_eq!(operation(p, br#"{"schema":1,"action":"drain"}"#).unwrap(), Operation::Drain { wait: false });
        assert_eq!(
            operation(p, br#"{"schema":1,"action":"diag","port":6700,"name":"jstack"}"#).unwrap(),
            Operation::Diag { port: 6700, name: "jstack".into(), wait: false }
        );
        // (payload, error, a bad payload (kept) rather than an invalid action (deleted))
        let bad = [
            (&br#"{"schema":1,"action":"reboot"}"#[..], "unknown action `reboot`", false),
            (br#"{"schema":1,"action":"restart_worker"}"#, "needs a `port`", false),
            (br#"{"schema":1,"action":"diag","port":6700}"#, "diag needs a `name`", false),
            (br#"{"schema":2,"action":"drain"}"#, "unknown schema 2", true),
            (br#"not json"#, "not a valid payload", true),
            (br#"{"schema":1,"action":"restart_worker","port":70000}"#, "not a valid payload", true),
        ];
        for (data, want, payload) in bad {
            let err = operation(p, data).unwrap_err();
            assert_eq!(matches!(err, ActionError::Payload(_)), payload, "{err}");
            let err = err.to_string();
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
        const ACTIONS: &[&str] = &["restart_worker", "reset_backoff", "signal_worker", "drain", "undrain", "diag"];

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
            let name = prop_oneof![
                select(&["jstack", "heap", "", "../x"][..]).prop_map(Value::from),
                any::<String>().prop_map(Value::from)
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
                field(name),
                prop::collection::vec(("[a-z_]{1,10}", weird()), 0..2),
            )
                .prop_map(|(schema, action, port, signal, name, extra)| {
                    let mut map: Map<String, Value> = extra.into_iter().collect();
                    let fields =
                        [("schema", schema), ("action", action), ("port", port), ("signal", signal), ("name", name)];
                    for (key, value) in fields {
                        match value {
                            Some(v) => map.insert(key.to_owned(), v),
                            None => map.remove(key),
                        };
                    }
                    Value::Object(map)
                })
        }

        fn decode(data: Vec<u8>) -> Result<Operation, String> {
            bounded("operation", move || operation(PATH, &data).map_err(|e| e.to_string()))
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
                            Operation::Diag { port: p, name, wait } => {
                                prop_assert_eq!(Some(u64::from(p)), port);
                                prop_assert_eq!(Some(name.as_str()), v["name"].as_str());
                                prop_assert!(!wait);
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
