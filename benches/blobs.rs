//! What localizing a blob costs: download + verify throughput against `curl && sha256sum`, the
//! full cache miss, and the launch-time cost of a cache hit. Prints numbers; asserts nothing
//! about them.
//!
//!     cargo bench --bench blobs                           # 200 MB blob, 5 rounds, ~30 s
//!     GALE_BENCH_BLOB_MB=50 GALE_BENCH_ROUNDS=3 cargo bench --bench blobs
//!     GALE_BENCH_HIT_ITERS=100000 cargo bench --bench blobs
//!
//! 1. Throughput. A blob of `GALE_BENCH_BLOB_MB` MB (10^6 bytes; default 200) of pseudo-random
//!    bytes is served by `python3 -m http.server` on loopback. Each round runs, one after the
//!    other on the same URL:
//!    - gale fetch: `gale::blob::fetch` (stream, hash, count, fsync), spawned on a 2-worker
//!      tokio runtime like the daemon's;
//!    - gale cache miss: `BlobCache::open` on an empty root + `ensure` (fetch, then stage, fsync
//!      the tree, rename into the cache, fsync the root): what the agent does on a miss;
//!    - pipeline: `curl -s -o f URL && sha256sum f`, timed as a whole (no fsync);
//!    - pipeline + fsync: the same `&& sync f` (coreutils `sync FILE` fsyncs it), the fair
//!      comparison for the durable gale numbers;
//!    - context: `curl -s -o f URL && openssl sha256 f` (a pipeline hashing with SHA-NI; only
//!      if `openssl` is on PATH) and curl -> /dev/null (what the server can send at all).
//!
//!    After the rounds, for context: `sha256sum` alone on the warm served file, and the `sha2`
//!    crate (gale's hash) over the same bytes in memory.
//!
//!    One warm-up round (not counted) first, so the served file is in the page cache for every
//!    method alike; every download is deleted before the next one. `GALE_BENCH_ROUNDS` rounds
//!    (default 5); medians.
//! 2. Cache hit: `ensure` of an entry already present, plain and extracted, timed per call over
//!    `GALE_BENCH_HIT_ITERS` calls (default 20000); p50/p99/max in µs. A hit reads nothing but
//!    records the use (an open and a futimens of the entry dir), so that floor is printed too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gale::blob::{BlobCache, BlobMeta, fetch};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(600);
const MB: f64 = 1e6;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// fixtures

