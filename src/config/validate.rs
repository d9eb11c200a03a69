//! From the raw file to a [`Config`]: defaults (SPEC §2), rules, and errors that name the
//! file, the line and the key.
//!
//! Design: one pass over [`RawConfig`], section by section. Each key goes through a small
//! helper that knows its kind (duration in ms or secs, bounded integer, absolute path, one of
//! a set of words), applies the default when the key is absent and, when it is present,
//! blames its own line. Rules that relate two keys (`heartbeat_refresh_secs >=
//! heartbeat_secs`) blame whichever of the two the operator wrote, so the message always
//! points at a line that exists.
//!
//! The first error wins: an operator fixes one line and runs `gale check-config` again. The
//! order is the section order of SPEC §2, except that unknown keys and wrong types (found
//! before any rule runs) are reported first.
//!
//! The inverse, [`Config::to_toml`], is [`super::render`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{self, Int, RawConfig, ReadError, Str};
use super::render::{HEALTH_FAILURE, LOG_FORMAT, SESSION_LOSS};
use super::{
    AdminConfig, BlobConfig, Capacity, Config, DiagnosticsConfig, HealthConfig, LogsConfig, RestartConfig,
    SupervisorConfig, WorkerConfig, ZkAuth, ZookeeperConfig,
};

/// Longest accepted duration. Nothing gale waits for is measured in years, and a bound keeps
/// `now + duration` arithmetic elsewhere from overflowing on a typo such as an extra `000`.
const MAX_SECS: i64 = 365 * 24 * 3600;
/// Largest accepted size in MiB: the byte count must still fit in a `u64`.
const MAX_MB: i64 = (u64::MAX >> 20) as i64;
/// ZooKeeper servers refuse sessions shorter than 2 × tickTime (4 s with the default 2 s
/// tick), and the client must fit its reconnect backoff inside the session.
const MIN_SESSION_TIMEOUT_MS: i64 = 4000;

/// Why a config file was rejected. `Display` is one line: `<file>:<line>: <key>: <message>`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The OS error is part of the message rather than a
    /// `source`, so that the one-line message is complete and printing the error chain
    /// does not repeat it.
    #[error("{}: cannot read the config file: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// Not valid TOML (or, rarely, a problem the TOML parser could not tie to a key).
    #[error("{}:{line}: {message}", path.display())]
    Syntax { path: PathBuf, line: usize, message: String },
    /// A key is unknown, has the wrong type, is missing or breaks a rule.
    #[error("{}:{line}: {key}: {message}", path.display())]
    Key { path: PathBuf, line: usize, key: String, message: String },
}

impl ConfigError {
    /// The 1-based line the error is about, when there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, .. } | ConfigError::Key { line, .. } => Some(*line),
        }
    }

    /// The dotted key the error is about (`zookeeper.servers`), when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Key { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
    parse(&text, path)
}

/// Parses and validates `text`; `path` is only used in errors and kept in [`Config::path`].
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let at = Locator { path, text };
    let raw = raw::read(text).map_err(|e| at.read_error(e))?;
    config(&at, raw)
}

