//! Hostile values for `decoders_prop`, and the ways it breaks a payload.
//!
//! Uniformly random bytes almost never get past a JSON or TOML parser, so most of what is
//! generated here starts from a payload the decoder accepts and breaks it a little: a value
//! replaced by one of the wrong type, a huge, negative or fractional number, a string with
//! `..`, `/`, NUL, braces or non-ASCII text, a key removed or added, an array element doubled,
//! a nesting deeper than any parser limit. That keeps the right keys in place, so each case
//! reaches the rule it is about instead of failing at the first brace.

use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Number, Value, json};

/// Every key of every payload schema: an inserted key is often a real one in the wrong place.
#[rustfmt::skip]
const PAYLOAD_KEYS: &[&str] = &[
    "schema", "topology_id", "launch", "command", "env", "liveness", "start_timeout_secs",
    "heartbeat_timeout_secs", "memory_mb", "cpu_percent", "user", "blobs", "key", "name", "extract",
    "restart_on_update", "workers", "supervisor_id", "port", "version", "sha256", "size", "url", "archive",
    "action", "signal", "id", "hostname", "state", "health", "started_at_ms", "time_ms", "slots", "used_slots",
    "capacity", "labels", "worker_id", "pid", "since_ms", "restarts", "last_exit", "code", "reason", "at_ms",
    "error",
];

