//! Tests for the config layer: defaults, every validation rule (each proving the key and the
//! line it names), error lines in multi-line files, "did you mean", the example file, and
//! the `to_toml` round trip.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::raw::{known_keys, nearest};
use super::super::{LogFormat, OnHealthFailure, OnSessionLoss};
use super::*;

const FILE: &str = "/etc/gale/gale.toml";
/// The smallest valid file: two lines.
const MIN: &str = "[zookeeper]\nservers = [\"127.0.0.1:2181\"]\n";
const EXAMPLE: &str = include_str!("../../config/gale.toml");

fn parse_ok(text: &str) -> Config {
    match parse(text, Path::new(FILE)) {
        Ok(c) => c,
        Err(e) => panic!("expected {text:?} to parse, got: {e}"),
    }
}

fn parse_err(text: &str) -> ConfigError {
    match parse(text, Path::new(FILE)) {
        Ok(_) => panic!("expected {text:?} to be rejected"),
        Err(e) => e,
    }
}

/// Asserts the error's key, line and a piece of its message, and that `Display` is the one
/// line `<file>:<line>: <key>: <message>`.
#[track_caller]
fn assert_error(err: &ConfigError, key: &str, line: usize, needle: &str) {
    let shown = err.to_string();
    assert_eq!(err.key(), Some(key), "{shown}");
    assert_eq!(err.line(), Some(line), "{shown}");
    assert!(shown.starts_with(&format!("{FILE}:{line}: {key}: ")), "{shown}");
    assert!(shown.contains(needle), "{shown:?} should contain {needle:?}");
    assert!(!shown.contains('\n'), "{shown:?} is not one line");
}

/// `body` (one line) placed in `[section]` of an otherwise valid file, so that it lands on
/// line 3 (in `[zookeeper]`) or line 4 (after the `[section]` header).
fn in_section(section: &str, body: &str) -> (String, usize) {
    if section == "zookeeper" { (format!("{MIN}{body}\n"), 3) } else { (format!("{MIN}[{section}]\n{body}\n"), 4) }
}

/// The rule under test rejects `key = value` in `[section]`, naming `section.key` at its line.
#[track_caller]
fn rejects(section: &str, key_and_value: &str, needle: &str) {
    let (text, line) = in_section(section, key_and_value);
    let key = key_and_value.split([' ', '=']).next().unwrap();
    assert_error(&parse_err(&text), &format!("{section}.{key}"), line, needle);
}

#[track_caller]
fn accepts(section: &str, key_and_value: &str) -> Config {
    parse_ok(&in_section(section, key_and_value).0)
}

fn defaults() -> Config {
    Config {
        path: PathBuf::from(FILE),
        zookeeper: ZookeeperConfig {
            servers: vec!["127.0.0.1:2181".into()],
            root: "/gale".into(),
            session_timeout: Duration::from_millis(20_000),
            connect_timeout: Duration::from_millis(15_000),
            auth: None,
            on_session_loss: OnSessionLoss::KeepWorkers,
            stop_workers_after: Duration::from_secs(300),
        },
        supervisor: SupervisorConfig {
            local_dir: "/var/lib/gale".into(),
            log_dir: "/var/log/gale".into(),
            id: None,
            hostname: None,
            slots: vec![6700, 6701, 6702, 6703],
            heartbeat: Duration::from_secs(5),
            heartbeat_refresh: Duration::from_secs(60),
            sync: Duration::from_secs(10),
            monitor: Duration::from_secs(3),
            labels: BTreeMap::new(),
            capacity: Capacity { cpu_percent: 400, memory_mb: 4096 },
        },
        worker: WorkerConfig {
            start_timeout: Duration::from_secs(120),
            heartbeat_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(3),
            run_as_user: false,
            allowed_users: vec![],
            min_uid: 1000,
        },
        restart: RestartConfig {
            backoff_initial: Duration::from_millis(1000),
            backoff_max: Duration::from_millis(60_000),
            reset_after: Duration::from_secs(600),
            node_budget_per_min: 120,
        },
        blob: BlobConfig {
            cache_target_mb: 10_240,
            sync: Duration::from_secs(30),
            download_timeout: Duration::from_secs(300),
            download_retries: 3,
        },
        health: HealthConfig {
            script_dir: "/etc/gale/healthchecks".into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_millis(5000),
            fail_on_timeout: true,
            on_failure: OnHealthFailure::Drain,
        },
        logs: LogsConfig {
            worker_log_max_mb: 100,
            worker_log_keep: 5,
            node_quota_mb: 10_240,
            format: LogFormat::Auto,
            level: "info".into(),
        },
        admin: AdminConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 8780))) },
        diagnostics: DiagnosticsConfig {
            timeout: Duration::from_secs(30),
            max_output_mb: 16,
            commands: BTreeMap::new(),
        },
    }
}

