//! SPEC §3 and §3.1 error reporting, end to end against the real binary and a real ZooKeeper:
//! a payload under `/assignments`, `/blobstore` or `/actions` that does not parse or has an
//! unknown schema is in `/status`, `gale status` and `gale_bad_payloads` until it is fixed or
//! deleted; an assignment that places a worker on a slot of this host but cannot run there
//! puts its reason in that slot's `error`, in SupervisorInfo and in status, until it is fixed.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zookeeper_client as zkc;

const LONG: Duration = Duration::from_secs(60);

/// A test agent with its admin endpoint.
struct Case {
    agent: TestAgent,
    admin: u16,
}

impl Case {
    fn new(name: &str) -> Case {
        let agent = TestAgent::new("bp", name);
        let admin = agent.enable_admin();
        Case { agent, admin }
    }

    fn assignments(&self) -> String {
        format!("{}/assignments", self.agent.root)
    }

    fn blobstore(&self) -> String {
        format!("{}/blobstore", self.agent.root)
    }

    fn actions(&self) -> String {
        format!("{}/actions/{}", self.agent.root, self.agent.id)
    }

    /// An assignment of `topology` on `port` of this agent.
    fn assignment(&self, topology: &str, port: u16, command: Value, blobs: Value) -> Value {
        json!({"schema": 1, "topology_id": topology, "launch": {"command": command}, "blobs": blobs,
               "workers": [{"supervisor_id": self.agent.id, "port": port}]})
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    fn get(&self, path: &str) -> String {
        let (code, body) = http_get(&self.url(path));
        assert_eq!(code, 200, "GET {path}: {body}");
        body
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.get("/status")).unwrap()
    }

    /// `bad_payloads[]` of `/status`, as (kind, name) pairs.
    fn bad(&self) -> Vec<(String, String)> {
        let status = self.status();
        let list = status["bad_payloads"].as_array().unwrap_or_else(|| panic!("no bad_payloads in {status}"));
        list.iter().map(|b| (b["kind"].as_str().unwrap().to_owned(), b["name"].as_str().unwrap().to_owned())).collect()
    }

