//! The config file exactly as written: the low layer of the two (see the parent module).
//!
//! Every struct mirrors one TOML table, with the key names of SPEC §2, `deny_unknown_fields`,
//! and every key optional: defaults and rules live in [`super::validate`], in one place, so
//! that "absent" and "set to the default" stay distinguishable (a rule that compares two keys
//! blames the one the operator wrote). Every value is a [`Spanned`], so any later error can
//! name the line it came from.
//!
//! Integers are kept as TOML's own `i64` here and narrowed in validation: serde's range
//! errors ("expected u16") say nothing an operator can act on, and a negative or oversized
//! value deserves the same message as any other out-of-range value.
//!
//! This module also knows the file's shape without deserializing it: [`FileIndex`] walks
//! the parsed document, finds unknown keys (with a "did you mean" drawn from the serde field
//! lists themselves, so the list of valid keys cannot drift from the structs) and maps a byte
//! span back to the dotted key it belongs to, which serde's errors do not expose.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub(super) type Str = Spanned<String>;
pub(super) type Int = Spanned<i64>;
pub(super) type Bool = Spanned<bool>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub zookeeper: Option<Spanned<RawZookeeper>>,
    pub supervisor: Option<Spanned<RawSupervisor>>,
    pub worker: Option<Spanned<RawWorker>>,
    pub restart: Option<Spanned<RawRestart>>,
    pub blob: Option<Spanned<RawBlob>>,
    pub health: Option<Spanned<RawHealth>>,
    pub logs: Option<Spanned<RawLogs>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub diagnostics: Option<Spanned<RawDiagnostics>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawZookeeper {
    pub servers: Option<Spanned<Vec<Str>>>,
    pub root: Option<Str>,
    pub session_timeout_ms: Option<Int>,
    pub connect_timeout_ms: Option<Int>,
    pub auth: Option<Spanned<RawAuth>>,
    pub on_session_loss: Option<Str>,
    pub stop_workers_after_secs: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub scheme: Option<Str>,
    pub credentials_file: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSupervisor {
    pub local_dir: Option<Str>,
    pub log_dir: Option<Str>,
    pub id: Option<Str>,
    pub hostname: Option<Str>,
    pub slots: Option<Spanned<Vec<Int>>>,
    pub heartbeat_secs: Option<Int>,
    pub heartbeat_refresh_secs: Option<Int>,
    pub sync_secs: Option<Int>,
    pub monitor_secs: Option<Int>,
    pub labels: Option<Spanned<BTreeMap<Str, Str>>>,
    pub capacity: Option<Spanned<RawCapacity>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCapacity {
    pub cpu_percent: Option<Int>,
    pub memory_mb: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorker {
    pub start_timeout_secs: Option<Int>,
    pub heartbeat_timeout_secs: Option<Int>,
    pub max_timeout_secs: Option<Int>,
    pub shutdown_grace_secs: Option<Int>,
    pub run_as_user: Option<Bool>,
    pub allowed_users: Option<Spanned<Vec<Str>>>,
    pub min_uid: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRestart {
    pub backoff_initial_ms: Option<Int>,
    pub backoff_max_ms: Option<Int>,
    pub reset_after_secs: Option<Int>,
    pub node_budget_per_min: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBlob {
    pub cache_target_mb: Option<Int>,
    pub sync_secs: Option<Int>,
    pub download_timeout_secs: Option<Int>,
    pub download_retries: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub script_dir: Option<Str>,
    pub interval_secs: Option<Int>,
    pub timeout_ms: Option<Int>,
    pub fail_on_timeout: Option<Bool>,
    pub on_failure: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogs {
    pub worker_log_max_mb: Option<Int>,
    pub worker_log_keep: Option<Int>,
    pub node_quota_mb: Option<Int>,
    pub format: Option<Str>,
    pub level: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiagnostics {
    pub timeout_secs: Option<Int>,
    pub max_output_mb: Option<Int>,
    /// Name → argv: free-form names, checked in validation.
    pub commands: Option<Spanned<BTreeMap<Str, Spanned<Vec<Str>>>>>,
}

/// The valid keys of the table at dotted `path` ("" is the top level), or `None` for a table
/// whose keys are free-form (`supervisor.labels`, `diagnostics.commands`) or that the schema has no table at.
pub(super) fn known_keys(path: &str) -> Option<&'static [&'static str]> {
    Some(match path {
        "" => field_names::<RawConfig>(),
        "zookeeper" => field_names::<RawZookeeper>(),
        "zookeeper.auth" => field_names::<RawAuth>(),
        "supervisor" => field_names::<RawSupervisor>(),
        "supervisor.capacity" => field_names::<RawCapacity>(),
        "worker" => field_names::<RawWorker>(),
        "restart" => field_names::<RawRestart>(),
        "blob" => field_names::<RawBlob>(),
        "health" => field_names::<RawHealth>(),
        "logs" => field_names::<RawLogs>(),
        "admin" => field_names::<RawAdmin>(),
        "diagnostics" => field_names::<RawDiagnostics>(),
        _ => return None,
    })
}

/// The field names serde's derive generated for `T`, read by offering `T` a deserializer
/// that only records what `deserialize_struct` is asked for.
fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct FieldNames<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("field names recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // The error is the expected outcome: the recorder never produces a value.
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A key found in the file: its dotted path and where its key and value are.
#[derive(Debug, Clone)]
pub(super) struct KeyAt {
    pub path: String,
    pub key: Range<usize>,
    pub value: Range<usize>,
}

/// A problem found while walking the document, before serde sees it.
#[derive(Debug, Clone)]
pub(super) struct ShapeError {
    pub path: String,
    pub span: Range<usize>,
    pub message: String,
}

/// Every key of the document with its spans, in file order.
#[derive(Debug, Default)]
pub(super) struct FileIndex {
    keys: Vec<KeyAt>,
}

impl FileIndex {
    /// Indexes `root` and returns the unknown key that comes first in the file, if any.
    pub(crate) fn build(root: &DeTable<'_>) -> (Self, Option<ShapeError>) {
        let mut index = FileIndex::default();
        let mut errors = Vec::new();
        index.walk("", root, &mut errors);
        index.keys.sort_by_key(|k| (k.key.start, k.path.len()));
        let first = errors.into_iter().min_by_key(|e| e.span.start);
        (index, first)
    }

    fn walk(&mut self, prefix: &str, table: &DeTable<'_>, errors: &mut Vec<ShapeError>) {
        let known = known_keys(prefix);
        for (key, value) in table {
            let path = join(prefix, key.get_ref());
            if let Some(known) = known
                && !known.contains(&key.get_ref().as_ref())
            {
                errors.push(ShapeError {
                    message: unknown_key_message(prefix, key.get_ref(), known),
                    path: path.clone(),
                    span: key.span(),
                });
            }
            self.keys.push(KeyAt { path: path.clone(), key: key.span(), value: value.span() });
            if let Some(message) = shape_problem(&path, value.get_ref()) {
                errors.push(ShapeError { path: path.clone(), span: value.span(), message });
            }
            match value.get_ref() {
                DeValue::Table(inner) => self.walk(&path, inner, errors),
                // Arrays of tables (`[[zookeeper]]`) have no place in the schema; serde
                // reports their type. Their keys are still indexed for line lookups.
                DeValue::Array(items) => {
                    for item in items.iter() {
                        if let DeValue::Table(inner) = item.get_ref() {
                            self.walk_free(&path, inner);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn walk_free(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table {
            let path = join(prefix, key.get_ref());
            self.keys.push(KeyAt { path: path.clone(), key: key.span(), value: value.span() });
            if let DeValue::Table(inner) = value.get_ref() {
                self.walk_free(&path, inner);
            }
        }
    }

    /// The innermost key whose key or value covers `span`: where serde's error points.
    pub(crate) fn key_at(&self, span: &Range<usize>) -> Option<&KeyAt> {
        let covers = |r: &Range<usize>| r.start <= span.start && span.end <= r.end.max(r.start + 1);
        self.keys
            .iter()
            .filter(|k| covers(&k.key) || covers(&k.value))
            .min_by_key(|k| k.value.end.saturating_sub(k.value.start))
    }
}

/// Type problems serde would describe badly: a schema table given as something else (serde
/// says "expected struct RawZookeeper") and date-times, which no key takes (serde sees them
/// as a map).
fn shape_problem(path: &str, value: &DeValue<'_>) -> Option<String> {
    if known_keys(path).is_some() && !value.is_table() {
        let found = value.type_str();
        let article = if found.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        let table = if path.contains('.') { String::new() } else { format!(" `[{path}]`") };
        return Some(format!("expected a table{table}, found {article} {found}"));
    }
    let is_datetime = |v: &DeValue<'_>| v.is_datetime();
    match value {
        v if is_datetime(v) => {
            Some("expected a string or a number, found a date-time (quote it if it is a string)".into())
        }
        DeValue::Array(items) if items.iter().any(|v| is_datetime(v.get_ref())) => {
            Some("expected strings or numbers, found a date-time (quote it if it is a string)".into())
        }
        _ => None,
    }
}

/// The dotted path of `key` under `prefix`, as it would be written: a key that is not a bare
/// TOML key (empty, or holding `.`, a space, ...) is quoted, so that an error never names an
/// empty key (`[""]` once gave "gale.toml:1: : unknown section") or an ambiguous one. Every
/// key of the schema is bare, so lookups by path are unaffected.
fn join(prefix: &str, key: &str) -> String {
    let key = super::render::key(key);
    if prefix.is_empty() { key } else { format!("{prefix}.{key}") }
}

/// "unknown key", "unknown section" or "unknown key in [auth]", with the best hint we have.
fn unknown_key_message(prefix: &str, key: &str, known: &[&str]) -> String {
    let what = if prefix.is_empty() { "unknown section" } else { "unknown key" };
    if let Some(near) = nearest(key, known) {
        let near = if prefix.is_empty() { format!("[{near}]") } else { format!("`{near}`") };
        return format!("{what} (did you mean {near}?)");
    }
    // A right key in the wrong table is a common slip when copying from Storm's flat yaml.
    if !prefix.is_empty() {
        let sections = known_keys("").unwrap_or_default();
        if let Some(home) =
            sections.iter().find(|s| **s != prefix && known_keys(s).is_some_and(|keys| keys.contains(&key)))
        {
            return format!("{what} (`{key}` belongs in [{home}])");
        }
    }
    let valid = known.join("`, `");
    format!("{what} (valid here: `{valid}`)")
}

/// The candidate closest to `word`, if it is close enough to be a likely misspelling.
///
/// Case and `-` vs `_` are ignored first, since both are frequent and never intended. Then
/// a normalized Damerau-Levenshtein similarity of at least 0.7 counts as close
/// (`sesion_timeout_ms`, `session_timeout_secs` → `session_timeout_ms`), and so does a word
/// that is the leading part of a key (`cpu` → `cpu_percent`, `memory` → `memory_mb`). An
/// unrelated word gets no confident-looking suggestion.
pub(super) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let word = norm(word);
    let score = |candidate: &str| {
        let similarity = strsim::normalized_damerau_levenshtein(&word, candidate);
        let leading_part = word.len() >= 3 && candidate.starts_with(&format!("{word}_"));
        if leading_part { similarity.max(0.7) } else { similarity }
    };
    candidates
        .iter()
        .map(|c| (score(&norm(c)), *c))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Parses and deserializes `text`; errors carry their span (serde's may lack one).
pub(super) fn read(text: &str) -> Result<RawConfig, ReadError> {
    let doc = DeTable::parse(text).map_err(ReadError::Syntax)?;
    let (index, unknown) = FileIndex::build(doc.get_ref());
    if let Some(err) = unknown {
        return Err(ReadError::Shape(err));
    }
    RawConfig::deserialize(toml::de::Deserializer::from(doc)).map_err(|e| ReadError::Type(e, index))
}

/// Why [`read`] failed, kept raw so the caller can attach the file name.
#[derive(Debug)]
pub(super) enum ReadError {
    /// Not TOML at all.
    Syntax(toml::de::Error),
    /// Valid TOML, but a key the schema does not know.
    Shape(ShapeError),
    /// A value of the wrong type: serde's message, a span when it has one, and the index
    /// that maps the span back to a key.
    Type(toml::de::Error, FileIndex),
}