/// Every section and key of the schema, as `(section, key)`.
fn schema() -> Vec<(&'static str, &'static str)> {
    let mut all = Vec::new();
    for section in known_keys("").unwrap() {
        for key in known_keys(section).unwrap() {
            all.push((*section, *key));
        }
    }
    all
}

// ---- defaults, example file, round trip -------------------------------------------------

#[test]
fn only_servers_is_required_and_every_default_is_spec_s() {
    assert_eq!(parse_ok(MIN), defaults());
}

#[test]
fn the_schema_is_read_from_the_serde_structs() {
    assert_eq!(known_keys("").unwrap().len(), 9);
    assert!(known_keys("zookeeper").unwrap().contains(&"session_timeout_ms"));
    assert_eq!(known_keys("supervisor.capacity").unwrap(), ["cpu_percent", "memory_mb"]);
    assert_eq!(known_keys("supervisor.labels"), None, "labels are free-form");
    assert_eq!(known_keys("diagnostics.commands"), None, "command names are free-form");
    assert_eq!(schema().len(), 47);
}

#[test]
fn the_example_file_parses_to_the_defaults() {
    assert_eq!(parse_ok(EXAMPLE), defaults());
}

#[test]
fn the_example_file_shows_every_key() {
    for (section, key) in schema() {
        let written = EXAMPLE.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{key} ="))
        });
        assert!(EXAMPLE.contains(&format!("[{section}]")), "[{section}] missing");
        assert!(written, "{section}.{key} is not in config/gale.toml");
    }
}

#[test]
fn to_toml_round_trips_the_defaults_and_writes_every_key() {
    let config = defaults();
    let text = config.to_toml();
    assert_eq!(parse_ok(&text), config, "{text}");
    for (section, key) in schema() {
        let pattern = format!("\n{key} = ");
        let commented = format!("\n# {key} = (");
        assert!(text.contains(&pattern) || text.contains(&commented), "{section}.{key}:\n{text}");
    }
    assert!(text.contains("# id = (generated once, kept in local state)"), "{text}");
    assert!(text.contains("# hostname = (the system hostname)"), "{text}");
    assert!(text.contains("# auth = ("), "{text}");
    assert!(text.contains("session_timeout_ms = 20000\n"), "{text}");
    assert!(text.contains("heartbeat_secs = 5\n"), "{text}");
}

