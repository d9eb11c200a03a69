//! The integration tests: one test binary, one module per area (ripgrep's `tests/tests.rs`).
//!
//! Why one binary: each of the 17 files used to be its own crate, each compiling `common` and
//! linking its own ~150 MB executable against `gale`; after a change to the library that was 17
//! links, and every binary started its own ZooKeeper. Here `common` is compiled once, there is
//! one link, one shared ZooKeeper ([`common::shared_zk`]), and libtest spreads all the tests over
//! its threads instead of waiting for the slowest test of each binary in turn.
//!
//! Cargo does not discover test targets by itself (`autotests = false` in Cargo.toml): a new
//! file in `tests/` is compiled only once it is a `mod` here, which
//! [`every_file_in_tests_is_a_module`] checks.
//!
//! Run one area with its module path as the filter:
//!
//!     cargo test --test tests workers::
//!     cargo test --test tests faults::sigkill -- --nocapture

mod common;

mod agent;
mod agent_restarts;
mod bad_payloads;
mod blob_cli;
mod blobs;
mod cli;
mod decoders_prop;
mod diagnostics;
mod faults;
mod fixtures;
mod health;
mod identity;
mod isolation;
mod local_state;
mod logs_cli;
mod metrics;
mod operate;
mod packaging;
mod security;
mod systemd;
mod topology;
mod upgrade;
mod usage;
mod workers;

/// A test file that no `mod` line names would silently never compile nor run.
#[test]
fn every_file_in_tests_is_a_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let root = std::fs::read_to_string(dir.join("tests.rs")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let module = match path.extension() {
            Some(ext) if ext == "rs" => path.file_stem().unwrap().to_string_lossy().into_owned(),
            None if path.join("mod.rs").exists() => path.file_name().unwrap().to_string_lossy().into_owned(),
            _ => continue,
        };
        if module != "tests" && !root.lines().any(|l| l == format!("mod {module};")) {
            missing.push(module);
        }
    }
    assert!(missing.is_empty(), "tests/ files that tests/tests.rs does not declare as modules: {missing:?}");
}