/// Turns byte spans into line numbers and errors for one file.
#[derive(Clone, Copy)]
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl<'a> Locator<'a> {
    fn section(&'a self, name: &'static str) -> Section<'a> {
        Section { at: self, name }
    }

    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
    }

    fn error(&self, key: &str, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::Key {
            path: self.path.to_owned(),
            line: self.line(span),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn read_error(&self, err: ReadError) -> ConfigError {
        match err {
            ReadError::Syntax(e) => ConfigError::Syntax {
                path: self.path.to_owned(),
                line: e.span().map_or(1, |s| self.line(&s)),
                message: format!("invalid TOML: {}", one_line(e.message())),
            },
            ReadError::Shape(e) => self.error(&e.path, &e.span, e.message),
            ReadError::Type(e, index) => {
                let message = friendly_type_error(e.message());
                match e.span().as_ref().and_then(|s| index.key_at(s).map(|k| (s, k))) {
                    Some((span, key)) => self.error(&key.path, span, message),
                    None => ConfigError::Syntax {
                        path: self.path.to_owned(),
                        line: e.span().map_or(1, |s| self.line(&s)),
                        message,
                    },
                }
            }
        }
    }
}

fn one_line(message: &str) -> String {
    message.trim().lines().map(str::trim).collect::<Vec<_>>().join("; ")
}

/// serde says `invalid type: string "x", expected i64`; operators read "expected an integer,
/// found string "x"". Unrecognised shapes pass through unchanged.
fn friendly_type_error(message: &str) -> String {
    let message = one_line(message);
    let Some((found, expected)) =
        message.strip_prefix("invalid type: ").and_then(|rest| rest.rsplit_once(", expected "))
    else {
        return message;
    };
    let expected = match expected {
        "i64" | "u64" | "u32" | "u16" | "u8" | "i32" => "an integer",
        "a boolean" => "a boolean (`true` or `false`)",
        "a sequence" => "an array",
        "a map" => "a table",
        s if s.starts_with("struct ") => "a table",
        s => s,
    };
    let found = match found {
        "map" => "a table",
        "sequence" => "an array",
        other => other,
    };
    format!("expected {expected}, found {found}")
}

fn config(at: &Locator<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    Ok(Config {
        path: at.path.to_owned(),
        zookeeper: zookeeper(at.section("zookeeper"), raw.zookeeper)?,
        supervisor: supervisor(at.section("supervisor"), raw.supervisor)?,
        worker: worker(at.section("worker"), raw.worker)?,
        restart: restart(at.section("restart"), raw.restart)?,
        blob: blob(at.section("blob"), raw.blob)?,
        health: health(at.section("health"), raw.health)?,
        logs: logs(at.section("logs"), raw.logs)?,
        admin: admin(at.section("admin"), raw.admin)?,
        diagnostics: diagnostics(at.section("diagnostics"), raw.diagnostics)?,
    })
}

/// A section's contents (or the empty default) and the span of its header, if written.
fn contents<T: Default>(raw: Option<Spanned<T>>) -> (T, Option<Range<usize>>) {
    match raw {
        None => (T::default(), None),
        Some(s) => {
            let span = s.span();
            (s.into_inner(), Some(span))
        }
    }
}

fn zookeeper(sec: Section<'_>, raw: Option<Spanned<raw::RawZookeeper>>) -> Result<ZookeeperConfig, ConfigError> {
    let (z, header) = contents(raw);
    let Some(list) = z.servers else {
        // No value to point at: the `[zookeeper]` header if there is one, else line 1.
        let m = "required key is missing: list the ensemble, e.g. `servers = [\"zk1:2181\"]`";
        return Err(sec.err("servers", &header.unwrap_or(0..0), m));
    };
    if list.get_ref().is_empty() {
        return Err(sec.err("servers", &list.span(), "must list at least one `host:port`"));
    }
    let mut servers: Vec<String> = Vec::new();
    for server in list.into_inner() {
        check_server(server.get_ref()).map_err(|m| sec.err("servers", &server.span(), m))?;
        if servers.contains(server.get_ref()) {
            let m = format!("server `{}` is listed twice", server.get_ref());
            return Err(sec.err("servers", &server.span(), m));
        }
        servers.push(server.into_inner());
    }
    let root = root(sec, z.root)?;
    let session_timeout = sec.ms("session_timeout_ms", &z.session_timeout_ms, 20_000)?;
    if let Some(v) = &z.session_timeout_ms
        && *v.get_ref() < MIN_SESSION_TIMEOUT_MS
    {
        let m = format!(
            "must be at least {MIN_SESSION_TIMEOUT_MS}, got {}: ZooKeeper servers refuse sessions \
             shorter than 2 × tickTime (4000 with the default tick) and the client needs time \
             within the session to reconnect with backoff",
            v.get_ref()
        );
        return Err(sec.err("session_timeout_ms", &v.span(), m));
    }
    Ok(ZookeeperConfig {
        servers,
        root,
        session_timeout,
        connect_timeout: sec.ms("connect_timeout_ms", &z.connect_timeout_ms, 15_000)?,
        auth: z.auth.map(|auth| self::auth(sec, auth)).transpose()?,
        on_session_loss: sec.choice("on_session_loss", &z.on_session_loss, &SESSION_LOSS)?,
        stop_workers_after: sec.secs("stop_workers_after_secs", &z.stop_workers_after_secs, 300)?,
    })
}

fn root(sec: Section<'_>, raw: Option<Str>) -> Result<String, ConfigError> {
    let Some(root) = raw else {
        return Ok("/gale".to_owned());
    };
    let fail = |m: String| Err(sec.err("root", &root.span(), m));
    let value = root.get_ref();
    if !value.starts_with('/') {
        return fail(format!("must be an absolute ZooKeeper path such as `/gale`, got `{value}`"));
    }
    if value == "/" {
        return fail("must not be `/` itself: give gale a node of its own, such as `/gale`".into());
    }
    if value.ends_with('/') {
        return fail(format!("must not end with `/`, got `{value}`"));
    }
    for segment in value[1..].split('/') {
        if segment.is_empty() {
            return fail(format!("`{value}` has an empty segment (`//`)"));
        }
        if let Err(e) = crate::ident::validate("root segment", segment) {
            return fail(e.to_string());
        }
    }
    Ok(root.into_inner())
}

fn auth(sec: Section<'_>, auth: Spanned<raw::RawAuth>) -> Result<ZkAuth, ConfigError> {
    let span = auth.span();
    let auth = auth.into_inner();
    let scheme = match auth.scheme {
        None => "digest".to_owned(),
        // SPEC §7: digest is the one scheme gale speaks; anything else would only fail later,
        // at connect time, with a less helpful message.
        Some(s) if s.get_ref() != "digest" => {
            let m = format!("only `digest` is supported, got `{}`", s.get_ref());
            return Err(sec.err("auth.scheme", &s.span(), m));
        }
        Some(s) => s.into_inner(),
    };
    let Some(file) = auth.credentials_file else {
        let m = "required when `auth` is set: a file holding `user:password`";
        return Err(sec.err("auth.credentials_file", &span, m));
    };
    Ok(ZkAuth { scheme, credentials_file: sec.abs_path("auth.credentials_file", &Some(file), "")? })
}

fn supervisor(sec: Section<'_>, raw: Option<Spanned<raw::RawSupervisor>>) -> Result<SupervisorConfig, ConfigError> {
    let (s, _) = contents(raw);
    let id = s.id.map(|id| match crate::ident::validate("supervisor id", id.get_ref()) {
        Ok(()) => Ok(id.into_inner()),
        Err(e) => Err(sec.err("id", &id.span(), e.to_string())),
    });
    let hostname = s.hostname.map(|h| match h.get_ref().as_str() {
        "" => Err(sec.err("hostname", &h.span(), "must not be empty (leave it out to use the system hostname)")),
        v if v.contains(|c: char| c.is_whitespace() || c == '/') => {
            Err(sec.err("hostname", &h.span(), format!("`{v}` must not contain whitespace or `/`")))
        }
        _ => Ok(h.into_inner()),
    });
    let heartbeat = sec.secs("heartbeat_secs", &s.heartbeat_secs, 5)?;
    let refresh = sec.secs("heartbeat_refresh_secs", &s.heartbeat_refresh_secs, 60)?;
    sec.at_least(
        ("heartbeat_refresh_secs", &s.heartbeat_refresh_secs, refresh.as_secs()),
        ("heartbeat_secs", &s.heartbeat_secs, heartbeat.as_secs()),
    )?;
    let mut labels = BTreeMap::new();
    for (name, value) in s.labels.map(Spanned::into_inner).unwrap_or_default() {
        if name.get_ref().is_empty() {
            return Err(sec.err("labels", &name.span(), "label names must not be empty"));
        }
        labels.insert(name.into_inner(), value.into_inner());
    }
    let (capacity, _) = contents(s.capacity);
    Ok(SupervisorConfig {
        local_dir: sec.abs_path("local_dir", &s.local_dir, "/var/lib/gale")?,
        log_dir: sec.abs_path("log_dir", &s.log_dir, "/var/log/gale")?,
        id: id.transpose()?,
        hostname: hostname.transpose()?,
        slots: slots(sec, s.slots)?,
        heartbeat,
        heartbeat_refresh: refresh,
        sync: sec.secs("sync_secs", &s.sync_secs, 10)?,
        monitor: sec.secs("monitor_secs", &s.monitor_secs, 3)?,
        labels,
        capacity: Capacity {
            cpu_percent: sec.int("capacity.cpu_percent", &capacity.cpu_percent, 400, 1, U32)?,
            memory_mb: sec.int("capacity.memory_mb", &capacity.memory_mb, 4096, 1, MAX_MB)?,
        },
    })
}

fn slots(sec: Section<'_>, raw: Option<Spanned<Vec<Int>>>) -> Result<Vec<u16>, ConfigError> {
    let Some(list) = raw else {
        return Ok(vec![6700, 6701, 6702, 6703]);
    };
    if list.get_ref().is_empty() {
        return Err(sec.err("slots", &list.span(), "must list at least one port"));
    }
    let mut ports = Vec::new();
    for port in list.get_ref() {
        let p: u16 = sec.bounded("slots", port, 1, u16::MAX.into())?;
        if ports.contains(&p) {
            return Err(sec.err("slots", &port.span(), format!("port {p} is listed twice")));
        }
        ports.push(p);
    }
    Ok(ports)
}

fn worker(sec: Section<'_>, raw: Option<Spanned<raw::RawWorker>>) -> Result<WorkerConfig, ConfigError> {
    let (w, _) = contents(raw);
    let start = sec.secs("start_timeout_secs", &w.start_timeout_secs, 120)?;
    let heartbeat = sec.secs("heartbeat_timeout_secs", &w.heartbeat_timeout_secs, 30)?;
    let max = sec.secs("max_timeout_secs", &w.max_timeout_secs, 600)?;
    let max_side = ("max_timeout_secs", &w.max_timeout_secs, max.as_secs());
    sec.at_least(max_side, ("start_timeout_secs", &w.start_timeout_secs, start.as_secs()))?;
    let heartbeat_side = ("heartbeat_timeout_secs", &w.heartbeat_timeout_secs, heartbeat.as_secs());
    sec.at_least(max_side, heartbeat_side)?;
    let mut allowed_users = Vec::new();
    for user in w.allowed_users.map(Spanned::into_inner).unwrap_or_default() {
        if user.get_ref().is_empty() {
            return Err(sec.err("allowed_users", &user.span(), "user names must not be empty"));
        }
        allowed_users.push(user.into_inner());
    }
    Ok(WorkerConfig {
        start_timeout: start,
        heartbeat_timeout: heartbeat,
        max_timeout: max,
        shutdown_grace: sec.secs("shutdown_grace_secs", &w.shutdown_grace_secs, 3)?,
        run_as_user: w.run_as_user.is_some_and(Spanned::into_inner),
        allowed_users,
        min_uid: sec.int("min_uid", &w.min_uid, 1000, 0, U32)?,
    })
}

fn restart(sec: Section<'_>, raw: Option<Spanned<raw::RawRestart>>) -> Result<RestartConfig, ConfigError> {
    let (r, _) = contents(raw);
    let initial = sec.ms("backoff_initial_ms", &r.backoff_initial_ms, 1000)?;
    let max = sec.ms("backoff_max_ms", &r.backoff_max_ms, 60_000)?;
    // Both came from i64 milliseconds, so the casts are exact.
    sec.at_least(
        ("backoff_max_ms", &r.backoff_max_ms, max.as_millis() as u64),
        ("backoff_initial_ms", &r.backoff_initial_ms, initial.as_millis() as u64),
    )?;
    Ok(RestartConfig {
        backoff_initial: initial,
        backoff_max: max,
        reset_after: sec.secs("reset_after_secs", &r.reset_after_secs, 600)?,
        node_budget_per_min: sec.int("node_budget_per_min", &r.node_budget_per_min, 120, 1, U32)?,
    })
}

fn blob(sec: Section<'_>, raw: Option<Spanned<raw::RawBlob>>) -> Result<BlobConfig, ConfigError> {
    let (b, _) = contents(raw);
    Ok(BlobConfig {
        // 0 is meaningful: keep no blob once nothing references it.
        cache_target_mb: sec.int("cache_target_mb", &b.cache_target_mb, 10_240, 0, MAX_MB)?,
        sync: sec.secs("sync_secs", &b.sync_secs, 30)?,
        download_timeout: sec.secs("download_timeout_secs", &b.download_timeout_secs, 300)?,
        download_retries: sec.int("download_retries", &b.download_retries, 3, 0, U32)?,
    })
}

fn health(sec: Section<'_>, raw: Option<Spanned<raw::RawHealth>>) -> Result<HealthConfig, ConfigError> {
    let (h, _) = contents(raw);
    Ok(HealthConfig {
        script_dir: sec.abs_path("script_dir", &h.script_dir, "/etc/gale/healthchecks")?,
        interval: sec.secs("interval_secs", &h.interval_secs, 30)?,
        timeout: sec.ms("timeout_ms", &h.timeout_ms, 5000)?,
        fail_on_timeout: h.fail_on_timeout.is_none_or(Spanned::into_inner),
        on_failure: sec.choice("on_failure", &h.on_failure, &HEALTH_FAILURE)?,
    })
}

fn logs(sec: Section<'_>, raw: Option<Spanned<raw::RawLogs>>) -> Result<LogsConfig, ConfigError> {
    let (l, _) = contents(raw);
    let level = match l.level {
        None => "info".to_owned(),
        Some(level) => match check_level(level.get_ref()) {
            Ok(()) => level.into_inner(),
            Err(m) => return Err(sec.err("level", &level.span(), m)),
        },
    };
    Ok(LogsConfig {
        worker_log_max_mb: sec.int("worker_log_max_mb", &l.worker_log_max_mb, 100, 1, MAX_MB)?,
        worker_log_keep: sec.int("worker_log_keep", &l.worker_log_keep, 5, 1, U32)?,
        node_quota_mb: sec.int("node_quota_mb", &l.node_quota_mb, 10_240, 1, MAX_MB)?,
        format: sec.choice("format", &l.format, &LOG_FORMAT)?,
        level,
    })
}

fn admin(sec: Section<'_>, raw: Option<Spanned<raw::RawAdmin>>) -> Result<AdminConfig, ConfigError> {
    let (a, _) = contents(raw);
    let listen = match a.listen {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8780))),
        Some(l) if l.get_ref().is_empty() => None,
        Some(l) => Some(l.get_ref().parse().map_err(|_| {
            let m = format!("`{}` is not an `ip:port` address (write \"\" to turn the endpoint off)", l.get_ref());
            sec.err("listen", &l.span(), m)
        })?),
    };
    Ok(AdminConfig { listen })
}

