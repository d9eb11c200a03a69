//! Property tests of the decoders of outside input reachable through the public API: the config
//! file, and the Assignment, BlobMeta and SupervisorInfo payloads read from ZooKeeper. (The
//! Action decoder and the local state reader are private; their property tests are unit tests
//! in `supervisor/actions.rs` and `local_state/prop_tests.rs`.)
//!
//! What they prove, for arbitrary bytes and for schema-shaped but hostile input (see
//! `decoders_prop/hostile.rs`, `payloads.rs` and `config_text.rs`):
//! - every decoder returns `Ok` or `Err`: it never panics, and it returns within [`LIMIT`];
//! - `Ok(value)` obeys every rule SPEC §2/§3 states for it, checked here by code of its own
//!   rather than by the validator under test (identifiers, `command[0]`, env names, URLs, ...);
//! - values round-trip: an accepted Assignment, BlobMeta or SupervisorInfo re-encoded decodes
//!   to an equal value, and an accepted config printed with `to_toml` parses to an equal one;
//! - a payload built field by field is accepted exactly when its own `validate` accepts it.
//!
//! Each test runs 256 cases (`PROPTEST_CASES` overrides it for a longer hunt); the whole file
//! takes a few seconds.

mod config_text;
mod hostile;
mod payloads;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use gale::config::{self, Config, ConfigError};
use gale::model::assignment::{Assignment, MAX_ARG_BYTES, MAX_ARGS, MAX_ENV, MAX_ENV_VALUE_BYTES};
use gale::model::blob_meta::BlobMeta;
use gale::model::placeholders::PLACEHOLDERS;
use gale::model::{MAX_PAYLOAD_BYTES, PayloadError, SCHEMA, SupervisorInfo};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use hostile::{apply_damage, damage, is_ident, mutate, mutations};

/// How long one decoder call may take. Far above the few milliseconds the largest input needs,
/// even on a loaded machine; a call past it is a hang.
const LIMIT: Duration = Duration::from_secs(10);

/// 256 cases per test unless `PROPTEST_CASES` says otherwise. No failure files: a failure is
/// reported with its minimal input, and becomes a named unit test beside the code it broke.
fn cases() -> ProptestConfig {
    let mut config = ProptestConfig { failure_persistence: None, ..ProptestConfig::default() };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

/// Runs `f` on a thread of its own and returns what it returns; fails the case if `f` panics
/// or has not returned within [`LIMIT`] (the stuck thread is left behind: the test fails anyway).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(value) => {
            thread.join().unwrap();
            value
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not return within {LIMIT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
    }
}

fn decode_assignment(path: &str, bytes: Vec<u8>) -> Result<Assignment, String> {
    let path = path.to_owned();
    bounded("Assignment::decode", move || Assignment::decode(&path, &bytes).map_err(|e| e.to_string()))
}

fn decode_blob_meta(path: &str, bytes: Vec<u8>) -> Result<BlobMeta, String> {
    let path = path.to_owned();
    bounded("BlobMeta::decode", move || BlobMeta::decode(&path, &bytes).map_err(|e| e.to_string()))
}

fn decode_supervisor_info(path: &str, bytes: Vec<u8>) -> Result<SupervisorInfo, PayloadError> {
    let path = path.to_owned();
    bounded("SupervisorInfo::decode", move || SupervisorInfo::decode(&path, &bytes))
}

fn parse_config(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let (text, path) = (text.to_owned(), path.to_owned());
    bounded("config::parse", move || config::parse(&text, &path))
}

/// `<name>` when `path` is `…/<dir>/<name>`.
fn node_name<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    let (parent, name) = path.rsplit_once('/')?;
    (parent.rsplit('/').next() == Some(dir)).then_some(name)
}

// ---- Assignment ----

