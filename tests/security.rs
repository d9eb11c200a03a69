//! ZooKeeper security (SPEC §7): digest auth from a credentials file, creator-all plus
//! world-read ACLs on what the agent creates, and a clear refusal of a readable credentials
//! file. Real ZooKeeper, real binary.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::*;
use serde_json::json;
use zookeeper_client as zkc;

fn with_auth(config: &std::path::Path, credentials: &std::path::Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let auth = format!(
        "connect_timeout_ms = 3000\nauth = {{ scheme = \"digest\", credentials_file = \"{}\" }}\n",
        credentials.display()
    );
    std::fs::write(config, text.replacen("connect_timeout_ms = 3000\n", &auth, 1)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_others_can_read_but_not_change_the_agents_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = "/s-auth";
    let config = AgentSpec::new(&shared_zk().connect_string(), root).id("sup-auth").write(&tmp.path().join("agent"));
    let credentials = tmp.path().join("zk.cred");
    std::fs::write(&credentials, "gale:s3cret\n").unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
    with_auth(&config, &credentials);
    let agent = Agent::start(&config);
    let anonymous = zk_client(&shared_zk().connect_string()).await;
    let path = format!("{root}/supervisors/sup-auth");
    let (info, _) =
        wait_info(&anonymous, &path, &agent, "registered", Duration::from_secs(60), |i, _| i["state"] == "running")
            .await;
    assert_eq!(info["id"], json!("sup-auth"), "anyone can read");

    let (acls, _) = anonymous.get_acl(&path).await.unwrap();
    let schemes: Vec<(String, String)> = acls.iter().map(|a| (a.scheme().to_owned(), a.id().to_owned())).collect();
    assert!(schemes.contains(&("world".into(), "anyone".into())), "{schemes:?}");
    assert!(
        schemes.iter().any(|(s, id)| s == "digest" && id.starts_with("gale:")),
        "creator is the gale digest: {schemes:?}"
    );
    for acl in acls.iter().filter(|a| a.scheme() == "world") {
        assert_eq!(acl.permission(), zkc::Permission::READ, "world may only read");
    }
    // Writes and deletes without the credentials are refused.
    assert!(matches!(anonymous.set_data(&path, b"{}", None).await, Err(zkc::Error::NoAuth)));
    assert!(matches!(anonymous.delete(&path, None).await, Err(zkc::Error::NoAuth)));
    let other = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    assert!(matches!(
        anonymous.create(&format!("{root}/supervisors/impostor"), b"{}", &other).await,
        Err(zkc::Error::NoAuth)
    ));
    // The agent itself still writes (its heartbeat goes on).
    let (_, before) = read_json(&anonymous, &path).await.unwrap();
    eventually("a heartbeat write", Duration::from_secs(30), || async {
        (read_json(&anonymous, &path).await.unwrap().1.version > before.version).then_some(())
    })
    .await;
    // The CLI authenticates the same way: it may write assignments where anonymous may not.
    let topology = tmp.path().join("t.json");
    std::fs::write(
        &topology,
        serde_json::to_vec(&json!({"schema": 1, "topology_id": "t",
        "launch": {"command": ["/bin/true"]}, "workers": []}))
        .unwrap(),
    )
    .unwrap();
    expect(&config, &["topology", "submit", topology.to_str().unwrap()], 0);
    assert!(matches!(anonymous.delete(&format!("{root}/assignments/t"), None).await, Err(zkc::Error::NoAuth)));
}

#[test]
fn a_credentials_file_others_can_read_is_refused_with_exit_78() {
    let tmp = tempfile::tempdir().unwrap();
    let config = AgentSpec::new("127.0.0.1:1", "/s-mode").write(&tmp.path().join("agent"));
    let credentials = tmp.path().join("zk.cred");
    std::fs::write(&credentials, "gale:s3cret\n").unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o644)).unwrap();
    with_auth(&config, &credentials);
    let mut agent = Agent::start(&config);
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), 78, "{}", agent.log_text());
    let log = agent.log_text();
    assert!(log.contains(credentials.to_str().unwrap()), "the error names the file: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_agent_may_not_write_is_reported_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = "/s-denied";
    // Someone else owns the supervisors dir and lets nobody else create in it.
    let owner = zk_client(&shared_zk().connect_string()).await;
    owner.auth("digest", b"someone:else").await.unwrap();
    let mine = zkc::CreateMode::Persistent.with_acls(zkc::Acls::creator_all());
    let open = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    owner.create(root, b"", &open).await.unwrap();
    owner.create(&format!("{root}/supervisors"), b"", &mine).await.unwrap();
    let config = AgentSpec::new(&shared_zk().connect_string(), root).id("sup-denied").write(&tmp.path().join("agent"));
    let mut agent = Agent::start(&config);
    agent.wait_log("not authorized", Duration::from_secs(30));
    let log = agent.log_text();
    assert!(log.contains(&format!("{root}/supervisors/sup-denied")), "the error names the node: {log}");
    assert!(agent.try_status().is_none(), "the agent keeps trying rather than dying");
}