fn diagnostics(sec: Section<'_>, raw: Option<Spanned<raw::RawDiagnostics>>) -> Result<DiagnosticsConfig, ConfigError> {
    let (d, _) = contents(raw);
    let mut commands = BTreeMap::new();
    for (name, argv) in d.commands.map(Spanned::into_inner).unwrap_or_default() {
        let key = format!("commands.{}", super::render::key(name.get_ref()));
        if let Err(e) = crate::ident::validate("diagnostics command name", name.get_ref()) {
            return Err(sec.err(&key, &name.span(), e.to_string()));
        }
        let span = argv.span();
        let argv: Vec<String> = argv.into_inner().into_iter().map(Spanned::into_inner).collect();
        crate::diagnostics::check_command(&argv).map_err(|m| sec.err(&key, &span, m))?;
        commands.insert(name.into_inner(), argv);
    }
    Ok(DiagnosticsConfig {
        // At most 600: `gale worker diag` waits for the run through the control socket.
        timeout: sec.int("timeout_secs", &d.timeout_secs, 30, 1, 600).map(Duration::from_secs)?,
        max_output_mb: sec.int("max_output_mb", &d.max_output_mb, 16, 1, MAX_MB)?,
        commands,
    })
}

const U32: i64 = u32::MAX as i64;

