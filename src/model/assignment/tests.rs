//! Every validation rule of [`Assignment`], each broken once on an otherwise valid payload, and
//! the decode path (schema, size, node name).

use super::*;

fn sample() -> Assignment {
    Assignment {
        schema: SCHEMA,
        topology_id: "wordcount".into(),
        launch: Launch {
            command: vec!["/usr/bin/python3".into(), "{blob:code}/worker.py".into(), "--port".into(), "{port}".into()],
            env: BTreeMap::from([("WORDCOUNT_MODE".into(), "fast".into())]),
            liveness: LivenessMode::Heartbeat,
            start_timeout_secs: Some(120),
            heartbeat_timeout_secs: Some(30),
            memory_mb: Some(512),
            cpu_percent: Some(100),
            user: Some("storm".into()),
        },
        blobs: vec![BlobRef {
            key: "wordcount-code".into(),
            name: "code".into(),
            extract: true,
            restart_on_update: true,
        }],
        workers: vec![
            WorkerPlacement { supervisor_id: "6f1c".into(), port: 6700 },
            WorkerPlacement { supervisor_id: "9a2d".into(), port: 6701 },
            WorkerPlacement { supervisor_id: "6f1c".into(), port: 6701 },
        ],
    }
}

/// The error message after `change` is applied to a valid sample; panics if it still validates.
fn broken(change: impl FnOnce(&mut Assignment)) -> String {
    let mut a = sample();
    change(&mut a);
    match a.validate() {
        Ok(()) => panic!("should be rejected: {a:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }
}

#[test]
fn the_sample_is_valid_and_round_trips_through_its_node() {
    let a = sample();
    a.validate().unwrap();
    let back = Assignment::decode("/gale/assignments/wordcount", &a.to_json()).unwrap();
    assert_eq!(back, a);
}

#[test]
fn the_spec_example_decodes_with_defaults_and_unknown_fields() {
    let json = br#"{"schema": 1, "topology_id": "t1", "from_the_future": true,
        "launch": {"command": ["/bin/true"], "x": 1}}"#;
    let a = Assignment::decode("/gale/assignments/t1", json).unwrap();
    assert_eq!(a.launch.liveness, LivenessMode::Process);
    assert!(a.blobs.is_empty() && a.workers.is_empty() && a.launch.env.is_empty());
    // Absent optional fields are written back as null and read as absent again.
    let v: serde_json::Value = serde_json::from_slice(&a.to_json()).unwrap();
    assert_eq!(v["launch"]["memory_mb"], serde_json::Value::Null, "{v}");
    assert_eq!(Assignment::decode("/gale/assignments/t1", &a.to_json()).unwrap(), a);
}

#[test]
fn decode_rejects_bad_schema_size_json_and_names_the_path() {
    let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
    v["schema"] = 2.into();
    let err = Assignment::decode("/g/assignments/wordcount", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_names(&err.to_string(), &["/g/assignments/wordcount", "unknown schema 2"]);
    let err = Assignment::decode("/g/assignments/x", b"{nope").unwrap_err().to_string();
    assert_names(&err, &["/g/assignments/x", "not a valid payload"]);
    let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(Assignment::decode("/p", &huge), Err(AssignmentError::Payload(PayloadError::TooLarge { .. }))));
}

#[test]
fn decode_checks_the_id_against_the_node_name() {
    let json = sample().to_json();
    let err = Assignment::decode("/gale/assignments/other", &json).unwrap_err().to_string();
    assert_names(&err, &["/gale/assignments/other", "`wordcount`", "`other`"]);
    // Only a node under `assignments` is named after its topology.
    Assignment::decode("/tmp/wordcount-v2.json", &json).unwrap();
}

#[test]
fn a_bad_topology_id_is_named_with_the_path() {
    let mut a = sample();
    a.topology_id = "../etc".into();
    let json = serde_json::to_vec(&a).unwrap();
    let err = Assignment::decode("/gale/assignments/x", &json).unwrap_err().to_string();
    assert_names(&err, &["/gale/assignments/x: topology_id", "`../etc`"]);
    assert_names(&a.validate().unwrap_err().to_string(), &["assignment: topology_id", "`../etc`"]);
}

#[test]
fn schema_must_be_the_supported_one() {
    assert_names(&broken(|a| a.schema = 7), &["topology wordcount: schema: 7"]);
}

#[test]
fn command_rules() {
    type Change = Box<dyn FnOnce(&mut Assignment)>;
    let cases: Vec<(Change, &[&str])> = vec![
        (Box::new(|a| a.launch.command.clear()), &["launch.command: is empty"]),
        (Box::new(|a| a.launch.command = vec!["/bin/x".into(); MAX_ARGS + 1]), &["launch.command: has 257"]),
        (Box::new(|a| a.launch.command.push("x".repeat(MAX_ARG_BYTES + 1))), &["launch.command[4]: is 4097 bytes"]),
        (Box::new(|a| a.launch.command.push("a\0b".into())), &["launch.command[4]", "NUL"]),
        (
            Box::new(|a| a.launch.command[0] = "worker.py".into()),
            &[
                r#"topology wordcount: launch.command[0]: "worker.py" must be an absolute path or start with {blob:NAME}/"#,
            ],
        ),
        (Box::new(|a| a.launch.command[0] = "{worker_dir}/run".into()), &["launch.command[0]", "absolute path"]),
        (Box::new(|a| a.launch.command[0] = "{blob:code}".into()), &["launch.command[0]", "absolute path"]),
        (Box::new(|a| a.launch.command[1] = "{blob:lib}/w.py".into()), &["launch.command[1]", "{blob:lib}", "code"]),
        (Box::new(|a| a.launch.command[0] = "{blob:lib}/w".into()), &["launch.command[0]", "{blob:lib}"]),
        (Box::new(|a| a.launch.command[0] = "{blob:}/x".into()), &["launch.command[0]", "{blob:} names no blob"]),
        // Found by tests/decoders_prop.rs: no placeholder (`/` or a space inside the braces) or
        // not followed by `/`, so relative paths, but they once passed as a `{blob:…}/` prefix.
        (Box::new(|a| a.launch.command[0] = "{blob:code/}/x".into()), &["launch.command[0]", "absolute path"]),
        (Box::new(|a| a.launch.command[0] = "{blob:a b}/x".into()), &["launch.command[0]", "absolute path"]),
        (Box::new(|a| a.launch.command[0] = "{blob:code}}/x".into()), &["launch.command[0]", "absolute path"]),
        (Box::new(|a| a.launch.command[3] = "{prot}".into()), &["launch.command[3]", "unknown placeholder {prot}"]),
        (Box::new(|a| a.launch.command.push("${HOME}".into())), &["launch.command[4]", "{HOME}"]),
    ];
    for (change, parts) in cases {
        assert_names(&broken(change), parts);
    }
}

#[test]
fn known_placeholders_and_literal_braces_are_accepted() {
    let mut a = sample();
    a.launch.command = ["{blob:code}/bin/w", "{port}", "{worker_id}", "{topology_id}", "{supervisor_id}"]
        .into_iter()
        .chain(["--dir={worker_dir}/x", r#"{"json": {"n": 1}}"#, "{}", "{ port }"])
        .map(String::from)
        .collect();
    a.validate().unwrap();
    a.launch.command = vec!["/bin/true".into(); MAX_ARGS];
    a.launch.command.push("/".into());
    assert!(a.validate().is_err(), "one past the limit");
    a.launch.command.pop();
    a.validate().unwrap();
}

#[test]
fn env_rules() {
    let set = |name: &str, value: String| {
        let name = name.to_owned();
        move |a: &mut Assignment| {
            a.launch.env.insert(name, value);
        }
    };
    assert_names(&broken(set("1X", "v".into())), &["launch.env: name \"1X\""]);
    assert_names(&broken(set("A-B", "v".into())), &["launch.env: name \"A-B\""]);
    assert_names(&broken(set("", "v".into())), &["launch.env: name \"\""]);
    assert_names(&broken(set("GALE_PORT", "1".into())), &["launch.env.GALE_PORT", "set by the agent"]);
    assert_names(&broken(set("BIG", "x".repeat(MAX_ENV_VALUE_BYTES + 1))), &["launch.env.BIG", "32769 bytes"]);
    assert_names(&broken(set("NUL", "a\0".into())), &["launch.env.NUL", "NUL"]);
    let too_many =
        |a: &mut Assignment| a.launch.env = (0..=MAX_ENV).map(|i| (format!("V{i}"), String::new())).collect();
    assert_names(&broken(too_many), &["launch.env: has 257 variables"]);

    let mut ok = sample();
    ok.launch.env = (0..MAX_ENV).map(|i| (format!("_v{i}"), "x".repeat(16))).collect();
    ok.launch.env.insert("_v0".into(), "x".repeat(MAX_ENV_VALUE_BYTES));
    ok.launch.env.insert("gale_lowercase_is_not_ours".into(), String::new());
    ok.launch.env.remove("_v1");
    ok.validate().unwrap();
}

#[test]
fn zero_limits_and_bad_users_are_rejected() {
    assert_names(&broken(|a| a.launch.start_timeout_secs = Some(0)), &["launch.start_timeout_secs: must be more"]);
    assert_names(&broken(|a| a.launch.heartbeat_timeout_secs = Some(0)), &["launch.heartbeat_timeout_secs"]);
    assert_names(&broken(|a| a.launch.memory_mb = Some(0)), &["launch.memory_mb"]);
    assert_names(&broken(|a| a.launch.cpu_percent = Some(0)), &["launch.cpu_percent"]);
    for bad in ["", "-x", "root;rm", "a/b", "über", &"u".repeat(33)] {
        let bad = bad.to_owned();
        assert_names(&broken(|a| a.launch.user = Some(bad)), &["launch.user"]);
    }
    let mut ok = sample();
    ok.launch.user = Some("_apt".into());
    ok.validate().unwrap();
}

#[test]
fn blob_rules() {
    assert_names(&broken(|a| a.blobs[0].key = "a/b".into()), &["blobs[0].key", "`a/b`"]);
    assert_names(&broken(|a| a.blobs[0].name = "..".into()), &["blobs[0].name", "`..`"]);
    let twice = |a: &mut Assignment| {
        let mut again = a.blobs[0].clone();
        again.key = "other-key".into();
        a.blobs.push(again);
    };
    assert_names(&broken(twice), &["blobs[1].name", "`code` is declared twice"]);
}

#[test]
fn worker_rules() {
    assert_names(&broken(|a| a.workers[1].supervisor_id = "a b".into()), &["workers[1].supervisor_id", "`a b`"]);
    assert_names(&broken(|a| a.workers[0].port = 0), &["workers[0].port", "1 to 65535"]);
    let dup = |a: &mut Assignment| a.workers.push(WorkerPlacement { supervisor_id: "9a2d".into(), port: 6701 });
    assert_names(&broken(dup), &["workers[3]", "supervisor 9a2d port 6701", "workers[1]"]);
}

#[test]
fn the_serialized_payload_must_fit_in_a_node() {
    let fat = |a: &mut Assignment| {
        a.launch.env = (0..64).map(|i| (format!("V{i}"), "x".repeat(MAX_ENV_VALUE_BYTES))).collect();
    };
    assert_names(&broken(fat), &["topology wordcount: payload:", "more than the 1048576"]);
}

#[test]
fn the_placements_of_a_refused_payload_are_read_when_its_schema_is_known() {
    let mut relative = serde_json::to_value(sample()).unwrap();
    relative["launch"]["command"] = serde_json::json!(["bin/run"]);
    relative["workers"][1] = serde_json::json!({"supervisor_id": "x", "port": "not a port"});
    let bytes = serde_json::to_vec(&relative).unwrap();
    assert!(Assignment::decode("/g/assignments/wordcount", &bytes).is_err());
    let placed = placements_of_invalid(&bytes);
    assert_eq!(placed, vec![sample().workers[0].clone(), sample().workers[2].clone()], "the well-formed ones");
    // Not JSON, another schema, no workers: nothing is placed.
    relative["schema"] = 2.into();
    for bytes in [b"{not json".to_vec(), serde_json::to_vec(&relative).unwrap(), br#"{"schema":1}"#.to_vec()] {
        assert!(placements_of_invalid(&bytes).is_empty());
    }
}