#[test]
fn to_toml_round_trips_a_config_where_every_key_differs_from_its_default() {
    let text = r#"
[zookeeper]
servers = ["zk1:2181", "[::1]:2182"]
root = "/prod/gale-2"
session_timeout_ms = 4000
connect_timeout_ms = 1500
auth = { credentials_file = "/etc/gale/zk.cred" }
on_session_loss = "stop_workers"
stop_workers_after_secs = 1

[supervisor]
local_dir = "/srv/gale"
log_dir = "/srv/gale/logs"
id = "node-7.a_b"
hostname = "worker7.example.org"
slots = [7000, 6999]
heartbeat_secs = 2
heartbeat_refresh_secs = 2
sync_secs = 1
monitor_secs = 1
labels = { rack = "r\"1\\", "zone name" = "eu-west ✓", "" = "" }
capacity = { cpu_percent = 1, memory_mb = 17592186044415 }

[worker]
start_timeout_secs = 9
heartbeat_timeout_secs = 8
max_timeout_secs = 9
shutdown_grace_secs = 31536000
run_as_user = true
allowed_users = ["storm", "etl"]
min_uid = 0

[restart]
backoff_initial_ms = 1
backoff_max_ms = 1
reset_after_secs = 1
node_budget_per_min = 4294967295

[blob]
cache_target_mb = 0
sync_secs = 1
download_timeout_secs = 1
download_retries = 0

[health]
script_dir = "/opt/checks"
interval_secs = 1
timeout_ms = 31536000000
fail_on_timeout = false
on_failure = "exit"

[logs]
worker_log_max_mb = 1
worker_log_keep = 1
node_quota_mb = 1
format = "json"
level = "gale=debug,info"

[admin]
listen = ""

[diagnostics]
timeout_secs = 600
max_output_mb = 1

[diagnostics.commands]
jstack = ["/usr/bin/jstack", "-l", "{pid}"]
"heap.v2" = ["/usr/bin/jmap", "-dump:format=b,file={out}", "{pid}"]
"#;
    // The empty label name is the one thing here that is invalid; drop it.
    let text = text.replace(", \"\" = \"\"", "");
    let config = parse_ok(&text);
    assert_eq!(config.zookeeper.auth.as_ref().unwrap().scheme, "digest");
    assert_eq!(config.supervisor.labels["rack"], "r\"1\\");
    assert_eq!(config.admin.listen, None);
    let written = config.to_toml();
    assert!(written.contains("listen = \"\"\n"), "{written}");
    assert_eq!(parse_ok(&written), config, "{written}");
    // Everything differs from the default, except the auth scheme, which only has one value.
    let d = defaults();
    assert_ne!(config.zookeeper.servers, d.zookeeper.servers);
    assert_ne!(config.supervisor.capacity, d.supervisor.capacity);
    assert_ne!(config.logs.format, d.logs.format);
    assert_eq!(config.diagnostics.commands["heap.v2"][1], "-dump:format=b,file={out}");
    assert!(written.contains("\n\"heap.v2\" = [\"/usr/bin/jmap\", "), "{written}");
}

#[test]
fn diagnostics_commands_are_named_absolute_argv_with_known_placeholders() {
    let c = accepts("diagnostics.commands", "status = [\"/bin/cat\", \"/proc/{pid}/status\"]");
    assert_eq!(c.diagnostics.commands["status"], ["/bin/cat", "/proc/{pid}/status"]);
    let c = accepts("diagnostics", "commands = { gdb = [\"/usr/bin/gdb\", \"-batch\", \"-p\", \"{pid}\"] }");
    assert_eq!(c.diagnostics.commands["gdb"].len(), 4);
    let line = |body: &str| parse_err(&format!("{MIN}[diagnostics.commands]\n{body}\n"));
    assert_error(
        &line("jstack = [\"jstack\", \"{pid}\"]"),
        "diagnostics.commands.jstack",
        4,
        "`jstack` must be an absolute path",
    );
    assert_error(&line("x = []"), "diagnostics.commands.x", 4, "must not be empty");
    assert_error(
        &line("gdb = [\"/usr/bin/gdb\", \"-p\", \"{ppid}\"]"),
        "diagnostics.commands.gdb",
        4,
        "unknown placeholder `{ppid}` in `{ppid}`: known are {pid}, {worker_dir}, {out}",
    );
    assert_error(&line("\"-x\" = [\"/bin/true\"]"), "diagnostics.commands.-x", 4, "must start with a letter or digit");
    assert_error(&line("\"a/b\" = [\"/bin/true\"]"), "diagnostics.commands.\"a/b\"", 4, "has `/`");
    assert_error(&line("x = \"/bin/true\""), "diagnostics.commands.x", 4, "expected an array");
    rejects("diagnostics", "timeout_secs = 601", "must be at most 600, got 601");
    rejects("diagnostics", "max_output_mb = 0", "must be greater than 0");
    rejects("diagnostics", "comands = {}", "did you mean `commands`?");
}

#[test]
fn admin_listen_takes_ipv6_and_port_zero() {
    let c = accepts("admin", "listen = \"[::1]:0\"");
    assert_eq!(c.admin.listen, Some("[::1]:0".parse().unwrap()));
    assert_eq!(parse_ok(&c.to_toml()), c);
}