/// Every rule of SPEC §3.2 an accepted assignment must obey, checked without gale's validator,
/// and the round trip through its own JSON.
fn check_accepted_assignment(path: &str, a: &Assignment) -> Result<(), TestCaseError> {
    let context = || format!("accepted from {path}: {a:?}");
    prop_assert!(a.validate().is_ok(), "validate() rejects what decode() accepted: {}", context());
    prop_assert_eq!(a.schema, SCHEMA);
    prop_assert!(is_ident(&a.topology_id), "topology_id: {}", context());
    if let Some(name) = node_name(path, "assignments") {
        prop_assert_eq!(name, a.topology_id.as_str());
    }
    let mut names = BTreeSet::new();
    for blob in &a.blobs {
        prop_assert!(is_ident(&blob.key) && is_ident(&blob.name), "blob: {}", context());
        prop_assert!(names.insert(blob.name.as_str()), "blob name twice: {}", context());
    }
    let command = &a.launch.command;
    prop_assert!(!command.is_empty() && command.len() <= MAX_ARGS, "command length: {}", context());
    for arg in command {
        prop_assert!(arg.len() <= MAX_ARG_BYTES && !arg.contains('\0'), "argument {arg:?}: {}", context());
        for (open, _) in arg.match_indices('{') {
            if let Some(placeholder) = gale::model::placeholders::placeholder_name(&arg[open + 1..]) {
                let known = PLACEHOLDERS.contains(&placeholder)
                    || placeholder.strip_prefix("blob:").is_some_and(|n| names.contains(n));
                prop_assert!(known, "placeholder {{{placeholder}}}: {}", context());
            }
        }
    }
    // SPEC §3.2: `command[0]` must be absolute or `{blob:NAME}/…` with NAME a declared blob.
    let program = &command[0];
    let in_blob = names.iter().any(|n| program.starts_with(&format!("{{blob:{n}}}/")));
    prop_assert!(program.starts_with('/') || in_blob, "command[0] {program:?}: {}", context());
    prop_assert!(a.launch.env.len() <= MAX_ENV);
    for (name, value) in &a.launch.env {
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        prop_assert!(valid && !name.starts_with("GALE_"), "env name {name:?}: {}", context());
        prop_assert!(value.len() <= MAX_ENV_VALUE_BYTES && !value.contains('\0'), "env value: {}", context());
    }
    let launch = &a.launch;
    for n in [launch.start_timeout_secs, launch.heartbeat_timeout_secs, launch.memory_mb] {
        prop_assert_ne!(n, Some(0));
    }
    prop_assert_ne!(launch.cpu_percent, Some(0));
    if let Some(user) = &launch.user {
        let mut chars = user.chars();
        let valid = user.len() <= 32
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        prop_assert!(valid, "user {user:?}: {}", context());
    }
    let mut placements = BTreeSet::new();
    for w in &a.workers {
        prop_assert!(is_ident(&w.supervisor_id) && w.port != 0, "worker {w:?}: {}", context());
        prop_assert!(placements.insert((&w.supervisor_id, w.port)), "worker twice {w:?}: {}", context());
    }
    let json = a.to_json();
    prop_assert!(json.len() <= MAX_PAYLOAD_BYTES);
    let again = decode_assignment(path, json);
    prop_assert_eq!(again.as_ref(), Ok(a), "round trip");
    Ok(())
}

proptest! {
    #![proptest_config(cases())]

    /// Built field by field: accepted exactly when `validate` (and the node name) agree, and then
    /// equal to what was built. Then broken by up to three JSON mutations: `Ok` or `Err`, and
    /// anything accepted obeys every rule.
    #[test]
    fn assignment_json((path, built) in payloads::assignment(), changes in mutations(3)) {
        let json = serde_json::to_value(&built).unwrap();
        let decoded = decode_assignment(&path, serde_json::to_vec(&json).unwrap());
        let name_ok = node_name(&path, "assignments").is_none_or(|n| n == built.topology_id);
        prop_assert_eq!(decoded.is_ok(), built.validate().is_ok() && name_ok, "{:?}", decoded);
        if let Ok(a) = &decoded {
            prop_assert_eq!(a, &built);
            check_accepted_assignment(&path, a)?;
        }
        let mutated = serde_json::to_vec(&mutate(json, &changes)).unwrap();
        if let Ok(a) = decode_assignment(&path, mutated) {
            check_accepted_assignment(&path, &a)?;
        }
    }

    /// Byte-level damage to a serialized assignment, and bytes from nowhere.
    #[test]
    fn assignment_bytes(
        (path, built) in payloads::assignment(),
        hits in damage(4),
        noise in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        if let Ok(a) = decode_assignment(&path, apply_damage(built.to_json(), &hits)) {
            check_accepted_assignment(&path, &a)?;
        }
        if let Ok(a) = decode_assignment(&path, noise) {
            check_accepted_assignment(&path, &a)?;
        }
    }
}

// ---- BlobMeta ----

