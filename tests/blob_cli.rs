//! `gale blob put|list|rm`: the real binary against a real ZooKeeper, each test under its own
//! root; a shared-directory store in a temp dir and an HTTP store served by a tiny python3
//! server that accepts PUT.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use zookeeper_client as zkc;

/// sha256("hello blob\n").
const HELLO_SHA: &str = "a0639d03e7e77d7630dffce7bfe26d51813d4c799f13821e5b6786e2736baaed";

async fn get(zk: &zkc::Client, path: &str) -> Option<Value> {
    match zk.get_data(path).await {
        Ok((data, _)) => Some(serde_json::from_slice(&data).expect("JSON")),
        Err(zkc::Error::NoNode) => None,
        Err(e) => panic!("reading {path}: {e}"),
    }
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_list_rm_with_a_directory_store() {
    let root = "/t-blob-dir";
    let (tmp, config) = setup(root);
    let zk = zk_client(&shared_zk().connect_string()).await;
    let store = tmp.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let file = tmp.path().join("code.tar.gz");
    std::fs::write(&file, b"hello blob\n").unwrap();
    let sha = sha256_of(&file);
    let (file_arg, store_arg) = (file.to_str().unwrap(), store.to_str().unwrap());

    let (out, _) = expect(&config, &["blob", "put", "wc-code", file_arg, "--store", store_arg], 0);
    assert!(out.contains("published blob wc-code version 1") && out.contains(&sha), "{out}");
    let node = get(&zk, &format!("{root}/blobstore/wc-code")).await.expect("meta written");
    let url = format!("file://{}/wc-code/1", store.display());
    assert_eq!(
        node,
        json!({"schema": 1, "key": "wc-code", "version": 1, "sha256": sha, "size": 11, "url": url,
               "archive": "tar.gz"}),
        "archive guessed from the file name"
    );
    assert_eq!(std::fs::read(store.join("wc-code/1")).unwrap(), b"hello blob\n");

    // A second put is the next version, with its own copy; --archive overrides the guess.
    std::fs::write(&file, b"hello again\n").unwrap();
    let (out, _) = expect(&config, &["blob", "put", "wc-code", file_arg, "--store", store_arg, "--archive", "zip"], 0);
    assert!(out.contains("version 2"), "{out}");
    let node = get(&zk, &format!("{root}/blobstore/wc-code")).await.unwrap();
    assert_eq!((node["version"].clone(), node["size"].clone()), (json!(2), json!(12)));
    assert_eq!(node["sha256"], json!(sha256_of(&file)));
    assert_eq!(node["archive"], json!("zip"));
    assert_eq!(std::fs::read(store.join("wc-code/1")).unwrap(), b"hello blob\n", "version 1 is kept");
    assert_eq!(std::fs::read(store.join("wc-code/2")).unwrap(), b"hello again\n");

    // A plain file has no archive.
    let plain = tmp.path().join("data.bin");
    std::fs::write(&plain, b"x").unwrap();
    expect(&config, &["blob", "put", "data", plain.to_str().unwrap(), "--store", store_arg], 0);
    assert_eq!(get(&zk, &format!("{root}/blobstore/data")).await.unwrap()["archive"], Value::Null);

    // A node nobody can parse is listed with its error, between the good ones.
    let options = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    zk.create(&format!("{root}/blobstore/broken"), b"{not json", &options).await.unwrap();
    let (list, _) = expect(&config, &["blob", "list"], 0);
    let line = |key: &str| list.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key} in:\n{list}"));
    let wc: Vec<&str> = line("wc-code").split_whitespace().collect();
    let url2 = format!("file://{}/wc-code/2", store.display());
    assert_eq!(wc, ["wc-code", "2", "12", &node["sha256"].as_str().unwrap()[..12], &url2], "{list}");
    assert!(line("data").split_whitespace().nth(1) == Some("1"), "{list}");
    assert!(line("broken").contains("(unreadable)") && line("broken").contains("not a valid payload"), "{list}");

    let (out, _) = expect(&config, &["blob", "rm", "wc-code"], 0);
    assert!(out.contains("removed blob wc-code") && out.contains("left in place") && out.contains(&url2), "{out}");
    assert_eq!(get(&zk, &format!("{root}/blobstore/wc-code")).await, None);
    assert!(store.join("wc-code/2").exists(), "rm leaves the stored copy");
    let (_, err) = expect(&config, &["blob", "rm", "wc-code"], 1);
    assert!(err.contains("no blob wc-code"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_is_written() {
    let root = "/t-blob-bad";
    let (tmp, config) = setup(root);
    let zk = zk_client(&shared_zk().connect_string()).await;
    let store = tmp.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let store_arg = store.to_str().unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"hello blob\n").unwrap();
    assert_eq!(sha256_of(&file), HELLO_SHA);
    let file_arg = file.to_str().unwrap();

    let missing = tmp.path().join("no-such-file");
    let (_, err) = expect(&config, &["blob", "put", "k", missing.to_str().unwrap(), "--store", store_arg], 1);
    assert!(err.starts_with("gale: ") && err.contains(missing.to_str().unwrap()) && err.lines().count() == 1, "{err}");

    for key in ["../x", "_k", "a/b", "."] {
        let (_, err) = expect(&config, &["blob", "put", key, file_arg, "--store", store_arg], 2);
        assert!(err.contains("blob key"), "{err}");
    }
    let (_, err) = expect(&config, &["blob", "rm", "a b"], 2);
    assert!(err.contains("blob key"), "{err}");
    let (_, err) = expect(&config, &["blob", "put", "k", file_arg, "--store", "relative/dir"], 2);
    assert!(err.contains("--store relative/dir"), "{err}");
    expect(&config, &["blob", "put", "k", file_arg, "--store", store_arg, "--archive", "rar"], 2);

    // A store directory that does not exist is not created: it should be a shared mount.
    let gone = tmp.path().join("not-mounted");
    let (_, err) = expect(&config, &["blob", "put", "k", file_arg, "--store", gone.to_str().unwrap()], 1);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!gone.exists());
    assert_eq!(get(&zk, &format!("{root}/blobstore/k")).await, None);

    // Unreachable ZooKeeper: exit 1, nothing stored.
    let dead = AgentSpec::new(&format!("127.0.0.1:{}", free_port()), root).write(&tmp.path().join("dead"));
    let (_, err) = expect(&dead, &["blob", "put", "k", file_arg, "--store", store_arg], 1);
    assert!(err.contains("cannot reach zookeeper"), "{err}");
    assert!(!store.join("k").exists());
}

/// A python3 server that stores each PUT body under `dir` (path `/` → `_`) and answers 201,
/// or 500 for paths under `/fail/`.
struct PutServer {
    child: Child,
    port: u16,
}

impl PutServer {
    fn start(dir: &Path) -> PutServer {
        let script = r#"
import http.server, os, sys
out = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.startswith("/fail/"):
            self.send_response(500); self.end_headers(); return
        with open(os.path.join(out, self.path.strip("/").replace("/", "_")), "wb") as f:
            f.write(body)
        self.send_response(201); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;
        let port = free_port();
        let child = Command::new("python3")
            .args(["-c", script, &port.to_string(), dir.to_str().unwrap()])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 runs");
        wait_for("the PUT server", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        PutServer { child, port }
    }
}

impl Drop for PutServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_into_an_http_store() {
    let root = "/t-blob-http";
    let (tmp, config) = setup(root);
    let zk = zk_client(&shared_zk().connect_string()).await;
    let received = tmp.path().join("received");
    std::fs::create_dir(&received).unwrap();
    let server = PutServer::start(&received);
    let file = tmp.path().join("code.zip");
    std::fs::write(&file, b"hello blob\n").unwrap();
    let file_arg = file.to_str().unwrap();
    let base = format!("http://127.0.0.1:{}/blobs/", server.port);

    let (out, _) = expect(&config, &["blob", "put", "web", file_arg, "--store", &base], 0);
    let url = format!("http://127.0.0.1:{}/blobs/web/1", server.port);
    assert!(out.contains(&url), "{out}");
    assert_eq!(std::fs::read(received.join("blobs_web_1")).unwrap(), b"hello blob\n");
    let node = get(&zk, &format!("{root}/blobstore/web")).await.expect("meta written");
    assert_eq!(
        node,
        json!({"schema": 1, "key": "web", "version": 1, "sha256": HELLO_SHA, "size": 11, "url": url, "archive": "zip"})
    );

    // A store that refuses the upload publishes nothing.
    let failing = format!("http://127.0.0.1:{}/fail", server.port);
    let (_, err) = expect(&config, &["blob", "put", "web", file_arg, "--store", &failing], 1);
    assert!(err.contains("uploading") && err.contains("500"), "{err}");
    assert_eq!(get(&zk, &format!("{root}/blobstore/web")).await.unwrap()["version"], json!(1));
}