// ---- errors: lines, keys, hints -----------------------------------------------------------

#[test]
fn unknown_key_gets_the_nearest_valid_one() {
    let text = format!("{MIN}sesion_timeout_ms = 5000\n");
    let err = parse_err(&text);
    assert_eq!(
        err.to_string(),
        "/etc/gale/gale.toml:3: zookeeper.sesion_timeout_ms: unknown key (did you mean \
         `session_timeout_ms`?)"
    );
    // Wrong unit suffix and dashes are near misses too.
    rejects("zookeeper", "session_timeout_secs = 5", "did you mean `session_timeout_ms`?");
    rejects("supervisor", "Heartbeat-Secs = 5", "did you mean `heartbeat_secs`?");
}

#[test]
fn unknown_section_gets_the_nearest_section() {
    let err = parse_err(&format!("{MIN}\n[supervisr]\nslots = [6700]\n"));
    assert_error(&err, "supervisr", 4, "unknown section (did you mean [supervisor]?)");
}

#[test]
fn far_off_names_get_no_guess() {
    rejects("worker", "xyzzy = 1", "unknown key (valid here: `start_timeout_secs`");
    let err = parse_err(&format!("{MIN}[nimbus]\n"));
    assert_error(&err, "nimbus", 3, "unknown section (valid here: `zookeeper`");
}

/// Found by tests/decoders_prop.rs: `[""]` was reported as "gale.toml:1: : unknown section".
#[test]
fn keys_that_are_not_bare_are_named_quoted() {
    let err = parse_err("[\"\"]\n");
    assert_error(&err, "\"\"", 1, "unknown section");
    assert!(err.to_string().starts_with("/etc/gale/gale.toml:1: \"\": unknown section"), "{err}");
    let err = parse_err(&format!("{MIN}\"session timeout.ms\" = 1\n"));
    assert_error(&err, "zookeeper.\"session timeout.ms\"", 3, "unknown key");
}

#[test]
fn a_key_in_the_wrong_section_is_sent_home() {
    rejects("worker", "slots = [6700]", "unknown key (`slots` belongs in [supervisor])");
}

#[test]
fn unknown_keys_inside_inline_tables_are_named_in_full() {
    let err = parse_err(&format!(
        "{MIN}[supervisor]
capacity = {{ cpu = 100 }}
"
    ));
    assert_error(&err, "supervisor.capacity.cpu", 4, "did you mean `cpu_percent`?");
    let err = parse_err(&format!("{MIN}auth = {{ sceme = \"digest\" }}\n"));
    assert_error(&err, "zookeeper.auth.sceme", 3, "did you mean `scheme`?");
    let err = parse_err(&format!("{MIN}[supervisor.capacity]\nmemory = 1\n"));
    assert_error(&err, "supervisor.capacity.memory", 4, "did you mean `memory_mb`?");
}

#[test]
fn labels_are_free_form() {
    let c = accepts("supervisor", "labels = { rack = \"r1\", gpu = \"a100\" }");
    assert_eq!(c.supervisor.labels.len(), 2);
    rejects("supervisor", "labels = { \"\" = \"x\" }", "label names must not be empty");
    let err = parse_err(&format!("{MIN}[supervisor]\nlabels = {{ rack = 1 }}\n"));
    assert_error(&err, "supervisor.labels.rack", 4, "expected a string, found integer");
}

#[test]
fn wrong_types_name_the_key_and_the_expected_type() {
    rejects("zookeeper", "session_timeout_ms = \"20000\"", "expected an integer, found string");
    rejects("zookeeper", "session_timeout_ms = 20000.0", "expected an integer, found floating");
    rejects("health", "fail_on_timeout = \"yes\"", "expected a boolean (`true` or `false`)");
    rejects("supervisor", "slots = 6700", "expected an array, found integer");
    rejects("supervisor", "slots = [\"6700\"]", "expected an integer, found string");
    rejects("supervisor", "capacity = 4", "expected a table, found an integer");
    rejects("admin", "listen = 8780", "expected a string, found integer");
    rejects("zookeeper", "root = 1979-05-27", "found a date-time");
}