fn check_accepted_blob_meta(path: &str, m: &BlobMeta) -> Result<(), TestCaseError> {
    prop_assert!(m.validate(path).is_ok(), "validate() rejects what decode() accepted: {m:?}");
    prop_assert_eq!(m.schema, SCHEMA);
    prop_assert!(is_ident(&m.key), "key {:?}", m.key);
    if let Some(name) = node_name(path, "blobstore") {
        prop_assert_eq!(name, m.key.as_str());
    }
    let sha_ok = m.sha256.len() == 64 && m.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    prop_assert!(sha_ok, "sha256 {:?}", m.sha256);
    let url_ok = match m.url.strip_prefix("file://") {
        Some(file) => file.starts_with('/') && file != "/" && !file.split('/').any(|c| c == ".."),
        None => m.url.strip_prefix("http://").or_else(|| m.url.strip_prefix("https://")).is_some_and(|rest| {
            !rest.starts_with(['/', '?', '#']) && !rest.is_empty() && !rest.contains(char::is_whitespace)
        }),
    };
    prop_assert!(url_ok, "url {:?}", m.url);
    prop_assert!(matches!(m.archive.as_deref(), None | Some("tar.gz" | "zip")), "archive {:?}", m.archive);
    let again = decode_blob_meta(path, m.to_json());
    prop_assert_eq!(again.as_ref(), Ok(m), "round trip");
    Ok(())
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn blob_meta_json((path, built) in payloads::blob_meta(), changes in mutations(3)) {
        let json = serde_json::to_value(&built).unwrap();
        let decoded = decode_blob_meta(&path, serde_json::to_vec(&json).unwrap());
        let name_ok = path
            .rsplit_once('/')
            .is_none_or(|(parent, name)| !parent.ends_with("/blobstore") || name == built.key);
        let valid = built.schema == SCHEMA && built.validate(&path).is_ok() && name_ok;
        prop_assert_eq!(decoded.is_ok(), valid, "{:?}", decoded);
        if let Ok(m) = &decoded {
            prop_assert_eq!(m, &built);
            check_accepted_blob_meta(&path, m)?;
        } else {
            let err = decoded.unwrap_err();
            prop_assert!(err.contains(&path), "error does not name the path: {}", err);
        }
        if let Ok(m) = decode_blob_meta(&path, serde_json::to_vec(&mutate(json, &changes)).unwrap()) {
            check_accepted_blob_meta(&path, &m)?;
        }
    }

    #[test]
    fn blob_meta_bytes(
        (path, built) in payloads::blob_meta(),
        hits in damage(4),
        noise in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        if let Ok(m) = decode_blob_meta(&path, apply_damage(built.to_json(), &hits)) {
            check_accepted_blob_meta(&path, &m)?;
        }
        if let Ok(m) = decode_blob_meta(&path, noise) {
            check_accepted_blob_meta(&path, &m)?;
        }
    }
}

// ---- SupervisorInfo ----

fn check_accepted_supervisor_info(path: &str, info: &SupervisorInfo) -> Result<(), TestCaseError> {
    prop_assert_eq!(info.schema, SCHEMA);
    let again = decode_supervisor_info(path, info.to_json());
    prop_assert_eq!(again.as_ref().ok(), Some(info), "round trip");
    Ok(())
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn supervisor_info_json(built in payloads::supervisor_info(), changes in mutations(3)) {
        let path = format!("/gale/supervisors/{}", built.id);
        let json = serde_json::to_value(&built).unwrap();
        match decode_supervisor_info(&path, serde_json::to_vec(&json).unwrap()) {
            Ok(info) => prop_assert_eq!(&info, &built),
            Err(e) => {
                prop_assert!(built.schema != SCHEMA, "a well-formed payload is rejected: {}", e);
                prop_assert!(e.to_string().contains(&path), "error does not name the path: {}", e);
            }
        }
        if let Ok(info) = decode_supervisor_info(&path, serde_json::to_vec(&mutate(json, &changes)).unwrap()) {
            check_accepted_supervisor_info(&path, &info)?;
        }
    }

    #[test]
    fn supervisor_info_bytes(
        built in payloads::supervisor_info(),
        hits in damage(4),
        noise in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let path = "/gale/supervisors/s1";
        if let Ok(info) = decode_supervisor_info(path, apply_damage(built.to_json(), &hits)) {
            check_accepted_supervisor_info(path, &info)?;
        }
        if let Ok(info) = decode_supervisor_info(path, noise) {
            check_accepted_supervisor_info(path, &info)?;
        }
    }
}

// ---- Config ----