    /// `gale status`, the table.
    fn table(&self) -> String {
        let out = gale(&self.agent.config, &["status"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    }

    fn slot_status(&self, port: u16) -> Value {
        let status = self.status();
        status["slots"].as_array().unwrap().iter().find(|s| s["port"] == port).cloned().unwrap()
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, n)| ((*k).to_owned(), (*n).to_owned())).collect()
}

/// A file:// blob holding `content` and its BlobMeta.
fn blob_meta(dir: &std::path::Path, key: &str, content: &[u8]) -> Value {
    let path = dir.join(key);
    std::fs::write(&path, content).unwrap();
    let sha: String = Sha256::digest(content).iter().map(|b| format!("{b:02x}")).collect();
    json!({"schema": 1, "key": key, "version": 1, "sha256": sha, "size": content.len(),
           "url": format!("file://{}", path.display())})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_in_status_the_table_and_metrics_until_fixed_or_deleted() {
    let case = Case::new("report");
    let reaper = case.agent.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let (assignments, blobstore, actions) = (case.assignments(), case.blobstore(), case.actions());
    // Under each directory: one payload that is not JSON, one of an unknown schema. The blobs
    // are those of an assignment of this host (an agent reads only the BlobMeta it uses).
    put_raw(&zk, &format!("{assignments}/t-garbage"), b"this is { not json").await;
    let mut schema2 = case.assignment("t-schema2", 6700, json!(["/bin/sleep", "1000"]), json!([]));
    schema2["schema"] = json!(2);
    put_json(&zk, &format!("{assignments}/t-schema2"), &schema2).await;
    let blobs = json!([{"key": "k-garbage", "name": "a"}, {"key": "k-schema2", "name": "b"}]);
    let uses_blobs = case.assignment("t-blobs", 6701, json!(["/bin/sleep", "1000"]), blobs);
    put_json(&zk, &format!("{assignments}/t-blobs"), &uses_blobs).await;
    put_raw(&zk, &format!("{blobstore}/k-garbage"), b"{\"schema\": 1, \"key\": ").await;
    let mut meta2 = blob_meta(case.agent.path(), "k-schema2", b"two");
    meta2["schema"] = json!(2);
    put_json(&zk, &format!("{blobstore}/k-schema2"), &meta2).await;
    put_raw(&zk, &format!("{actions}/a-garbage"), b"drain please").await;
    put_json(&zk, &format!("{actions}/a-schema2"), &json!({"schema": 2, "action": "drain"})).await;

    let agent = Agent::start(&case.agent.config);
    eventually("the admin endpoint", LONG, || async { (http_get(&case.url("/live")).0 == 200).then_some(()) }).await;
    let all = pairs(&[
        ("action", "a-garbage"),
        ("action", "a-schema2"),
        ("assignment", "t-garbage"),
        ("assignment", "t-schema2"),
        ("blob", "k-garbage"),
        ("blob", "k-schema2"),
    ]);
    eventually("all six bad payloads in /status", LONG, || async { (case.bad() == all).then_some(()) }).await;
    let status = case.status();
    println!("bad_payloads: {:#}", status["bad_payloads"]);
    for bad in status["bad_payloads"].as_array().unwrap() {
        let (path, reason) = (bad["path"].as_str().unwrap(), bad["reason"].as_str().unwrap());
        assert!(path.ends_with(&format!("/{}", bad["name"].as_str().unwrap())), "{bad}");
        let schema2 = bad["name"].as_str().unwrap().ends_with("schema2");
        let want = if schema2 { "unknown schema 2" } else { "not a valid payload" };
        assert!(reason.contains(want), "{bad}");
        assert!(bad["since_ms"].as_u64().unwrap() >= status["started_at_ms"].as_u64().unwrap(), "{bad}");
    }
    let metrics = case.get("/metrics");
    for kind in ["assignment", "blob", "action"] {
        assert_eq!(metric(&metrics, &format!("gale_bad_payloads{{kind=\"{kind}\"}}")), Some(2.0), "{metrics}");
    }
    let table = case.table();
    println!("{table}");
    assert!(table.contains("BAD PAYLOAD"), "{table}");
    let section: Vec<&str> = table.lines().skip_while(|l| !l.starts_with("BAD PAYLOAD")).skip(1).collect();
    assert_eq!(section.len(), all.len(), "{table}");
    for ((kind, name), line) in all.iter().zip(&section) {
        assert!(line.starts_with(&format!("{kind:<11} {name} ")) && line.contains(&format!("/{name}: ")), "{line}");
    }
    // Unreadable actions are not deleted (a fix, or an operator, decides); nothing was drained.
    assert_eq!(zk.list_children(&actions).await.unwrap().len(), 2);
    assert_eq!(case.status()["drained"], json!(false));
    let log = agent.log_text();
    assert_eq!(log.matches("ignoring an action this agent cannot read").count(), 2, "logged once each:\n{log}");

    // Fixed or deleted: each one goes, from all three places.
    delete(&zk, &format!("{assignments}/t-garbage")).await;
    schema2["schema"] = json!(1);
    put_json(&zk, &format!("{assignments}/t-schema2"), &schema2).await;
    put_json(&zk, &format!("{blobstore}/k-garbage"), &blob_meta(case.agent.path(), "k-garbage", b"one")).await;
    delete(&zk, &format!("{blobstore}/k-schema2")).await;
    put_json(&zk, &format!("{actions}/a-garbage"), &json!({"schema": 1, "action": "undrain"})).await;
    delete(&zk, &format!("{actions}/a-schema2")).await;
    eventually("no bad payload left", LONG, || async { case.bad().is_empty().then_some(()) }).await;
    let metrics = case.get("/metrics");
    for kind in ["assignment", "blob", "action"] {
        assert_eq!(metric(&metrics, &format!("gale_bad_payloads{{kind=\"{kind}\"}}")), Some(0.0), "{metrics}");
    }
    assert!(!case.table().contains("BAD PAYLOAD"));
    let info =
        case.agent.wait_info(&zk, &agent, "the fixed t-schema2 running", |i| running_pid(i, 6700).is_some()).await;
    reaper.track(running_pid(&info, 6700).unwrap());
    eventually("the fixed action applied and deleted", LONG, || async {
        zk.list_children(&actions).await.unwrap().is_empty().then_some(())
    })
    .await;
    assert!(agent.log_text().contains("zookeeper action applied"), "{}", agent.log_text());
}

/// Reads SupervisorInfo's `workers[]` entry of `port` and the node's version.
async fn entry(zk: &zkc::Client, case: &Case, port: u16) -> (Value, Value, i32) {
    let (info, stat) = read_json(zk, &case.agent.info_path()).await.unwrap();
    (slot(&info, port).cloned().unwrap_or(Value::Null), info, stat.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_that_cannot_run_on_a_slot_shows_why_on_that_slot_until_fixed() {
    let case = Case::new("slot-error");
    // No refresh within the test: every write of SupervisorInfo is a change.
    case.agent.edit(|text| text.replace("heartbeat_refresh_secs = 5", "heartbeat_refresh_secs = 600"));
    let reaper = case.agent.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let path = format!("{}/t-rel", case.assignments());
    let relative = case.assignment("t-rel", 6700, json!(["bin/sleep", "1000"]), json!([]));
    put_json(&zk, &path, &relative).await;
    // And a blob name the assignment does not declare, on 6701.
    let blob_name = case.assignment("t-blob-name", 6701, json!(["{blob:nope}/run"]), json!([]));
    put_json(&zk, &format!("{}/t-blob-name", case.assignments()), &blob_name).await;
    let agent = Agent::start(&case.agent.config);
    let info = case
        .agent
        .wait_info(&zk, &agent, "errors on 6700 and 6701", |i| {
            [6700, 6701].iter().all(|p| slot(i, *p).is_some_and(|w| w["error"].is_string()))
        })
        .await;
    let other = slot(&info, 6701).unwrap();
    assert!(other["error"].as_str().unwrap().contains("{blob:nope} names no blob in `blobs`"), "{other}");
    assert_eq!((&other["topology_id"], &other["state"]), (&json!("t-blob-name"), &json!("empty")));
    let w = slot(&info, 6700).unwrap();
    println!("SupervisorInfo entry: {w}");
    assert!(w["error"].as_str().unwrap().contains("launch.command[0]: \"bin/sleep\" must be an absolute path"), "{w}");
    assert_eq!((&w["topology_id"], &w["state"], &w["pid"]), (&json!("t-rel"), &json!("empty"), &Value::Null));
    assert_eq!(info["used_slots"], json!([]), "nothing runs there: {info}");
    let s = case.slot_status(6700);
    let (ours, theirs) =
        ((&s["topology_id"], &s["error"], &s["since_ms"]), (&w["topology_id"], &w["error"], &w["since_ms"]));
    assert_eq!(ours, theirs, "status agrees: {s}");
    let table = case.table();
    println!("{table}");
    let row = table.lines().find(|l| l.starts_with("6700 ")).unwrap();
    assert!(row.contains("t-rel") && row.contains("must be an absolute path"), "{row}");
    assert!(table.lines().any(|l| l.starts_with("assignment") && l.contains("/t-rel: ")), "{table}");

    // Syncs that change nothing of this slot do not rewrite SupervisorInfo.
    let (_, _, version) = entry(&zk, &case, 6700).await;
    let elsewhere = json!({"schema": 1, "topology_id": "t-elsewhere", "launch": {"command": ["/bin/true"]},
                           "workers": [{"supervisor_id": "sup-someone-else", "port": 6700}]});
    for n in 0..3 {
        let mut a = elsewhere.clone();
        a["launch"]["env"] = json!({"N": n.to_string()});
        put_json(&zk, &format!("{}/t-elsewhere", case.assignments()), &a).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written: Vec<String> =
        agent.log_text().lines().filter(|l| l.contains("supervisor info written")).map(str::to_owned).collect();
    assert_eq!(
        entry(&zk, &case, 6700).await.2,
        version,
        "three syncs and five monitor ticks wrote nothing; the writes:\n{}",
        written.join("\n")
    );

    // Fixed: the worker runs, the error is gone. Deleted: its slot has no entry any more.
    let fixed = case.assignment("t-rel", 6700, json!(["/bin/sleep", "1000"]), json!([]));
    put_json(&zk, &path, &fixed).await;
    delete(&zk, &format!("{}/t-blob-name", case.assignments())).await;
    let info = case
        .agent
        .wait_info(&zk, &agent, "the worker running, 6701 clear", |i| {
            running_pid(i, 6700).is_some() && slot(i, 6701).is_none()
        })
        .await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);
    assert!(slot(&info, 6700).unwrap().get("error").is_none(), "{info}");
    assert!(case.slot_status(6700)["error"].is_null());
    assert!(case.bad().is_empty());

    // Broken again while it runs: the last good version keeps running, and says why.
    put_json(&zk, &path, &relative).await;
    let info = case
        .agent
        .wait_info(&zk, &agent, "an error on the running 6700", |i| {
            slot(i, 6700).is_some_and(|w| w["error"].is_string())
        })
        .await;
    let w = slot(&info, 6700).unwrap();
    assert_eq!((running_pid(&info, 6700), &w["restarts"]), (Some(pid), &json!(0)), "{w}");
    assert!(w["error"].as_str().unwrap().contains("new assignment not used, the previous one stays"), "{w}");
    assert!(case.slot_status(6700)["error"].as_str().unwrap().contains("bin/sleep"));
    // Back to the good payload: the same worker, no error.
    put_json(&zk, &path, &fixed).await;
    let info = case
        .agent
        .wait_info(&zk, &agent, "the error gone", |i| slot(i, 6700).is_some_and(|w| w.get("error").is_none()))
        .await;
    assert_eq!(running_pid(&info, 6700), Some(pid), "not restarted: {info}");
    assert!(case.bad().is_empty());
}