#[test]
fn a_section_that_is_not_a_table_is_named() {
    let err = parse_err(&format!("worker = 5\n{MIN}"));
    assert_error(&err, "worker", 1, "expected a table `[worker]`, found an integer");
    let err = parse_err(&format!("{MIN}[[worker]]\n"));
    assert_error(&err, "worker", 3, "expected a table `[worker]`, found an array");
}

#[test]
fn syntax_errors_carry_the_line_toml_gives() {
    let err = parse_err("[zookeeper]\nservers = [\"a:1\"]\n\nroot = \n");
    assert_eq!(err.line(), Some(4), "{err}");
    assert_eq!(err.key(), None);
    assert!(err.to_string().starts_with(&format!("{FILE}:4: invalid TOML: ")), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
    let err = parse_err("[zookeeper]\nservers = [\"a:1\"]\nroot = \"/a\"\nroot = \"/b\"\n");
    assert_eq!(err.line(), Some(4), "{err}");
}

#[test]
fn error_lines_are_exact_in_a_longer_file() {
    let head = "# gale\n\n[zookeeper]\nservers = [\n  \"zk1:2181\",\n  \"zk2:2181\",\n]\n";
    let err = parse_err(&format!("{head}root = \"/gale\"\n\n[supervisor]\nslots = [\n  6700,\n  6701,\n  6700,\n]\n"));
    assert_error(&err, "supervisor.slots", 14, "port 6700 is listed twice");

    let err = parse_err("[zookeeper]\nservers = [\n  \"zk1:2181\",\n  \"zk2\",\n]\n");
    assert_error(&err, "zookeeper.servers", 4, "`zk2` has no port");

    let text = format!("{head}\n[logs]\nformat = \"text\"\n\nlevel = 7\n");
    assert_error(&parse_err(&text), "logs.level", 12, "expected a string, found integer");

    let text = format!("{head}\n[health]\n# why\n\ntimeout_ms = 0\n");
    assert_error(&parse_err(&text), "health.timeout_ms", 12, "must be greater than 0");

    // Dotted keys at the top level name the same key, at their own line.
    let err = parse_err(&format!("\nsupervisor.local_dir = \"var\"\n{MIN}"));
    assert_error(&err, "supervisor.local_dir", 2, "must be an absolute path");
}

#[test]
fn missing_servers_names_the_zookeeper_header_or_line_1() {
    let err = parse_err("# no zookeeper at all\n[worker]\n");
    assert_error(&err, "zookeeper.servers", 1, "required key is missing");
    let err = parse_err("# comment\n\n[zookeeper]\nroot = \"/gale\"\n");
    assert_error(&err, "zookeeper.servers", 3, "required key is missing");
}

#[test]
fn load_reads_the_file_and_names_it_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gale.toml");
    std::fs::write(&path, MIN).unwrap();
    let config = load(&path).unwrap();
    assert_eq!(config.path, path);

    let missing = dir.path().join("nope.toml");
    let err = load(&missing).unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with(&format!("{}: cannot read", missing.display())), "{shown}");
    assert!(shown.contains("os error 2"), "{shown}");
    assert_eq!((err.line(), err.key()), (None, None));
}

#[test]
fn nearest_only_suggests_close_names() {
    let keys = ["session_timeout_ms", "connect_timeout_ms", "root"];
    assert_eq!(nearest("sesion_timeout_ms", &keys), Some("session_timeout_ms"));
    assert_eq!(nearest("CONNECT-TIMEOUT-MS", &keys), Some("connect_timeout_ms"));
    assert_eq!(nearest("rot", &keys), Some("root"));
    assert_eq!(nearest("heartbeat", &keys), None);
    assert_eq!(nearest("cpu", &["cpu_percent", "memory_mb"]), Some("cpu_percent"));
    assert_eq!(nearest("mb", &["cpu_percent", "memory_mb"]), None);
}

// ---- rules, one test per rule ------------------------------------------------------------

