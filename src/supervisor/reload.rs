//! Config reload (SPEC §2): on SIGHUP or a change of the file (seen by a `notify` watch).
//!
//! The new file is loaded and validated whole; an invalid one is rejected and the running
//! config stays. Of a valid one, every changed key is either applied live (timeouts,
//! intervals, restart policy, health, logs, labels, blob settings, diagnostics commands) or,
//! for the keys that define what the agent IS (servers, root, session timeouts, auth,
//! local_dir, log_dir, id, hostname, slots, admin.listen, logs.format), logged as needing a
//! restart and left at its running value.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::Config;

/// Keeps the running value of one restart-only setting in a reloaded config.
type KeepRunning = fn(&mut Config, &Config);

/// The keys (dotted, as in the file; a key names its whole sub-table) that only a restart can
/// change, each with how [`merge`] keeps the running value. One table, so the keys the log
/// names as needing a restart and the settings `merge` keeps cannot disagree.
const RESTART_ONLY: &[(&str, KeepRunning)] = &[
    ("zookeeper.servers", |new, old| new.zookeeper.servers = old.zookeeper.servers.clone()),
    ("zookeeper.root", |new, old| new.zookeeper.root = old.zookeeper.root.clone()),
    ("zookeeper.session_timeout_ms", |new, old| new.zookeeper.session_timeout = old.zookeeper.session_timeout),
    ("zookeeper.connect_timeout_ms", |new, old| new.zookeeper.connect_timeout = old.zookeeper.connect_timeout),
    ("zookeeper.auth", |new, old| new.zookeeper.auth = old.zookeeper.auth.clone()),
    ("supervisor.local_dir", |new, old| new.supervisor.local_dir = old.supervisor.local_dir.clone()),
    ("supervisor.log_dir", |new, old| new.supervisor.log_dir = old.supervisor.log_dir.clone()),
    ("supervisor.id", |new, old| new.supervisor.id = old.supervisor.id.clone()),
    ("supervisor.hostname", |new, old| new.supervisor.hostname = old.supervisor.hostname.clone()),
    ("supervisor.slots", |new, old| new.supervisor.slots = old.supervisor.slots.clone()),
    ("admin.listen", |new, old| new.admin.listen = old.admin.listen),
    ("logs.format", |new, old| new.logs.format = old.logs.format),
];

/// Whether a changed `key` can be applied without a restart.
pub(crate) fn is_live(key: &str) -> bool {
    !RESTART_ONLY.iter().any(|(k, _)| key == *k || key.starts_with(&format!("{k}.")))
}

/// Every key whose effective value differs, dotted (`supervisor.heartbeat_refresh_secs`).
pub(crate) fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let flat = |c: &Config| {
        let table: toml::Table = c.to_toml().parse().expect("the effective config is valid TOML");
        let mut out = BTreeMap::new();
        flatten("", &toml::Value::Table(table), &mut out);
        out
    };
    let (a, b) = (flat(old), flat(new));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    keys.sort();
    keys
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) if !prefix.starts_with("supervisor.labels") && prefix != "supervisor.capacity" => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// The config to run with: `new`, except the restart-only settings, which keep `old`'s.
pub(crate) fn merge(old: &Config, new: &Config) -> Config {
    let mut merged = new.clone();
    merged.path = old.path.clone();
    for (_, keep_running) in RESTART_ONLY {
        keep_running(&mut merged, old);
    }
    merged
}

/// The outcome of one reload, for the log and the metric.
#[derive(Debug)]
pub(crate) enum Outcome {
    Rejected(String),
    Unchanged,
    Applied { live: Vec<String>, restart: Vec<String> },
}

/// Where live settings go.
#[derive(Debug)]
pub(crate) struct Targets {
    pub config: watch::Sender<std::sync::Arc<Config>>,
    pub membership: mpsc::Sender<crate::cluster::membership::Command>,
    pub sync_period: watch::Sender<Duration>,
    pub monitor_period: watch::Sender<Duration>,
    pub blob_period: watch::Sender<Duration>,
    pub health: watch::Sender<(crate::health::HealthSettings, Duration)>,
    pub log_policy: watch::Sender<crate::worker::LogPolicy>,
}

/// Loads `path` and applies it over `running` (see the module docs).
pub(crate) fn reload(path: &Path, running: &Config, targets: &Targets) -> Outcome {
    let new = match crate::config::load(path) {
        Ok(new) => new,
        Err(e) => return Outcome::Rejected(e.to_string()),
    };
    let keys = changed_keys(running, &new);
    if keys.is_empty() {
        return Outcome::Unchanged;
    }
    let (live, restart): (Vec<String>, Vec<String>) = keys.into_iter().partition(|k| is_live(k));
    let merged = merge(running, &new);
    if let Err(e) = crate::logging::set_level(&merged.logs.level) {
        return Outcome::Rejected(e);
    }
    let s = &merged.supervisor;
    let sent = targets.membership.try_send(crate::cluster::membership::Command::Reconfigure {
        heartbeat: s.heartbeat,
        heartbeat_refresh: s.heartbeat_refresh,
        labels: s.labels.clone(),
        capacity: s.capacity,
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "the heartbeat settings could not be handed over; they apply at the next reload");
    }
    targets.sync_period.send_replace(s.sync);
    targets.monitor_period.send_replace(s.monitor);
    targets.blob_period.send_replace(merged.blob.sync);
    targets.health.send_replace((crate::health::HealthSettings::from_config(&merged.health), merged.health.interval));
    targets.log_policy.send_replace(crate::worker::LogPolicy::from_config(&merged.logs));
    targets.config.send_replace(std::sync::Arc::new(merged));
    Outcome::Applied { live, restart }
}