/// Writes `size` pseudo-random bytes (fixed seed) to `path`; returns their sha256.
fn write_blob(path: &Path, size: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(0x6a1e);
    let mut file = std::fs::File::create(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    file.sync_all().unwrap();
    hex(&hasher.finalize())
}

fn meta(key: &str, sha256: String, size: u64, url: String, archive: Option<&str>) -> BlobMeta {
    BlobMeta { schema: 1, key: key.into(), version: 1, sha256, size, url, archive: archive.map(str::to_owned) }
}

/// A tar.gz of `files` small files, in memory.
fn tar_gz(files: usize) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for i in 0..files {
        let data = format!("file {i}\n").repeat(100);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, format!("lib/part-{i}.txt"), data.as_bytes()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// `python3 -m http.server` serving `dir` on loopback, killed on drop.
struct HttpServer {
    child: Child,
    port: u16,
}

impl HttpServer {
    fn start(dir: &Path) -> HttpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed for this bench");
        let server = HttpServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.answers() {
            assert!(Instant::now() < deadline, "http.server did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// One `HEAD /` answered with an HTTP status line.
    fn answers(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        if conn.write_all(b"HEAD / HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut head = [0u8; 8];
        conn.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// the methods compared

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    GaleFetch,
    GaleCacheMiss,
    Pipeline,
    PipelineFsync,
    PipelineOpenssl,
    CurlDevNull,
}

impl Method {
    const ALL: [Method; 6] = [
        Method::GaleFetch,
        Method::GaleCacheMiss,
        Method::Pipeline,
        Method::PipelineFsync,
        Method::PipelineOpenssl,
        Method::CurlDevNull,
    ];

    fn label(self) -> &'static str {
        match self {
            Method::GaleFetch => "gale::blob::fetch (verify + fsync)",
            Method::GaleCacheMiss => "gale cache miss: open + ensure (fetch + install)",
            Method::Pipeline => "curl -s -o f URL && sha256sum f",
            Method::PipelineFsync => "curl -s -o f URL && sha256sum f && sync f",
            Method::PipelineOpenssl => "context: curl -s -o f URL && openssl sha256 f",
            Method::CurlDevNull => "curl -s -o /dev/null URL (server ceiling)",
        }
    }
}

struct Run<'a> {
    meta: &'a BlobMeta,
    work: &'a Path,
}

impl Run<'_> {
    /// Runs `method` once; returns its wall time in seconds. Leaves no download behind.
    async fn once(&self, method: Method, round: usize) -> f64 {
        let tmp = self.work.join("tmp");
        let out = self.work.join("out");
        let url = self.meta.url.as_str();
        let started = Instant::now();
        match method {
            // Spawned, so they run on a runtime worker as the daemon's tasks do.
            Method::GaleFetch => {
                let meta = self.meta.clone();
                let path = tokio::spawn(async move { fetch(&meta, &tmp, TIMEOUT, 0).await }).await.unwrap().unwrap();
                let secs = started.elapsed().as_secs_f64();
                std::fs::remove_file(path).unwrap();
                secs
            }
            Method::GaleCacheMiss => {
                let root = self.work.join(format!("cache-{round}"));
                let (meta, cache_root) = (self.meta.clone(), root.clone());
                let path = tokio::spawn(async move {
                    let mut cache = BlobCache::open(&cache_root, &tmp).unwrap();
                    cache.ensure(&meta, false, TIMEOUT, 0).await
                })
                .await
                .unwrap()
                .unwrap();
                let secs = started.elapsed().as_secs_f64();
                assert_eq!(std::fs::metadata(&path).unwrap().len(), self.meta.size);
                std::fs::remove_dir_all(&root).unwrap();
                secs
            }
            Method::Pipeline | Method::PipelineFsync | Method::PipelineOpenssl => {
                let script = match method {
                    Method::Pipeline => r#"curl -s -o "$1" "$2" && sha256sum "$1""#,
                    Method::PipelineFsync => r#"curl -s -o "$1" "$2" && sha256sum "$1" && sync "$1""#,
                    _ => r#"curl -s -o "$1" "$2" && openssl sha256 -r "$1""#,
                };
                let output = Command::new("sh").args(["-c", script, "sh"]).arg(&out).arg(url).output().unwrap();
                let secs = started.elapsed().as_secs_f64();
                assert!(output.status.success(), "{script}: {output:?}");
                let digest = String::from_utf8_lossy(&output.stdout);
                assert!(digest.starts_with(&self.meta.sha256), "{script} printed {digest}");
                std::fs::remove_file(&out).unwrap();
                secs
            }
            Method::CurlDevNull => {
                let output = Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{size_download}", url])
                    .output()
                    .unwrap();
                let secs = started.elapsed().as_secs_f64();
                assert!(output.status.success(), "curl: {output:?}");
                assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), self.meta.size.to_string());
                secs
            }
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// ---------------------------------------------------------------------------------------------
// cache hits

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() { f64::NAN } else { v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] }
}

fn hit_row(label: &str, mut us: Vec<f64>) -> String {
    us.sort_by(f64::total_cmp);
    format!(
        "| {label:<44} | {:>6} | {:>7.1} | {:>7.1} | {:>8.1} |",
        us.len(),
        pct(&us, 0.5),
        pct(&us, 0.99),
        us.last().copied().unwrap_or(f64::NAN)
    )
}

async fn hit_micros(cache: &mut BlobCache, meta: &BlobMeta, extract: bool, iters: usize) -> Vec<f64> {
    let mut us = Vec::with_capacity(iters);
    for _ in 0..iters {
        let started = Instant::now();
        let path = cache.ensure(meta, extract, TIMEOUT, 0).await.unwrap();
        us.push(started.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(path);
    }
    us
}

/// The syscalls a hit makes to record the use: open the entry dir, set its mtime.
fn touch_micros(dir: &Path, iters: usize) -> Vec<f64> {
    (0..iters)
        .map(|_| {
            let started = Instant::now();
            std::fs::File::open(dir).and_then(|f| f.set_modified(std::time::SystemTime::now())).unwrap();
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

async fn cache_hits(work: &Path, iters: usize) -> Vec<String> {
    let src = work.join("hit-src");
    std::fs::create_dir_all(&src).unwrap();
    let plain_bytes = b"a small plain blob\n".repeat(1000);
    std::fs::write(src.join("plain"), &plain_bytes).unwrap();
    let archive = tar_gz(20);
    std::fs::write(src.join("code.tar.gz"), &archive).unwrap();
    let url = |name: &str| format!("file://{}", src.join(name).display());
    let plain = meta("plain", hex(&Sha256::digest(&plain_bytes)), plain_bytes.len() as u64, url("plain"), None);
    let code = meta("code", hex(&Sha256::digest(&archive)), archive.len() as u64, url("code.tar.gz"), Some("tar.gz"));

    let mut cache = BlobCache::open(&work.join("hit-cache"), &work.join("hit-tmp")).unwrap();
    // The misses that fill the cache, then a few hits to warm up.
    cache.ensure(&plain, false, TIMEOUT, 0).await.unwrap();
    let extracted_dir = cache.ensure(&code, true, TIMEOUT, 0).await.unwrap();
    hit_micros(&mut cache, &plain, false, 100).await;
    hit_micros(&mut cache, &code, true, 100).await;

    let rows = vec![
        hit_row("ensure, hit, plain entry", hit_micros(&mut cache, &plain, false, iters).await),
        hit_row("ensure, hit, extracted entry (20 files)", hit_micros(&mut cache, &code, true, iters).await),
        hit_row("floor: open + futimens of the entry dir", touch_micros(&extracted_dir, iters)),
    ];
    let stats = cache.stats();
    assert_eq!(stats.misses, 2, "every timed call must be a hit");
    rows
}

// ---------------------------------------------------------------------------------------------

/// Seconds to hash `path` (warm in the page cache) with coreutils `sha256sum`, and with the
/// `sha2` crate gale uses over the same bytes already in memory.
fn hash_only(path: &Path, sha256: &str) -> (f64, f64) {
    let started = Instant::now();
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    let coreutils = started.elapsed().as_secs_f64();
    assert!(String::from_utf8_lossy(&output.stdout).starts_with(sha256));
    let bytes = std::fs::read(path).unwrap();
    let started = Instant::now();
    let mut hasher = Sha256::new();
    for chunk in bytes.chunks(64 * 1024) {
        hasher.update(chunk);
    }
    let digest = hex(&hasher.finalize());
    let crate_secs = started.elapsed().as_secs_f64();
    assert_eq!(digest, sha256);
    (coreutils, crate_secs)
}

/// `/proc/loadavg`'s 1-minute figure: the machine may be shared, so every run says how busy.
fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_owned()
}

fn on_path(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let blob_mb: u64 = env_or("GALE_BENCH_BLOB_MB", 200);
    let rounds: usize = env_or("GALE_BENCH_ROUNDS", 5);
    let hit_iters: usize = env_or("GALE_BENCH_HIT_ITERS", 20_000);
    for tool in ["curl", "sha256sum", "sync", "python3"] {
        assert!(on_path(tool), "this bench needs `{tool}` on PATH");
    }
    let methods: Vec<Method> =
        Method::ALL.into_iter().filter(|&m| m != Method::PipelineOpenssl || on_path("openssl")).collect();
    let load_start = load1();
    let dir = tempfile::Builder::new().prefix("gale-bench-blobs-").tempdir().unwrap();
    let work = dir.path();
    let srv = work.join("srv");
    std::fs::create_dir(&srv).unwrap();
    let size = blob_mb * 1_000_000;
    eprintln!("[1/3] writing a {blob_mb} MB blob ...");
    let sha256 = write_blob(&srv.join("blob"), size);
    let server = HttpServer::start(&srv);
    let blob = meta("bench-blob", sha256.clone(), size, format!("http://127.0.0.1:{}/blob", server.port), None);
    let run = Run { meta: &blob, work };

    eprintln!("[2/3] throughput: 1 warm-up + {rounds} rounds of {} methods ...", methods.len());
    for &method in &methods {
        run.once(method, 0).await;
    }
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    for round in 1..=rounds {
        for (i, &method) in methods.iter().enumerate() {
            secs[i].push(run.once(method, round).await);
        }
    }
    drop(server);
    let hashing: Vec<(f64, f64)> = (0..3).map(|_| hash_only(&srv.join("blob"), &sha256)).collect();

    eprintln!("[3/3] cache hits: {hit_iters} calls each ...");
    let hit_rows = cache_hits(work, hit_iters).await;

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("machine: {cores} cores; build: release; tokio: multi_thread, 2 workers (as the daemon)");
    println!("load average (1 min): {load_start} at start, {} at end", load1());
    println!("blob: {blob_mb} MB (10^6 bytes) from python3 http.server on 127.0.0.1; {rounds} rounds after 1 warm-up");
    println!();
    println!("| {:<50} | {:>8} | {:>8} | {:>8} | {:>8} |", "download + verify", "MB/s p50", "min", "max", "s p50");
    println!("|{}|----------|----------|----------|----------|", "-".repeat(52));
    let mb_s = |s: f64| size as f64 / MB / s;
    let mut p50 = Vec::new();
    for (i, method) in methods.iter().enumerate() {
        let rates: Vec<f64> = secs[i].iter().map(|&s| mb_s(s)).collect();
        p50.push(median(&rates));
        let (lo, hi) = rates.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        println!(
            "| {:<50} | {:>8.0} | {:>8.0} | {:>8.0} | {:>8.3} |",
            method.label(),
            p50[i],
            lo,
            hi,
            median(&secs[i])
        );
    }
    let rate = |m: Method| methods.iter().position(|&x| x == m).map(|i| p50[i]);
    let ratio = |a: Method, b: Method| match (rate(a), rate(b)) {
        (Some(a), Some(b)) => format!("{:.2}", a / b),
        _ => "n/a".to_owned(),
    };
    let coreutils = median(&hashing.iter().map(|h| mb_s(h.0)).collect::<Vec<_>>());
    let in_memory = median(&hashing.iter().map(|h| mb_s(h.1)).collect::<Vec<_>>());
    println!(
        "| {:<50} | {coreutils:>8.0} | {:>8} | {:>8} | {:>8} |",
        "context: sha256sum f alone (warm file)", "", "", ""
    );
    println!(
        "| {:<50} | {in_memory:>8.0} | {:>8} | {:>8} | {:>8} |",
        "context: sha2 crate (gale's hash), in memory", "", "", ""
    );
    println!();
    use Method::*;
    println!("ratio gale fetch / pipeline:              {} (goal >= 0.8)", ratio(GaleFetch, Pipeline));
    println!("ratio gale cache miss / pipeline:         {}", ratio(GaleCacheMiss, Pipeline));
    println!("ratio gale fetch / pipeline + sync:       {} (both fsync)", ratio(GaleFetch, PipelineFsync));
    println!("ratio gale cache miss / pipeline + sync:  {}", ratio(GaleCacheMiss, PipelineFsync));
    println!("ratio gale fetch / curl + openssl sha256: {}", ratio(GaleFetch, PipelineOpenssl));
    let ceiling = rate(CurlDevNull).unwrap_or(f64::NAN);
    let best = rate(GaleFetch).unwrap_or(0.0).max(rate(Pipeline).unwrap_or(0.0));
    println!(
        "server ceiling (curl -> /dev/null): {ceiling:.0} MB/s; fastest verified download above: {best:.0} MB/s = {:.0}%",
        100.0 * best / ceiling
    );
    if best >= 0.85 * ceiling {
        println!("=> python's http.server is the bottleneck: the verified downloads run near what it can send.");
    } else {
        println!("=> python's http.server is not the bottleneck: it sends faster than any verified download runs.");
    }
    println!();
    println!("| {:<44} | {:>6} | {:>7} | {:>7} | {:>8} |", "cache hit (µs)", "n", "p50", "p99", "max");
    println!("|{}|--------|---------|---------|----------|", "-".repeat(46));
    for row in hit_rows {
        println!("{row}");
    }
}