#[test]
fn servers_must_be_a_non_empty_list_of_host_port() {
    let err = parse_err(
        "[zookeeper]
servers = []
",
    );
    assert_error(&err, "zookeeper.servers", 2, "must list at least one `host:port`");
    let cases = [
        ("zk1", "has no port"),
        (":2181", "has an empty host"),
        ("zk1:0", "expected a number in 1..=65535"),
        ("zk1:65536", "expected a number in 1..=65535"),
        ("zk1:abc", "expected a number in 1..=65535"),
        ("zk1:", "expected a number in 1..=65535"),
        ("zk1:+2181", "expected a number in 1..=65535"),
        ("zk 1:2181", "whitespace"),
        ("zk1:2181,zk2:2181", "holds several servers"),
        ("::1:2181", "IPv6 address in brackets"),
    ];
    for (server, needle) in cases {
        let text = format!("[zookeeper]\nservers = [\"{server}\"]\n");
        assert_error(&parse_err(&text), "zookeeper.servers", 2, needle);
    }
    let text = "[zookeeper]\nservers = [\n\"a:1\",\n\"a:1\"]\n";
    assert_error(&parse_err(text), "zookeeper.servers", 4, "server `a:1` is listed twice");
    let ok = parse_ok("[zookeeper]\nservers = [\"[::1]:2181\", \"zk-1.example:65535\"]\n");
    assert_eq!(ok.zookeeper.servers, ["[::1]:2181", "zk-1.example:65535"]);
}

#[test]
fn root_must_be_an_absolute_path_of_identifiers() {
    rejects("zookeeper", "root = \"gale\"", "must be an absolute ZooKeeper path");
    rejects("zookeeper", "root = \"\"", "must be an absolute ZooKeeper path");
    rejects("zookeeper", "root = \"/\"", "must not be `/` itself");
    rejects("zookeeper", "root = \"/gale/\"", "must not end with `/`");
    rejects("zookeeper", "root = \"/a//b\"", "empty segment");
    rejects("zookeeper", "root = \"/a/..\"", "root segment `..` must start with a letter");
    rejects("zookeeper", "root = \"/a b\"", "root segment `a b` has ` `");
    assert_eq!(accepts("zookeeper", "root = \"/prod/gale.v2_x-1\"").zookeeper.root, "/prod/gale.v2_x-1");
}

#[test]
fn every_duration_must_be_positive_and_at_most_a_year() {
    let durations =
        schema().into_iter().filter(|(_, key)| key.ends_with("_ms") || key.ends_with("_secs")).collect::<Vec<_>>();
    assert_eq!(durations.len(), 19, "{durations:?}");
    for (section, key) in durations {
        rejects(section, &format!("{key} = 0"), "must be greater than 0, got 0");
        rejects(section, &format!("{key} = -5"), "must be greater than 0, got -5");
        let too_long = if key.ends_with("_ms") { 31_536_000_001_i64 } else { 31_536_001 };
        rejects(section, &format!("{key} = {too_long}"), "must be at most");
    }
}

#[test]
fn session_timeout_must_leave_room_for_the_server_minimum_and_reconnects() {
    rejects("zookeeper", "session_timeout_ms = 3999", "must be at least 4000, got 3999: ZooKeeper");
    let c = accepts("zookeeper", "session_timeout_ms = 4000");
    assert_eq!(c.zookeeper.session_timeout, Duration::from_secs(4));
}

#[test]
fn on_session_loss_is_keep_or_stop_workers() {
    rejects("zookeeper", "on_session_loss = \"stop\"", "must be one of `keep_workers`, `stop_workers`");
    rejects("zookeeper", "on_session_loss = \"stop_worker\"", "(did you mean `stop_workers`?)");
    let c = accepts("zookeeper", "on_session_loss = \"stop_workers\"");
    assert_eq!(c.zookeeper.on_session_loss, OnSessionLoss::StopWorkers);
}

#[test]
fn directories_and_the_credentials_file_must_be_absolute() {
    rejects("supervisor", "local_dir = \"var/lib/gale\"", "must be an absolute path, got `var/lib/gale`");
    rejects("supervisor", "log_dir = \"\"", "must be an absolute path");
    rejects("health", "script_dir = \"./checks\"", "must be an absolute path");
    let err = parse_err(&format!("{MIN}auth = {{ credentials_file = \"zk.cred\" }}\n"));
    assert_error(&err, "zookeeper.auth.credentials_file", 3, "must be an absolute path");
}