/// The rules of SPEC §2 an accepted config must obey, and `to_toml` parsing back to it.
fn check_accepted_config(text: &str, path: &Path, c: &Config) -> Result<(), TestCaseError> {
    let context = || format!("accepted:\n{text}\n=> {c:?}");
    prop_assert_eq!(c.path.as_path(), path);
    let z = &c.zookeeper;
    prop_assert!(!z.servers.is_empty(), "{}", context());
    let mut seen = BTreeSet::new();
    for server in &z.servers {
        let port_ok = server.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        prop_assert!(port_ok && seen.insert(server), "server {server:?}: {}", context());
    }
    let root_ok = z.root.len() > 1 && z.root.starts_with('/') && z.root[1..].split('/').all(is_ident);
    prop_assert!(root_ok, "root {:?}: {}", z.root, context());
    let s = &c.supervisor;
    prop_assert!(s.id.as_deref().is_none_or(is_ident), "id: {}", context());
    let hostname_ok = |h: &str| !h.is_empty() && !h.contains(|c: char| c.is_whitespace() || c == '/');
    prop_assert!(s.hostname.as_deref().is_none_or(hostname_ok), "hostname: {}", context());
    let ports: BTreeSet<u16> = s.slots.iter().copied().collect();
    prop_assert!(!s.slots.is_empty() && ports.len() == s.slots.len() && !ports.contains(&0), "slots: {}", context());
    prop_assert!(s.labels.keys().all(|k| !k.is_empty()) && c.worker.allowed_users.iter().all(|u| !u.is_empty()));
    let (w, r, h) = (&c.worker, &c.restart, &c.health);
    let year = Duration::from_secs(365 * 24 * 3600);
    let durations = [
        z.session_timeout,
        z.connect_timeout,
        z.stop_workers_after,
        s.heartbeat,
        s.heartbeat_refresh,
        s.sync,
        s.monitor,
        w.start_timeout,
        w.heartbeat_timeout,
        w.max_timeout,
        w.shutdown_grace,
        r.backoff_initial,
        r.backoff_max,
        r.reset_after,
        c.blob.sync,
        c.blob.download_timeout,
        h.interval,
        h.timeout,
    ];
    prop_assert!(durations.iter().all(|d| !d.is_zero() && *d <= year), "durations: {}", context());
    prop_assert!(z.session_timeout >= Duration::from_millis(4000));
    prop_assert!(s.heartbeat_refresh >= s.heartbeat, "heartbeat_refresh: {}", context());
    prop_assert!(w.max_timeout >= w.start_timeout && w.max_timeout >= w.heartbeat_timeout, "{}", context());
    prop_assert!(r.backoff_max >= r.backoff_initial, "{}", context());
    let paths = [&s.local_dir, &s.log_dir, &h.script_dir];
    prop_assert!(paths.iter().all(|p| p.is_absolute()), "{}", context());
    prop_assert!(z.auth.as_ref().is_none_or(|a| a.scheme == "digest" && a.credentials_file.is_absolute()));
    prop_assert!(s.capacity.cpu_percent >= 1 && s.capacity.memory_mb >= 1);
    prop_assert!(c.logs.worker_log_max_mb >= 1 && c.logs.worker_log_keep >= 1 && c.logs.node_quota_mb >= 1);
    prop_assert!(!c.logs.level.trim().is_empty());
    let printed = c.to_toml();
    let reparsed = parse_config(&printed, path);
    prop_assert!(
        reparsed.as_ref().is_ok_and(|again| again == c),
        "to_toml does not parse back: {:?}\n{}",
        reparsed,
        printed
    );
    Ok(())
}

/// An error names a line of the file (1-based, at most one past the last line).
fn check_config_error(text: &str, e: &ConfigError) -> Result<(), TestCaseError> {
    let line = e.line();
    let last = text.bytes().filter(|b| *b == b'\n').count() + 1;
    prop_assert!(line.is_some_and(|l| (1..=last).contains(&l)), "line {:?} of {} in {}", line, last, e);
    prop_assert!(e.key().is_none_or(|k| !k.is_empty()), "{}", e);
    Ok(())
}

fn check_config(text: &str, path: &Path) -> Result<(), TestCaseError> {
    match parse_config(text, path) {
        Ok(c) => check_accepted_config(text, path, &c),
        Err(e) => check_config_error(text, &e),
    }
}

const EXAMPLE: &str = include_str!("../config/gale.toml");

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn config_from_real_keys(text in config_text::config_text()) {
        check_config(&text, Path::new("/etc/gale/gale.toml"))?;
    }

    /// Arbitrary text, the shipped example damaged byte by byte, and `load` on raw bytes (which
    /// may not be UTF-8) agreeing with `parse`.
    #[test]
    fn config_from_any_text(
        text in any::<String>(),
        hits in damage(4),
        raw in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let path = Path::new("/etc/gale/gale.toml");
        check_config(&text, path)?;
        let damaged = String::from_utf8_lossy(&apply_damage(EXAMPLE.as_bytes().to_vec(), &hits)).into_owned();
        check_config(&damaged, path)?;

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gale.toml");
        std::fs::write(&file, &raw).unwrap();
        let loaded = { let file = file.clone(); bounded("config::load", move || config::load(&file)) };
        match std::str::from_utf8(&raw) {
            Err(_) => prop_assert!(matches!(loaded, Err(ConfigError::Read { .. })), "{:?}", loaded),
            Ok(text) => {
                let parsed = parse_config(text, &file);
                prop_assert_eq!(loaded.map_err(|e| e.to_string()), parsed.map_err(|e| e.to_string()));
            }
        }
    }
}
