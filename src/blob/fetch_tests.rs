//! Tests of `fetch` against real files, a real HTTP server (python3 -m http.server) on loopback
//! and a hand-written TCP server that lies about its Content-Length.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use super::*;

const FAST: Backoff = Backoff { first: Duration::from_millis(10), cap: Duration::from_millis(20) };
const TIMEOUT: Duration = Duration::from_secs(10);

fn sha(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn meta(url: String, content: &[u8]) -> BlobMeta {
    BlobMeta {
        schema: 1,
        key: "code".into(),
        version: 7,
        sha256: sha(content),
        size: content.len() as u64,
        url,
        archive: None,
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn reason(err: BlobError) -> String {
    match err {
        BlobError::Fetch { ref key, version, attempts, ref reason, .. } => {
            assert_eq!((key.as_str(), version), ("code", 7));
            assert!(attempts >= 1);
            reason.clone()
        }
        other => panic!("expected a fetch error, got {other}"),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    src: PathBuf,
    tmp: PathBuf,
}

fn fixture(content: &[u8]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("srv");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("blob"), content).unwrap();
    let tmp = dir.path().join("tmp");
    Fixture { tmp, src, _dir: dir }
}

#[tokio::test]
async fn file_url_fetches_a_verified_copy() {
    let f = fixture(b"hello blob");
    let m = meta(format!("file://{}", f.src.join("blob").display()), b"hello blob");
    let path = fetch_with(&m, &f.tmp, TIMEOUT, 0, FAST).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"hello blob");
    assert_eq!(entries(&f.tmp), vec![path]);
}

#[tokio::test]
async fn file_url_with_wrong_sha256_fails_and_leaves_nothing() {
    let f = fixture(b"hello blob");
    let mut m = meta(format!("file://{}", f.src.join("blob").display()), b"hello blob");
    m.sha256 = sha(b"other");
    let err = reason(fetch_with(&m, &f.tmp, TIMEOUT, 1, FAST).await.unwrap_err());
    assert!(err.starts_with(&format!("sha256 mismatch: expected {}, got {}", m.sha256, sha(b"hello blob"))), "{err}");
    assert!(entries(&f.tmp).is_empty());
}

#[tokio::test]
async fn file_url_with_wrong_size_fails_and_leaves_nothing() {
    let f = fixture(b"hello blob");
    for (size, want) in
        [(3, "size mismatch: expected 3 bytes, got more"), (99, "size mismatch: expected 99 bytes, got 10")]
    {
        let mut m = meta(format!("file://{}", f.src.join("blob").display()), b"hello blob");
        m.size = size;
        let err = reason(fetch_with(&m, &f.tmp, TIMEOUT, 0, FAST).await.unwrap_err());
        assert_eq!(err, want);
        assert!(entries(&f.tmp).is_empty());
    }
}

#[tokio::test]
async fn missing_file_fails_after_the_retries() {
    let f = fixture(b"x");
    let m = meta(format!("file://{}", f.src.join("nope").display()), b"x");
    let err = fetch_with(&m, &f.tmp, TIMEOUT, 2, FAST).await.unwrap_err();
    assert!(matches!(err, BlobError::Fetch { attempts: 3, .. }), "{err}");
    assert!(err.to_string().contains("cannot open"), "{err}");
    assert!(entries(&f.tmp).is_empty());
}

/// `python3 -m http.server` serving `dir`, killed on drop.
struct HttpServer {
    child: Child,
    port: u16,
}

impl HttpServer {
    async fn start(dir: &Path) -> HttpServer {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed for the http tests");
        let server = HttpServer { child, port };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "http.server did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn http_fetch_ok_and_404_after_retries() {
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let f = fixture(&content);
    let server = HttpServer::start(&f.src).await;
    let m = meta(format!("http://127.0.0.1:{}/blob", server.port), &content);
    let path = fetch_with(&m, &f.tmp, TIMEOUT, 1, FAST).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), content);
    std::fs::remove_file(path).unwrap();

    let m = meta(format!("http://127.0.0.1:{}/missing", server.port), &content);
    let err = fetch_with(&m, &f.tmp, TIMEOUT, 1, FAST).await.unwrap_err();
    assert!(matches!(err, BlobError::Fetch { attempts: 2, .. }), "{err}");
    assert_eq!(reason(err), "http 404");
    assert!(entries(&f.tmp).is_empty());
}

#[tokio::test]
async fn http_server_down_fails() {
    let f = fixture(b"x");
    let m = meta(format!("http://127.0.0.1:{}/blob", free_port()), b"x");
    let err = reason(fetch_with(&m, &f.tmp, TIMEOUT, 1, FAST).await.unwrap_err());
    assert!(err.starts_with("request failed"), "{err}");
    assert!(entries(&f.tmp).is_empty());
}

#[tokio::test]
async fn truncated_http_transfer_fails_and_leaves_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Serves exactly the two attempts (retries = 1), then the thread ends.
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789").unwrap();
            // Dropping `conn` closes the connection 990 bytes short.
        }
    });
    let f = fixture(b"");
    let m = meta(format!("http://127.0.0.1:{port}/blob"), &[b'x'; 1000]);
    let err = fetch_with(&m, &f.tmp, TIMEOUT, 1, FAST).await.unwrap_err();
    assert!(matches!(err, BlobError::Fetch { attempts: 2, .. }), "{err}");
    assert!(reason(err).starts_with("transfer failed"));
    assert!(entries(&f.tmp).is_empty());
    server.join().unwrap();
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let b = Backoff::DEFAULT;
    let delays: Vec<u64> = (1..=9).map(|n| b.delay(n).as_millis() as u64).collect();
    assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    assert_eq!(b.delay(1000), Duration::from_secs(30));
}
