//! Blobs end to end: the real `gale` binary against a real ZooKeeper, downloading from a real
//! HTTP server on loopback (a small python3 `http.server` started by each test that can also
//! fail on purpose) and from `file://` stores, running real worker processes from the blobs.
//!
//! BlobMeta and assignments are written as raw JSON by an independent ZooKeeper session, the
//! way `gale blob put` and a scheduler would. What the agent does is read back from its
//! SupervisorInfo, the worker logs, the server's request log and the cache on disk.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zookeeper_client as zkc;

const LONG: Duration = Duration::from_secs(60);

/// A file server: `GET /f/NAME` serves `<dir>/NAME`; `/trunc/NAME` announces the whole length
/// and closes after half; `/status/CODE` answers CODE. Every request path is appended to
/// `<log>`, so a test can count downloads.
const SERVER_PY: &str = r#"
import http.server, os, sys
root, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with open(log, "a") as f:
            f.write(self.path + "\n")
        kind, _, name = self.path.lstrip("/").partition("/")
        if kind == "status":
            self.send_response(int(name)); self.send_header("Content-Length", "0"); self.end_headers(); return
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        data = open(path, "rb").read()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        if kind == "trunc":
            self.wfile.write(data[: len(data) // 2]); self.wfile.flush(); self.close_connection = True; return
        self.wfile.write(data)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(tmp: &Path) -> Server {
        let dir = tmp.join("www");
        std::fs::create_dir_all(&dir).unwrap();
        let script = tmp.join("server.py");
        std::fs::write(&script, SERVER_PY).unwrap();
        let port = free_port();
        let log = tmp.join("requests.log");
        std::fs::write(&log, "").unwrap();
        let child = Command::new("python3")
            .arg(&script)
            .args([dir.to_str().unwrap(), &port.to_string(), log.to_str().unwrap()])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 runs the test's http server");
        wait_for("the http server to listen", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).ok());
        Server { child, port, dir, log }
    }

    fn url(&self, kind: &str, name: &str) -> String {
        format!("http://127.0.0.1:{}/{kind}/{name}", self.port)
    }

    /// How many requests asked for `path` (`/f/NAME`).
    fn requests(&self, path: &str) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().filter(|l| *l == path).count()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A tar.gz of `files` (path, mode, content), built with the system's `tar`.
fn tar_gz(tmp: &Path, name: &str, files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let src = tmp.join(format!("src-{name}"));
    for (path, mode, content) in files {
        let file = src.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let out = tmp.join(format!("{name}.tar.gz"));
    let status = Command::new("tar").arg("czf").arg(&out).arg("-C").arg(&src).arg(".").status().unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

/// A tar.gz whose single entry has the raw `name` (which `tar` would refuse to write) and,
/// for a symlink, raw `link`.
fn evil_tar_gz(name: &str, link: Option<&str>) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    let data: &[u8] = b"gotcha\n";
    match link {
        Some(link) => {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
        }
        None => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(data.len() as u64);
        }
    }
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, if link.is_some() { &[][..] } else { data }).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

/// One test's agent and its root, id and temp dir.
struct Case(TestAgent);

impl std::ops::Deref for Case {
    type Target = TestAgent;
    fn deref(&self) -> &TestAgent {
        &self.0
    }
}

impl Case {
    /// Root `/b-<name>`, id `sup-<name>`, `ports` as slots, `blob` lines in `[blob]`.
    fn new(name: &str, ports: &[u16], blob: &str) -> Case {
        let case = Case(TestAgent::new("b", name));
        let slots: Vec<String> = ports.iter().map(u16::to_string).collect();
        case.edit(|text| {
            let text = text.replace("slots = [6700, 6701]", &format!("slots = [{}]", slots.join(", ")));
            format!("{text}\n[blob]\nsync_secs = 2\n{blob}\n")
        });
        case
    }

    fn cache_dir(&self) -> PathBuf {
        self.local().join("blobs")
    }

    fn cache_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.cache_dir())
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    fn start(&self) -> Agent {
        Agent::start(&self.config)
    }

    /// Writes `/blobstore/<key>` for `content` served at `url`.
    async fn publish(
        &self,
        zk: &zkc::Client,
        key: &str,
        version: u64,
        content: &[u8],
        url: &str,
        archive: Option<&str>,
    ) {
        let meta = json!({"schema": 1, "key": key, "version": version, "sha256": sha256_hex(content),
                          "size": content.len(), "url": url, "archive": archive});
        put_json(zk, &format!("{}/blobstore/{key}", self.root), &meta).await;
    }

    async fn publish_meta(&self, zk: &zkc::Client, key: &str, meta: Value) {
        put_json(zk, &format!("{}/blobstore/{key}", self.root), &meta).await;
    }

    /// An assignment of `topology` on `ports` running `command` with `blobs`.
    async fn assign(&self, zk: &zkc::Client, topology: &str, ports: &[u16], command: Value, blobs: Value) {
        let workers: Vec<Value> = ports.iter().map(|p| json!({"supervisor_id": self.id, "port": p})).collect();
        let assignment = json!({"schema": 1, "topology_id": topology,
            "launch": {"command": command, "liveness": "process"}, "blobs": blobs, "workers": workers});
        put_json(zk, &format!("{}/assignments/{topology}", self.root), &assignment).await;
    }
}