/// One section of one file: turns a key's short name and span into an error, and holds one
/// helper per kind of value. Each helper applies the default when the key is absent.
#[derive(Clone, Copy)]
struct Section<'a> {
    at: &'a Locator<'a>,
    name: &'static str,
}

impl Section<'_> {
    fn err(&self, key: &str, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        self.at.error(&format!("{}.{key}", self.name), span, message)
    }

    /// `raw` narrowed to `T` within `min..=max`; never wraps.
    fn bounded<T: TryFrom<i64>>(&self, key: &str, raw: &Int, min: i64, max: i64) -> Result<T, ConfigError> {
        let n = *raw.get_ref();
        let message = match n {
            n if n < min && min == 0 => format!("must not be negative, got {n}"),
            n if n < min && min == 1 => format!("must be greater than 0, got {n}"),
            n if n < min => format!("must be at least {min}, got {n}"),
            n if n > max => format!("must be at most {max}, got {n}"),
            n => match T::try_from(n) {
                Ok(v) => return Ok(v),
                Err(_) => format!("{n} is out of range"),
            },
        };
        Err(self.err(key, &raw.span(), message))
    }

    fn int<T: TryFrom<i64>>(
        &self,
        key: &str,
        raw: &Option<Int>,
        default: T,
        min: i64,
        max: i64,
    ) -> Result<T, ConfigError> {
        raw.as_ref().map_or(Ok(default), |raw| self.bounded(key, raw, min, max))
    }

    fn secs(&self, key: &str, raw: &Option<Int>, default: u64) -> Result<Duration, ConfigError> {
        self.int(key, raw, default, 1, MAX_SECS).map(Duration::from_secs)
    }

    fn ms(&self, key: &str, raw: &Option<Int>, default: u64) -> Result<Duration, ConfigError> {
        self.int(key, raw, default, 1, MAX_SECS * 1000).map(Duration::from_millis)
    }

    /// Checks `hi >= lo` for two keys, each `(key, raw, value in file units)`. Blames `hi`
    /// if the file sets it, else `lo` (the defaults are consistent, so when this fails at
    /// least one of the two is written).
    fn at_least(&self, hi: (&str, &Option<Int>, u64), lo: (&str, &Option<Int>, u64)) -> Result<(), ConfigError> {
        let ((hi_key, hi_raw, hi_value), (lo_key, lo_raw, lo_value)) = (hi, lo);
        if hi_value >= lo_value {
            return Ok(());
        }
        Err(match (hi_raw, lo_raw) {
            (Some(h), _) => {
                let note = if lo_raw.is_none() { ", the default" } else { "" };
                let m = format!("must be at least {lo_key} ({lo_value}{note}), got {hi_value}");
                self.err(hi_key, &h.span(), m)
            }
            (None, l) => {
                let m = format!("must be at most {hi_key} ({hi_value}, the default), got {lo_value}");
                self.err(lo_key, &l.as_ref().map_or(0..0, Spanned::span), m)
            }
        })
    }

    fn abs_path(&self, key: &str, raw: &Option<Str>, default: &str) -> Result<PathBuf, ConfigError> {
        let Some(raw) = raw else {
            return Ok(PathBuf::from(default));
        };
        if !Path::new(raw.get_ref()).is_absolute() {
            let m = format!("must be an absolute path, got `{}`", raw.get_ref());
            return Err(self.err(key, &raw.span(), m));
        }
        Ok(PathBuf::from(raw.get_ref()))
    }

    /// One of the words in `table`, whose first entry is the default, with a hint for a
    /// near miss.
    fn choice<T: Copy>(&self, key: &str, raw: &Option<Str>, table: &[(&str, T)]) -> Result<T, ConfigError> {
        let Some(raw) = raw else {
            return Ok(table[0].1);
        };
        if let Some((_, value)) = table.iter().find(|(word, _)| word == raw.get_ref()) {
            return Ok(*value);
        }
        let words: Vec<&str> = table.iter().map(|(word, _)| *word).collect();
        let mut m = format!("must be one of `{}`, got `{}`", words.join("`, `"), raw.get_ref());
        if let Some(near) = raw::nearest(raw.get_ref(), &words) {
            let _ = write!(m, " (did you mean `{near}`?)");
        }
        Err(self.err(key, &raw.span(), m))
    }
}