#[test]
fn auth_is_digest_with_a_credentials_file() {
    let text = format!("{MIN}\nauth = {{ scheme = \"digest\", credentials_file = \"/etc/gale/zk.cred\" }}\n");
    let auth = parse_ok(&text).zookeeper.auth.unwrap();
    assert_eq!(auth, ZkAuth { scheme: "digest".into(), credentials_file: "/etc/gale/zk.cred".into() });
    let err = parse_err(&format!("{MIN}auth = {{ scheme = \"sasl\", credentials_file = \"/c\" }}\n"));
    assert_error(&err, "zookeeper.auth.scheme", 3, "only `digest` is supported, got `sasl`");
    let err = parse_err(&format!("{MIN}\nauth = {{ scheme = \"digest\" }}\n"));
    assert_error(&err, "zookeeper.auth.credentials_file", 4, "required when `auth` is set");
}

#[test]
fn id_must_be_an_identifier() {
    rejects("supervisor", "id = \"../etc\"", "supervisor id `../etc` must start with a letter or digit");
    rejects("supervisor", "id = \"\"", "supervisor id is empty");
    rejects("supervisor", "id = \"a/b\"", "has `/`");
    assert_eq!(accepts("supervisor", "id = \"node-1\"").supervisor.id.as_deref(), Some("node-1"));
}

#[test]
fn hostname_must_be_non_empty_without_whitespace_or_slash() {
    rejects("supervisor", "hostname = \"\"", "must not be empty");
    rejects("supervisor", "hostname = \"a b\"", "must not contain whitespace or `/`");
    rejects("supervisor", "hostname = \"a/b\"", "must not contain whitespace or `/`");
    let c = accepts("supervisor", "hostname = \"w1.example.org\"");
    assert_eq!(c.supervisor.hostname.as_deref(), Some("w1.example.org"));
}

#[test]
fn slots_are_unique_ports() {
    rejects("supervisor", "slots = []", "must list at least one port");
    rejects("supervisor", "slots = [0]", "must be greater than 0, got 0");
    rejects("supervisor", "slots = [65536]", "must be at most 65535, got 65536");
    rejects("supervisor", "slots = [-6700]", "must be greater than 0");
    rejects("supervisor", "slots = [6700, 6701, 6700]", "port 6700 is listed twice");
    assert_eq!(accepts("supervisor", "slots = [65535, 1]").supervisor.slots, [65535, 1]);
}

#[test]
fn heartbeat_refresh_is_at_least_the_heartbeat() {
    let text = format!("{MIN}[supervisor]\nheartbeat_secs = 10\nheartbeat_refresh_secs = 9\n");
    let err = parse_err(&text);
    assert_error(&err, "supervisor.heartbeat_refresh_secs", 5, "must be at least heartbeat_secs (10), got 9");
    // With the refresh left at its default, the heartbeat is the line to fix.
    rejects("supervisor", "heartbeat_secs = 61", "must be at most heartbeat_refresh_secs (60, the default), got 61");
    rejects("supervisor", "heartbeat_refresh_secs = 4", "must be at least heartbeat_secs (5, the default)");
    accepts("supervisor", "heartbeat_secs = 60");
}

#[test]
fn backoff_max_is_at_least_the_initial_backoff() {
    rejects("restart", "backoff_max_ms = 999", "must be at least backoff_initial_ms (1000, the default)");
    rejects("restart", "backoff_initial_ms = 60001", "must be at most backoff_max_ms (60000, the default)");
    accepts("restart", "backoff_initial_ms = 60000");
}

#[test]
fn max_timeout_caps_the_start_and_heartbeat_timeouts() {
    rejects("worker", "max_timeout_secs = 119", "must be at least start_timeout_secs (120, the default)");
    rejects("worker", "start_timeout_secs = 601", "must be at most max_timeout_secs (600, the default)");
    rejects("worker", "heartbeat_timeout_secs = 601", "must be at most max_timeout_secs");
    let text = format!("{MIN}[worker]\nstart_timeout_secs = 5\nheartbeat_timeout_secs = 50\nmax_timeout_secs = 40\n");
    assert_error(&parse_err(&text), "worker.max_timeout_secs", 6, "must be at least heartbeat_timeout_secs (50)");
}