fn slot_error(info: &Value, port: u16) -> String {
    slot(info, port).and_then(|s| s["error"].as_str()).unwrap_or_default().to_owned()
}

/// Waits until `log` contains `needle`; returns the whole log.
fn wait_in_log(log: &Path, needle: &str, agent: &Agent) -> String {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let text = read_log(log);
        if text.contains(needle) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for `{needle}` in {}:\n{text}\nagent log:\n{}",
            log.display(),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A worker program shipped in a blob: prints its blob's version file and where it runs from,
/// then sleeps (as `sleep`, so the test's reaper finds it by its cwd).
const RUN_SH: &[u8] = b"#!/bin/sh\n\
here=$(cd \"$(dirname \"$0\")/..\" && pwd)\n\
echo \"run pid=$$ topology=$GALE_TOPOLOGY_ID version=$(cat \"$here/VERSION\") from=$0 blobdir=$GALE_BLOB_DIR\"\n\
exec /bin/sleep 1000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_from_an_extracted_blob_and_a_shared_blob_is_downloaded_once() {
    let case = Case::new("shared", &[6700, 6701], "download_retries = 0");
    let reaper = case.reaper();
    let server = Server::start(case.path());
    let zk = zk_client(&shared_zk().connect_string()).await;
    let code = tar_gz(case.path(), "code", &[("bin/run.sh", 0o755, RUN_SH), ("VERSION", 0o644, b"v1")]);
    std::fs::write(server.dir.join("code.tar.gz"), &code).unwrap();
    case.publish(&zk, "code", 1, &code, &server.url("f", "code.tar.gz"), Some("tar.gz")).await;
    let blobs = json!([{"key": "code", "name": "app", "extract": true}]);
    // Two topologies on two ports use the same blob; the command is inside it.
    case.assign(&zk, "topo-a", &[6700], json!(["{blob:app}/bin/run.sh", "{port}"]), blobs.clone()).await;
    case.assign(&zk, "topo-b", &[6701], json!(["{blob:app}/bin/run.sh", "{port}"]), blobs).await;
    let agent = case.start();

    let info = case
        .wait_info(&zk, &agent, "both workers running", |i| {
            running_pid(i, 6700).is_some() && running_pid(i, 6701).is_some()
        })
        .await;
    for (topology, port) in [("topo-a", 6700), ("topo-b", 6701)] {
        reaper.track(running_pid(&info, port).unwrap());
        let log = wait_in_log(&case.worker_log(topology, port), "run pid=", &agent);
        assert!(log.contains(&format!("topology={topology} version=v1")), "{log}");
        // `{blob:app}` is the worker's link, `$GALE_BLOB_DIR/app`, pointing into the cache.
        let line = log.lines().find(|l| l.starts_with("run pid=")).unwrap();
        let blob_dir = line.split("blobdir=").nth(1).unwrap();
        assert!(line.contains(&format!("from={blob_dir}/app/bin/run.sh")), "{line}");
        let target = std::fs::read_link(Path::new(blob_dir).join("app")).unwrap();
        assert_eq!(target, case.cache_dir().join(format!("{}.x", sha256_hex(&code))));
    }
    assert_eq!(server.requests("/f/code.tar.gz"), 1, "one download for two slots");
    assert_eq!(case.cache_entries(), vec![format!("{}.x", sha256_hex(&code))]);
    let tmp_left: Vec<_> = std::fs::read_dir(case.local().join("tmp")).unwrap().flatten().collect();
    assert!(tmp_left.is_empty(), "nothing left in tmp: {tmp_left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_downloads_are_reported_retried_and_never_used() {
    let ports = [6700, 6701, 6702, 6703, 6704, 6705, 6706];
    let case = Case::new("bad", &ports, "download_retries = 0\ndownload_timeout_secs = 10");
    let reaper = case.reaper();
    let mut server = Server::start(case.path());
    let zk = zk_client(&shared_zk().connect_string()).await;
    let good = b"#!/bin/sh\necho \"good pid=$$\"\nexec /bin/sleep 1000\n".to_vec();
    std::fs::write(server.dir.join("prog"), &good).unwrap();
    let sha = sha256_hex(&good);
    let dead_port = free_port();
    let meta = |key: &str, sha: &str, size: usize, url: String| json!({"schema": 1, "key": key, "version": 1, "sha256": sha, "size": size, "url": url});
    let cases = [
        ("wrong-sha", meta("wrong-sha", &sha256_hex(b"other"), good.len(), server.url("f", "prog")), "sha256 mismatch"),
        ("wrong-size", meta("wrong-size", &sha, good.len() + 5, server.url("f", "prog")), "size"),
        ("truncated", meta("truncated", &sha, good.len(), server.url("trunc", "prog")), ""),
        ("missing", meta("missing", &sha, good.len(), server.url("f", "nothing-here")), "404"),
        ("broken", meta("broken", &sha, good.len(), server.url("status", "500")), "500"),
        ("down", meta("down", &sha, good.len(), format!("http://127.0.0.1:{dead_port}/f/prog")), ""),
    ];
    for (i, (key, meta, _)) in cases.iter().enumerate() {
        case.publish_meta(&zk, key, meta.clone()).await;
        let blobs = json!([{"key": key, "name": "prog"}]);
        case.assign(&zk, key, &[ports[i]], json!(["/bin/sh", "{blob:prog}"]), blobs).await;
    }
    // A topology without blobs on the last port: unaffected by all of the above.
    case.assign(&zk, "plain", &[6706], json!(["/bin/sleep", "1000"]), json!([])).await;
    let agent = case.start();

    let info = case
        .wait_info(&zk, &agent, "every bad blob reported on its slot, the plain worker running", |i| {
            running_pid(i, 6706).is_some()
                && ports[..6]
                    .iter()
                    .all(|p| slot_state(i, *p) == Some("waiting_for_blobs") && slot_error(i, *p).contains("blob"))
        })
        .await;
    reaper.track(running_pid(&info, 6706).unwrap());
    for (i, (key, _, cause)) in cases.iter().enumerate() {
        let error = slot_error(&info, ports[i]);
        assert!(error.contains(key) && error.contains(cause), "slot {}: {error}", ports[i]);
        assert!(slot_pid(&info, ports[i]).is_none(), "nothing runs on {}", ports[i]);
        assert!(read_log(&case.worker_log(key, ports[i])).is_empty(), "never launched from a bad blob");
    }
    // Retried with backoff: the failing urls are asked again.
    eventually("the failing downloads to be retried", LONG, || async {
        (server.requests("/f/prog") >= 4 && server.requests("/status/500") >= 2 && server.requests("/trunc/prog") >= 2)
            .then_some(())
    })
    .await;
    assert!(case.cache_entries().is_empty(), "nothing half downloaded or unverified is cached");
    assert!(agent.log_text().contains("blob download failed; nothing of it is used"));

    // Fixing the metadata (a new version) gets every slot running; the retries did no harm.
    for (key, _, _) in &cases {
        let fixed = json!({"schema": 1, "key": key, "version": 2, "sha256": sha, "size": good.len(),
                           "url": server.url("f", "prog")});
        case.publish_meta(&zk, key, fixed).await;
    }
    let info = case
        .wait_info(&zk, &agent, "every slot running after the fix", |i| {
            ports.iter().all(|p| running_pid(i, *p).is_some())
        })
        .await;
    for p in ports {
        reaper.track(running_pid(&info, p).unwrap());
        assert_eq!(slot_error(&info, p), "", "error cleared on {p}");
    }
    assert_eq!(case.cache_entries(), vec![sha.clone()], "one content, one entry");
    let tmp_left: Vec<_> = std::fs::read_dir(case.local().join("tmp")).unwrap().flatten().collect();
    assert!(tmp_left.is_empty(), "no partial downloads left: {tmp_left:?}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_escaping_their_directory_are_rejected() {
    let ports = [6700, 6701, 6702];
    let case = Case::new("evil", &ports, "download_retries = 0");
    let zk = zk_client(&shared_zk().connect_string()).await;
    let store = case.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let outside = case.path().join("outside");
    let evil = [
        ("dotdot", evil_tar_gz("../../../outside", None), ".."),
        ("absolute", evil_tar_gz(outside.to_str().unwrap(), None), "absolute"),
        ("symlink", evil_tar_gz("link", Some("/etc")), "link"),
    ];
    for (i, (key, archive, _)) in evil.iter().enumerate() {
        let path = store.join(key);
        std::fs::write(&path, archive).unwrap();
        case.publish(&zk, key, 1, archive, &format!("file://{}", path.display()), Some("tar.gz")).await;
        let blobs = json!([{"key": key, "name": "code", "extract": true}]);
        case.assign(&zk, key, &[ports[i]], json!(["{blob:code}/run"]), blobs).await;
    }
    let agent = case.start();
    let info = case
        .wait_info(&zk, &agent, "every evil archive reported", |i| {
            ports.iter().all(|p| slot_error(i, *p).contains("refusing entry"))
        })
        .await;
    for (i, (_, _, why)) in evil.iter().enumerate() {
        let error = slot_error(&info, ports[i]);
        assert!(error.contains(why), "slot {}: {error}", ports[i]);
        assert_eq!(slot_state(&info, ports[i]), Some("waiting_for_blobs"));
    }
    assert!(!outside.exists(), "nothing written outside the cache");
    assert!(case.cache_entries().is_empty());
}

/// A worker that prints its blob's content every 100 ms, through its link.
const WATCH_SH: &str = "while :; do echo \"see pid=$$ content=$(cat \"$GALE_BLOB_DIR/data\")\"; sleep 0.1; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_restarts_or_relinks_as_the_assignment_says() {
    let case = Case::new("update", &[6700, 6701], "download_retries = 0");
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let store = case.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let publish = |version: u64, content: &'static [u8]| {
        let path = store.join(format!("data-{version}"));
        std::fs::write(&path, content).unwrap();
        let url = format!("file://{}", path.display());
        let case = &case;
        let zk = &zk;
        async move { case.publish(zk, "data", version, content, &url, None).await }
    };
    publish(1, b"one").await;
    let restart = json!([{"key": "data", "name": "data", "restart_on_update": true}]);
    let relink = json!([{"key": "data", "name": "data", "restart_on_update": false}]);
    case.assign(&zk, "restarts", &[6700], json!(["/bin/sh", "-c", WATCH_SH]), restart).await;
    case.assign(&zk, "relinks", &[6701], json!(["/bin/sh", "-c", WATCH_SH]), relink).await;
    let agent = case.start();
    let info = case
        .wait_info(&zk, &agent, "both running", |i| running_pid(i, 6700).is_some() && running_pid(i, 6701).is_some())
        .await;
    let (restarts_pid, relinks_pid) = (running_pid(&info, 6700).unwrap(), running_pid(&info, 6701).unwrap());
    reaper.track(restarts_pid);
    reaper.track(relinks_pid);
    wait_in_log(&case.worker_log("restarts", 6700), "content=one", &agent);
    wait_in_log(&case.worker_log("relinks", 6701), "content=one", &agent);

    publish(2, b"two").await;
    // restart_on_update: a new process, on the new content; a kill by the agent, not a crash.
    let info = case
        .wait_info(&zk, &agent, "the restart_on_update worker relaunched", |i| {
            running_pid(i, 6700).is_some_and(|p| p != restarts_pid)
        })
        .await;
    let new_pid = running_pid(&info, 6700).unwrap();
    reaper.track(new_pid);
    let s = slot(&info, 6700).unwrap();
    assert_eq!((s["restarts"].clone(), s["last_exit"]["reason"].clone()), (json!(1), json!("killed")), "{s}");
    let log = wait_in_log(&case.worker_log("restarts", 6700), &format!("see pid={new_pid} content=two"), &agent);
    assert!(!log.contains(&format!("see pid={restarts_pid} content=two")), "the old worker never saw v2:\n{log}");
    assert!(!alive(restarts_pid));
    // Without it: the same process sees the new content through its link.
    wait_in_log(&case.worker_log("relinks", 6701), &format!("see pid={relinks_pid} content=two"), &agent);
    let info = case.wait_info(&zk, &agent, "state settled", |i| running_pid(i, 6701).is_some()).await;
    assert_eq!(running_pid(&info, 6701), Some(relinks_pid), "not restarted");
    assert_eq!(slot(&info, 6701).unwrap()["restarts"], json!(0));
    assert!(agent.log_text().contains("switched a running worker's blob link to the new version"));
    // The old link never dangled: every line of the relinked worker shows one or two.
    let log = read_log(&case.worker_log("relinks", 6701));
    assert!(log.lines().all(|l| l.ends_with("content=one") || l.ends_with("content=two")), "{log}");

    // The same bytes as a new version are still a new version (SPEC §3.3): restarted again.
    publish(3, b"two").await;
    let info = case
        .wait_info(&zk, &agent, "a restart for version 3", |i| running_pid(i, 6700).is_some_and(|p| p != new_pid))
        .await;
    reaper.track(running_pid(&info, 6700).unwrap());
    assert_eq!(slot(&info, 6700).unwrap()["restarts"], json!(2));
    assert_eq!(running_pid(&info, 6701), Some(relinks_pid), "agent log:\n{}", agent.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_shrinks_to_its_target_but_keeps_what_is_referenced() {
    // Target 0: only referenced entries may stay.
    let case = Case::new("shrink", &[6700, 6701], "cache_target_mb = 0\ndownload_retries = 0");
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let store = case.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let mut shas = Vec::new();
    for (key, content) in [("keep", vec![b'k'; 300_000]), ("gone", vec![b'g'; 300_000])] {
        let path = store.join(key);
        std::fs::write(&path, &content).unwrap();
        case.publish(&zk, key, 1, &content, &format!("file://{}", path.display()), None).await;
        shas.push(sha256_hex(&content));
    }
    let blobs = |key: &str| json!([{"key": key, "name": "b", "restart_on_update": false}]);
    case.assign(&zk, "keeper", &[6700], json!(["/bin/sleep", "1000"]), blobs("keep")).await;
    case.assign(&zk, "leaver", &[6701], json!(["/bin/sleep", "1000"]), blobs("gone")).await;
    let agent = case.start();
    let info = case
        .wait_info(&zk, &agent, "both running", |i| running_pid(i, 6700).is_some() && running_pid(i, 6701).is_some())
        .await;
    reaper.track(running_pid(&info, 6700).unwrap());
    reaper.track(running_pid(&info, 6701).unwrap());
    let mut both = shas.clone();
    both.sort();
    assert_eq!(case.cache_entries(), both, "referenced entries stay although the cache is above target");

    // A new version of `keep`: the old one is unreferenced once the link is switched.
    let v2 = vec![b'K'; 300_000];
    let path = store.join("keep-2");
    std::fs::write(&path, &v2).unwrap();
    case.publish(&zk, "keep", 2, &v2, &format!("file://{}", path.display()), None).await;
    // The leaver's assignment goes: its worker is stopped and its blob is no longer wanted.
    zk.delete(&format!("{}/assignments/leaver", case.root), None).await.unwrap();
    eventually("the cache to hold only the referenced entry", LONG, || async {
        (case.cache_entries() == vec![sha256_hex(&v2)]).then_some(())
    })
    .await;
    let info = case.wait_info(&zk, &agent, "slot 6701 empty", |i| slot(i, 6701).is_none()).await;
    assert!(running_pid(&info, 6700).is_some(), "the keeper kept running");
    let link = std::fs::read_link(
        case.local().join("workers").join(slot(&info, 6700).unwrap()["worker_id"].as_str().unwrap()).join("blobs/b"),
    )
    .unwrap();
    assert_eq!(link, case.cache_dir().join(sha256_hex(&v2)).join("file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_agent_restart_the_cache_and_references_are_rebuilt_from_disk() {
    let case = Case::new("restart", &[6700, 6701], "cache_target_mb = 0\ndownload_retries = 0");
    let reaper = case.reaper();
    let mut server = Server::start(case.path());
    let zk = zk_client(&shared_zk().connect_string()).await;
    let code = tar_gz(case.path(), "code", &[("bin/run.sh", 0o755, RUN_SH), ("VERSION", 0o644, b"v1")]);
    std::fs::write(server.dir.join("code.tar.gz"), &code).unwrap();
    case.publish(&zk, "code", 1, &code, &server.url("f", "code.tar.gz"), Some("tar.gz")).await;
    let blobs = json!([{"key": "code", "name": "app", "extract": true}]);
    case.assign(&zk, "first", &[6700], json!(["{blob:app}/bin/run.sh"]), blobs.clone()).await;
    let mut agent = case.start();
    let info = case.wait_info(&zk, &agent, "first running", |i| running_pid(i, 6700).is_some()).await;
    let pid = running_pid(&info, 6700).unwrap();
    reaper.track(pid);

    // The agent dies hard; the blob server goes away too.
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    agent.wait_exit_signal();
    server.stop();
    let agent = case.start();
    let info = case
        .wait_info(&zk, &agent, "the worker adopted", |i| running_pid(i, 6700) == Some(pid) && i["state"] == "running")
        .await;
    assert_eq!(running_pid(&info, 6700), Some(pid), "same process");
    // A new topology using the same blob starts from the cache: nothing to download.
    case.assign(&zk, "second", &[6701], json!(["{blob:app}/bin/run.sh"]), blobs).await;
    let info = case.wait_info(&zk, &agent, "second running", |i| running_pid(i, 6701).is_some()).await;
    reaper.track(running_pid(&info, 6701).unwrap());
    wait_in_log(&case.worker_log("second", 6701), "version=v1", &agent);
    assert_eq!(server.requests("/f/code.tar.gz"), 1, "downloaded once, before the restart");
    zk.delete(&format!("{}/assignments/second", case.root), None).await.unwrap();
    case.wait_info(&zk, &agent, "slot 6701 empty", |i| slot(i, 6701).is_none()).await;

    // A new version nobody can download: the assignment now wants v2, so only the adopted
    // worker's link (rebuilt from disk) holds v1, and with target 0 cleanup runs every pass.
    let v2 = tar_gz(case.path(), "code2", &[("bin/run.sh", 0o755, RUN_SH), ("VERSION", 0o644, b"v2")]);
    case.publish(&zk, "code", 2, &v2, &server.url("f", "code2.tar.gz"), Some("tar.gz")).await;
    let failed = |agent: &Agent| agent.log_text().matches("blob download failed").count();
    let before = failed(&agent);
    eventually("two failed passes for v2", LONG, || async { (failed(&agent) >= before + 2).then_some(()) }).await;
    assert_eq!(case.cache_entries(), vec![format!("{}.x", sha256_hex(&code))]);
    let info = case.wait_info(&zk, &agent, "first still running", |i| running_pid(i, 6700).is_some()).await;
    assert_eq!(running_pid(&info, 6700), Some(pid), "not restarted: v2 is not local");
    assert!(alive(pid));
}

/// A worker that, every half second, reads its own blobs and then each path in `$OTHER` (another
/// user's blob, through that worker's link and by its path in the cache), printing what it got:
/// the content, or `cat`'s error (`Permission denied` is EACCES).
const PEEK_SH: &str = r#"n=0
while :; do
  n=$((n+1))
  echo "round=$n own=$(cat "$GALE_BLOB_DIR/data" 2>&1) lib=$(cat "$GALE_BLOB_DIR/lib" 2>&1)"
  for p in $OTHER; do echo "round=$n other=$(cat "$p" 2>&1)"; done
  sleep 0.5
done"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_read_the_blobs_of_another_user_and_both_survive_an_agent_restart() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: running workers as other users needs root");
        return;
    }
    let (uid_a, uid_b) = (test_user("gale-blob-a"), test_user("gale-blob-b"));
    let case = Case::new("private", &[6700, 6701], "cache_target_mb = 0\ndownload_retries = 0");
    case.edit(|text| {
        format!(
            "{text}\n[worker]\nrun_as_user = true\nallowed_users = [\"gale-blob-a\", \"gale-blob-b\"]\nmin_uid = 1000\n"
        )
    });
    case.open_to_worker_users();
    let reaper = case.reaper();
    let zk = zk_client(&shared_zk().connect_string()).await;
    let store = case.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let mut shas = Vec::new();
    for (key, content) in [("a-data", "secret of a"), ("b-data", "secret of b"), ("common", "shared library")] {
        std::fs::write(store.join(key), content).unwrap();
        let url = format!("file://{}", store.join(key).display());
        case.publish(&zk, key, 1, content.as_bytes(), &url, None).await;
        shas.push(sha256_hex(content.as_bytes()));
    }
    let assign = |topology: &str, port: u16, user: &str, data: &str, other: String| {
        let a = json!({"schema": 1, "topology_id": topology,
            "launch": {"command": ["/bin/sh", "-c", PEEK_SH], "env": {"OTHER": other}, "user": user},
            "blobs": [{"key": data, "name": "data"}, {"key": "common", "name": "lib"}],
            "workers": [{"supervisor_id": case.id, "port": port}]});
        let (zk, path) = (&zk, format!("{}/assignments/{topology}", case.root));
        async move { put_json(zk, &path, &a).await }
    };
    assign("topo-b", 6701, "gale-blob-b", "b-data", String::new()).await;
    let mut agent = case.start();
    let info = case.wait_info(&zk, &agent, "b's worker running", |i| running_pid(i, 6701).is_some()).await;
    let pid_b = running_pid(&info, 6701).unwrap();
    reaper.track(pid_b);
    // B's blob, through B's worker's link and by its place in the cache.
    let b_worker = slot(&info, 6701).unwrap()["worker_id"].as_str().unwrap().to_owned();
    let b_link = case.local().join("workers").join(&b_worker).join("blobs/data");
    let b_file = std::fs::read_link(&b_link).unwrap();
    assert_eq!(b_file, case.cache_dir().join(format!("u{uid_b}/{}/file", shas[1])));
    assign("topo-a", 6700, "gale-blob-a", "a-data", format!("{} {}", b_link.display(), b_file.display())).await;
    let info = case.wait_info(&zk, &agent, "a's worker running", |i| running_pid(i, 6700).is_some()).await;
    let pid_a = running_pid(&info, 6700).unwrap();
    reaper.track(pid_a);

    // A reads its own blobs and gets EACCES on B's, both ways; B reads its own.
    let log_a = case.worker_log("topo-a", 6700);
    let text = wait_in_log(&log_a, &format!("other=cat: {}: Permission denied", b_file.display()), &agent);
    assert!(text.contains("own=secret of a lib=shared library"), "{text}");
    assert!(text.contains(&format!("other=cat: {}: Permission denied", b_link.display())), "{text}");
    assert!(!text.contains("secret of b"), "a read b's blob: {text}");
    let log_b = case.worker_log("topo-b", 6701);
    wait_in_log(&log_b, "own=secret of b lib=shared library", &agent);
    // Each user has its own directory (only it may enter) and its own copy of the shared blob.
    let owned = |p: PathBuf| std::fs::metadata(p).map(|m| (m.uid(), m.mode() & 0o7777)).unwrap();
    assert_eq!(owned(case.cache_dir()), (0, 0o711));
    assert_eq!(owned(case.cache_dir().join(format!("u{uid_a}"))), (uid_a, 0o500));
    assert_eq!(owned(case.cache_dir().join(format!("u{uid_b}"))), (uid_b, 0o500));
    assert_eq!(case.cache_entries(), vec![format!("u{uid_a}"), format!("u{uid_b}")]);
    let entries = |uid: u32| sorted_names(&case.cache_dir().join(format!("u{uid}")));
    let (mut want_a, mut want_b) = (vec![shas[0].clone(), shas[2].clone()], vec![shas[1].clone(), shas[2].clone()]);
    want_a.sort();
    want_b.sort();
    assert_eq!((entries(uid_a), entries(uid_b)), (want_a, want_b));

    // The agent dies hard and comes back: both workers adopted, their blobs still theirs and
    // still readable (with cache_target_mb = 0, an entry not referenced again would be gone).
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    agent.wait_exit_signal();
    let agent = case.start();
    case.wait_info(&zk, &agent, "both workers adopted", |i| {
        i["state"] == "running" && running_pid(i, 6700) == Some(pid_a) && running_pid(i, 6701) == Some(pid_b)
    })
    .await;
    let rounds = |log: &Path| read_log(log).matches(" own=secret of ").count();
    let (before_a, before_b) = (rounds(&log_a), rounds(&log_b));
    // 3 s or more: past a blob sync (and cleanup) pass of the new agent, every 2 s.
    eventually("six more reads by each worker", LONG, || async {
        (rounds(&log_a) >= before_a + 6 && rounds(&log_b) >= before_b + 6).then_some(())
    })
    .await;
    for log in [&log_a, &log_b] {
        let text = read_log(log);
        assert!(!text.contains("own=cat:") && !text.contains("lib=cat:"), "a worker lost its blob: {text}");
    }
    assert!(!read_log(&log_a).contains("secret of b"));
    // Same processes still: their links were recognised as their users' entries, no update.
    let info = case.wait_info(&zk, &agent, "the state after the reads", |i| i["state"] == "running").await;
    assert_eq!((running_pid(&info, 6700), running_pid(&info, 6701)), (Some(pid_a), Some(pid_b)));
    assert_eq!((entries(uid_a).len(), entries(uid_b).len()), (2, 2));
    assert_eq!(owned(case.cache_dir().join(format!("u{uid_b}"))), (uid_b, 0o500));
}

/// The names in `dir`, sorted.
fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}