/// `host:port` with a non-empty host and a port in 1..=65535.
fn check_server(server: &str) -> Result<(), String> {
    if server.contains(',') {
        return Err(format!("`{server}` holds several servers: list each as its own string"));
    }
    let Some((host, port)) = server.rsplit_once(':') else {
        return Err(format!("`{server}` has no port: write it as `host:port`, e.g. `{server}:2181`"));
    };
    if host.is_empty() {
        return Err(format!("`{server}` has an empty host"));
    }
    if host.contains(char::is_whitespace) || host.contains('/') {
        return Err(format!("`{server}` has whitespace or `/` in its host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!("`{server}`: write an IPv6 address in brackets, e.g. `[::1]:2181`"));
    }
    // Digits only: `u16::from_str` would also take `+2181`, which ZooKeeper clients do not.
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(format!("`{server}` has port `{port}`, expected a number in 1..=65535")),
    }
}

/// A `tracing` filter that `EnvFilter` accepts and that is not a misspelt level: `EnvFilter`
/// reads a lone `inof` as "everything from target `inof`", which would silence the agent.
fn check_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if level.trim().is_empty() {
        return Err("must not be empty: use `info`, or a filter such as `gale=debug,info`".into());
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
        return Err(format!("`{level}` is not a valid tracing filter: {e}"));
    }
    for directive in level.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        let bare = !directive.contains(['=', '[', ':']) && lower.len() >= 3;
        let near = LEVELS
            .iter()
            .find(|l| strsim::damerau_levenshtein(&lower, l) <= 2 || (l.len() >= 4 && lower.starts_with(*l)));
        if bare
            && !LEVELS.contains(&lower.as_str())
            && let Some(near) = near
        {
            return Err(format!("`{directive}` is not a level (did you mean `{near}`?)"));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