#[test]
fn counts_must_be_in_range() {
    rejects("restart", "node_budget_per_min = 0", "must be greater than 0");
    rejects("restart", "node_budget_per_min = 4294967296", "must be at most 4294967295");
    rejects("logs", "worker_log_keep = 0", "must be greater than 0");
    rejects("blob", "download_retries = -1", "must not be negative");
    rejects("blob", "download_retries = 4294967296", "must be at most 4294967295, got 4294967296");
    assert_eq!(accepts("blob", "download_retries = 0").blob.download_retries, 0);
}

#[test]
fn sizes_must_fit_in_bytes() {
    rejects("blob", "cache_target_mb = -1", "must not be negative");
    rejects("blob", "cache_target_mb = 17592186044416", "must be at most 17592186044415");
    rejects("logs", "worker_log_max_mb = 0", "must be greater than 0");
    rejects("logs", "node_quota_mb = 0", "must be greater than 0");
    assert_eq!(accepts("blob", "cache_target_mb = 0").blob.cache_target_mb, 0);
}

#[test]
fn min_uid_is_any_u32() {
    assert_eq!(accepts("worker", "min_uid = 0").worker.min_uid, 0);
    assert_eq!(accepts("worker", "min_uid = 4294967295").worker.min_uid, u32::MAX);
    rejects("worker", "min_uid = -1", "must not be negative");
    rejects("worker", "min_uid = 4294967296", "must be at most 4294967295");
}

#[test]
fn allowed_users_must_be_non_empty_names() {
    rejects("worker", "allowed_users = [\"storm\", \"\"]", "user names must not be empty");
    let c = accepts("worker", "allowed_users = [\"storm\"]");
    assert_eq!(c.worker.allowed_users, ["storm"]);
}

#[test]
fn on_failure_is_drain_or_exit() {
    rejects("health", "on_failure = \"kill\"", "must be one of `drain`, `exit`, got `kill`");
    rejects("health", "on_failure = \"Drain\"", "(did you mean `drain`?)");
    assert_eq!(accepts("health", "on_failure = \"exit\"").health.on_failure, OnHealthFailure::Exit);
}

#[test]
fn log_format_is_auto_text_or_json() {
    rejects("logs", "format = \"yaml\"", "must be one of `auto`, `text`, `json`, got `yaml`");
    assert_eq!(accepts("logs", "format = \"text\"").logs.format, LogFormat::Text);
}

#[test]
fn log_level_must_be_a_tracing_filter() {
    rejects("logs", "level = \"gale=lol\"", "`gale=lol` is not a valid tracing filter");
    rejects("logs", "level = \"\"", "must not be empty");
    rejects("logs", "level = \"inof\"", "`inof` is not a level (did you mean `info`?)");
    rejects("logs", "level = \"gale=debug,warning\"", "(did you mean `warn`?)");
    for ok in ["debug", "gale=debug,info", "gale", "WARN", "zookeeper_client=trace"] {
        assert_eq!(accepts("logs", &format!("level = \"{ok}\"")).logs.level, ok);
    }
}

#[test]
fn admin_listen_is_empty_or_ip_port() {
    rejects("admin", "listen = \"localhost:8780\"", "is not an `ip:port` address");
    rejects("admin", "listen = \"127.0.0.1\"", "is not an `ip:port` address");
    assert_eq!(accepts("admin", "listen = \"\"").admin.listen, None);
}

#[test]
fn capacity_values_are_positive_and_default_one_by_one() {
    let err = parse_err(&format!("{MIN}[supervisor]\ncapacity = {{ cpu_percent = 0 }}\n"));
    assert_error(&err, "supervisor.capacity.cpu_percent", 4, "must be greater than 0");
    let err = parse_err(&format!("{MIN}[supervisor]\ncapacity = {{ memory_mb = 0 }}\n"));
    assert_error(&err, "supervisor.capacity.memory_mb", 4, "must be greater than 0");
    let c = accepts("supervisor", "capacity = { memory_mb = 512 }");
    assert_eq!(c.supervisor.capacity, Capacity { cpu_percent: 400, memory_mb: 512 });
}