/// A `notify` watch on the config file's directory (editors replace the file rather than
/// write it), reporting changes of that file name on `changes`. Without a watcher (it could
/// not be set up) SIGHUP still works.
pub(crate) struct ConfigFileWatch {
    pub changes: mpsc::UnboundedReceiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl ConfigFileWatch {
    pub(crate) fn new(path: &Path) -> ConfigFileWatch {
        use notify::Watcher;
        let (tx, changes) = mpsc::unbounded_channel();
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().map(std::ffi::OsStr::to_owned)) else {
            return ConfigFileWatch { changes, _watcher: None };
        };
        let handler = move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && !event.kind.is_access()
                && event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str()))
            {
                let _ = tx.send(());
            }
        };
        let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(dir, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let watcher = watcher
            .inspect_err(|e| {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
            })
            .ok();
        ConfigFileWatch { changes, _watcher: watcher }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!("[zookeeper]\nservers = [\"127.0.0.1:2181\"]\n{extra}");
        crate::config::parse(&text, Path::new("/etc/gale/gale.toml")).unwrap()
    }

    #[test]
    fn changed_keys_are_named_and_sorted_into_live_and_restart() {
        let old = config("[supervisor]\nslots = [6700]\nheartbeat_refresh_secs = 60\nlabels = { rack = \"a\" }\n");
        let new = config("[supervisor]\nslots = [6700, 6701]\nheartbeat_refresh_secs = 5\nlabels = { rack = \"b\" }\n");
        let keys = changed_keys(&old, &new);
        assert_eq!(keys, ["supervisor.heartbeat_refresh_secs", "supervisor.labels", "supervisor.slots"]);
        let live: Vec<&String> = keys.iter().filter(|k| is_live(k)).collect();
        assert_eq!(live, ["supervisor.heartbeat_refresh_secs", "supervisor.labels"]);
        let merged = merge(&old, &new);
        assert_eq!(merged.supervisor.slots, [6700], "slots need a restart");
        assert_eq!(merged.supervisor.heartbeat_refresh, Duration::from_secs(5));
        assert_eq!(merged.supervisor.labels["rack"], "b");
        assert!(changed_keys(&old, &old).is_empty());
    }

    /// Every key of the table is kept by `merge` and only those: a config that changes every
    /// restart-only key (and one live key) merges into the running values of exactly those.
    #[test]
    fn merge_keeps_exactly_the_restart_only_keys() {
        let old = config(
            "root = \"/gale\"\n[supervisor]\nslots = [6700]\nid = \"a\"\nhostname = \"h1\"\nlocal_dir = \"/var/lib/gale\"\n\
             log_dir = \"/var/log/gale\"\nsync_secs = 10\n[admin]\nlisten = \"127.0.0.1:9100\"\n[logs]\nformat = \"text\"\n",
        );
        let new = Config {
            zookeeper: crate::config::ZookeeperConfig {
                servers: vec!["10.0.0.1:2181".into()],
                root: "/other".into(),
                session_timeout: old.zookeeper.session_timeout * 2,
                connect_timeout: old.zookeeper.connect_timeout * 2,
                auth: Some(crate::config::ZkAuth { scheme: "digest".into(), credentials_file: "/etc/gale/zk".into() }),
                ..old.zookeeper.clone()
            },
            supervisor: crate::config::SupervisorConfig {
                local_dir: "/srv/gale".into(),
                log_dir: "/srv/log".into(),
                id: Some("b".into()),
                hostname: Some("h2".into()),
                slots: vec![6800],
                sync: old.supervisor.sync * 3,
                ..old.supervisor.clone()
            },
            admin: crate::config::AdminConfig { listen: None },
            logs: crate::config::LogsConfig { format: crate::config::LogFormat::Json, ..old.logs.clone() },
            ..old.clone()
        };
        let changed = changed_keys(&old, &new);
        let restart: Vec<&str> = changed.iter().map(String::as_str).filter(|k| !is_live(k)).collect();
        for (key, _) in RESTART_ONLY {
            let changed = restart.iter().any(|k| k == key || k.starts_with(&format!("{key}.")));
            assert!(changed, "{key} does not change in this test: add it");
        }
        let merged = merge(&old, &new);
        assert_eq!(changed_keys(&old, &merged), ["supervisor.sync_secs"], "only the live key moves");
    }

    #[test]
    fn restart_only_keys_include_auth_and_listen() {
        for key in ["zookeeper.servers", "zookeeper.auth.scheme", "admin.listen", "logs.format", "supervisor.id"] {
            assert!(!is_live(key), "{key}");
        }
        for key in [
            "health.interval_secs",
            "restart.backoff_max_ms",
            "logs.level",
            "blob.cache_target_mb",
            "diagnostics.timeout_secs",
            "diagnostics.commands.jstack",
        ] {
            assert!(is_live(key), "{key}");
        }
    }
}