/// Strings that have broken, or could break, a rule somewhere.
#[rustfmt::skip]
const NASTY: &[&str] = &[
    "", " ", ".", "..", "../x", "../../etc/passwd", "a/b", "/", "//", "/a/../b", "a\0b", "\0", "ä", "ü-x", "😀",
    "\u{202e}x", "a b", "a\nb", "-a", "_a", ".a", "a.", "CON", "{port}", "{prot}", "{}", "{", "}", "{blob:}",
    "{blob:code}", "{blob:code}/w", "{blob:nope}/w", "${HOME}", "{\"a\":1}", "GALE_X", "1", "-1", "1.5", "null",
    "true", "tar.gz", "zip", "file:///x", "http://h/x",
];

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,127}` (SPEC §3), checked here without gale's code.
pub fn is_ident(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

pub fn valid_ident() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => "[A-Za-z0-9][A-Za-z0-9._-]{0,12}",
        1 => "[A-Za-z0-9][A-Za-z0-9._-]{120,127}",
    ]
}

/// Mostly valid identifiers, some near misses (one char too many, a `/`, a leading `.`).
pub fn ident() -> BoxedStrategy<String> {
    prop_oneof![
        8 => valid_ident(),
        1 => "[A-Za-z0-9][A-Za-z0-9._-]{128,130}",
        1 => "[A-Za-z0-9._/ -]{0,6}",
        1 => nasty(),
        1 => text(),
    ]
    .boxed()
}

pub fn nasty() -> impl Strategy<Value = String> + Clone {
    select(NASTY).prop_map(str::to_owned)
}

/// Any string: unicode, controls, long runs, the nasty ones.
pub fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "\\PC{0,40}",
        2 => nasty(),
        1 => (select(&['a', '.', '/', 'é', '{'][..]), select(&[127usize, 128, 129, 4096, 4097, 32_769][..]))
            .prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

pub fn number() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        2 => any::<i64>().prop_map(Value::from),
        2 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        3 => select(
            &[0.0, -1.0, 0.5, 1.5, -0.0, 1e300, -1e300, 4_294_967_296.0, 65_536.0, 1e19, 6_700.000_001][..]
        )
        .prop_map(|f| json!(f)),
        3 => select(&[0i64, -1, 1, 65_535, 65_536, 4_294_967_295, 4_294_967_296, i64::MIN, i64::MAX][..])
            .prop_map(Value::from),
        1 => Just(Value::from(u64::MAX)),
    ]
}

/// Arbitrary JSON, a few levels deep, with payload keys among the object keys.
pub fn any_json() -> BoxedStrategy<Value> {
    let leaf =
        prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), text().prop_map(Value::String),];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

fn key() -> impl Strategy<Value = String> + Clone {
    prop_oneof![3 => select(PAYLOAD_KEYS).prop_map(str::to_owned), 1 => text()]
}

/// Arrays or objects nested past serde_json's recursion limit (128) or just under it.
pub fn deep_json() -> impl Strategy<Value = Value> + Clone {
    (1usize..400, any::<bool>()).prop_map(|(depth, arrays)| {
        (0..depth).fold(json!(1), |v, _| if arrays { json!([v]) } else { json!({ "schema": v }) })
    })
}

/// A value that does not belong where it is put.
pub fn weird() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => number(),
        3 => text().prop_map(Value::String),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => any_json(),
        1 => deep_json(),
    ]
    .boxed()
}

/// One change to a JSON tree, at a place chosen by `Index` among all places in the tree.
#[derive(Debug, Clone)]
pub enum Mutation {
    Replace(Value),
    Remove,
    Insert(String, Value),
    Duplicate,
}

pub fn mutations(max: usize) -> impl Strategy<Value = Vec<(Index, Mutation)>> + Clone {
    let mutation = prop_oneof![
        5 => weird().prop_map(Mutation::Replace),
        2 => Just(Mutation::Remove),
        2 => (key(), weird()).prop_map(|(k, v)| Mutation::Insert(k, v)),
        1 => Just(Mutation::Duplicate),
    ];
    prop::collection::vec((any::<Index>(), mutation), 0..=max)
}

/// Applies `changes` in order; each picks its place among those present at that moment.
pub fn mutate(mut value: Value, changes: &[(Index, Mutation)]) -> Value {
    for (at, change) in changes {
        let mut places = Vec::new();
        collect_places(&value, String::new(), &mut places);
        let place = at.get(&places).clone();
        let (parent, last) = match place.rfind('/') {
            Some(i) => (place[..i].to_owned(), Some(place[i + 1..].to_owned())),
            None => (String::new(), None),
        };
        match change {
            Mutation::Replace(v) => *value.pointer_mut(&place).unwrap() = v.clone(),
            Mutation::Insert(k, v) => match value.pointer_mut(&place).unwrap() {
                Value::Object(map) => {
                    map.insert(k.clone(), v.clone());
                }
                Value::Array(items) => items.push(v.clone()),
                other => *other = v.clone(),
            },
            Mutation::Remove | Mutation::Duplicate => {
                let Some(last) = last else {
                    value = Value::Null;
                    continue;
                };
                let last = unescape(&last);
                let duplicate = matches!(change, Mutation::Duplicate);
                match value.pointer_mut(&parent).unwrap() {
                    Value::Object(map) if !duplicate => {
                        map.remove(&last);
                    }
                    Value::Array(items) => {
                        let i: usize = last.parse().unwrap();
                        if duplicate {
                            items.insert(i, items[i].clone());
                        } else {
                            items.remove(i);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    value
}

/// JSON pointers of every value in the tree, the root (`""`) included.
fn collect_places(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                collect_places(v, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_places(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Byte-level damage to a serialized payload: truncation, flipped or inserted bytes, a number
/// literal no integer type holds, random bytes spliced in.
pub fn damage(max: usize) -> impl Strategy<Value = Vec<(Index, ByteDamage)>> + Clone {
    let kind = prop_oneof![
        Just(ByteDamage::Truncate),
        any::<u8>().prop_map(ByteDamage::Set),
        any::<u8>().prop_map(ByteDamage::Insert),
        Just(ByteDamage::Delete),
        select(
            &["18446744073709551616", "1e400", "-0", "1.0", "1E2", "00", "-9223372036854775809", "\"", "\\u0000"][..]
        )
        .prop_map(ByteDamage::Literal),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(ByteDamage::Splice),
    ];
    prop::collection::vec((any::<Index>(), kind), 1..=max)
}

#[derive(Debug, Clone)]
pub enum ByteDamage {
    Truncate,
    Set(u8),
    Insert(u8),
    Delete,
    Literal(&'static str),
    Splice(Vec<u8>),
}

pub fn apply_damage(mut bytes: Vec<u8>, damage: &[(Index, ByteDamage)]) -> Vec<u8> {
    for (at, kind) in damage {
        let i = if bytes.is_empty() { 0 } else { at.index(bytes.len()) };
        match kind {
            ByteDamage::Truncate => bytes.truncate(i),
            ByteDamage::Set(b) if i < bytes.len() => bytes[i] = *b,
            ByteDamage::Insert(b) => bytes.insert(i, *b),
            ByteDamage::Delete if i < bytes.len() => {
                bytes.remove(i);
            }
            ByteDamage::Literal(s) => {
                // Over a run of digits if `i` is in one, so the literal stands where a number was.
                let end = bytes[i..].iter().position(|b| !b.is_ascii_digit()).map_or(bytes.len(), |n| i + n);
                bytes.splice(i..end, s.bytes());
            }
            ByteDamage::Splice(s) => {
                bytes.splice(i..i, s.iter().copied());
            }
            _ => {}
        }
    }
    bytes
}
