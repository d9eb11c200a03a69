//! Generators of config files for `decoders_prop`: TOML-ish text built from the real sections
//! and keys of SPEC §2, each value either plausible for its key (in range, at a boundary, just
//! past one) or of the wrong kind (a string for a number, an inline table, an overflowing
//! integer, a date, `inf`, nesting past any parser limit), with a few misspelt keys, duplicate
//! keys and junk lines mixed in.

use proptest::prelude::*;
use proptest::sample::{Index, select};

use super::hostile::{ident, text};

/// What a key holds, which decides the plausible values generated for it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Secs,
    Ms,
    Int(i64, i64),
    Path,
    Word(&'static [&'static str]),
    Bool,
    Servers,
    Root,
    Auth,
    Id,
    Text,
    Slots,
    Labels,
    Capacity,
    Users,
    Level,
    Listen,
}

const U32: i64 = u32::MAX as i64;
const MAX_MB: i64 = (u64::MAX >> 20) as i64;

/// The sections and keys of SPEC §2 (mirrors `config/raw.rs`).
const SECTIONS: &[(&str, &[(&str, Kind)])] = &[
    (
        "zookeeper",
        &[
            ("servers", Kind::Servers),
            ("root", Kind::Root),
            ("session_timeout_ms", Kind::Ms),
            ("connect_timeout_ms", Kind::Ms),
            ("auth", Kind::Auth),
            ("on_session_loss", Kind::Word(&["keep_workers", "stop_workers"])),
            ("stop_workers_after_secs", Kind::Secs),
        ],
    ),
    (
        "supervisor",
        &[
            ("local_dir", Kind::Path),
            ("log_dir", Kind::Path),
            ("id", Kind::Id),
            ("hostname", Kind::Text),
            ("slots", Kind::Slots),
            ("heartbeat_secs", Kind::Secs),
            ("heartbeat_refresh_secs", Kind::Secs),
            ("sync_secs", Kind::Secs),
            ("monitor_secs", Kind::Secs),
            ("labels", Kind::Labels),
            ("capacity", Kind::Capacity),
        ],
    ),
    (
        "worker",
        &[
            ("start_timeout_secs", Kind::Secs),
            ("heartbeat_timeout_secs", Kind::Secs),
            ("max_timeout_secs", Kind::Secs),
            ("shutdown_grace_secs", Kind::Secs),
            ("run_as_user", Kind::Bool),
            ("allowed_users", Kind::Users),
            ("min_uid", Kind::Int(0, U32)),
        ],
    ),
    (
        "restart",
        &[
            ("backoff_initial_ms", Kind::Ms),
            ("backoff_max_ms", Kind::Ms),
            ("reset_after_secs", Kind::Secs),
            ("node_budget_per_min", Kind::Int(1, U32)),
        ],
    ),
    (
        "blob",
        &[
            ("cache_target_mb", Kind::Int(0, MAX_MB)),
            ("sync_secs", Kind::Secs),
            ("download_timeout_secs", Kind::Secs),
            ("download_retries", Kind::Int(0, U32)),
        ],
    ),
    (
        "health",
        &[
            ("script_dir", Kind::Path),
            ("interval_secs", Kind::Secs),
            ("timeout_ms", Kind::Ms),
            ("fail_on_timeout", Kind::Bool),
            ("on_failure", Kind::Word(&["drain", "exit"])),
        ],
    ),
    (
        "logs",
        &[
            ("worker_log_max_mb", Kind::Int(1, MAX_MB)),
            ("worker_log_keep", Kind::Int(1, U32)),
            ("node_quota_mb", Kind::Int(1, MAX_MB)),
            ("format", Kind::Word(&["auto", "text", "json"])),
            ("level", Kind::Level),
        ],
    ),
    ("admin", &[("listen", Kind::Listen)]),
];

/// A TOML basic string. JSON's escapes are TOML's, except that JSON leaves DEL raw where TOML
/// wants it escaped: such a value is then a syntax error, one more kind of bad input.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn quoted_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => text().prop_map(|t| quoted(&t)),
        1 => "[^'\n\r]{0,20}".prop_map(|t| format!("'{t}'")),
        1 => text().prop_map(|t| format!("\"\"\"{}\"\"\"", t.replace('\\', "\\\\").replace('"', "\\\""))),
    ]
}

fn list(items: Vec<String>) -> String {
    format!("[{}]", items.join(", "))
}

/// An integer near the range `lo..=hi`: inside it mostly, at or just past its edges sometimes.
fn int(lo: i64, hi: i64) -> BoxedStrategy<String> {
    let small_hi = hi.min(lo.saturating_add(100_000));
    prop_oneof![
        6 => (lo..=small_hi).prop_map(|n| n.to_string()),
        2 => select(vec![lo, hi, lo.saturating_sub(1), hi.saturating_add(1), 0, -1, i64::MIN, i64::MAX])
            .prop_map(|n| n.to_string()),
    ]
    .boxed()
}

/// A value of the wrong kind, or a number no `i64` holds.
fn weird() -> BoxedStrategy<String> {
    prop_oneof![
        4 => select(&[
            "-1", "0", "1.5", "-0", "1e400", "inf", "-inf", "nan", "0x10", "0o7", "0b1", "1_000", "+5",
            "9223372036854775808", "-9223372036854775809", "99999999999999999999999", "true", "false", "\"\"",
            "\"5\"", "[]", "[1, \"a\"]", "{}", "{ a = 1 }", "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00",
            "\"\\u0000\"", "\"\\uD800\"", "\"\\x41\"", "'", "\"", "[", "{", "= =", "",
        ][..])
        .prop_map(str::to_owned),
        2 => quoted_text(),
        1 => (1usize..300, any::<bool>()).prop_map(|(depth, arrays)| {
            let (open, close) = if arrays { ("[", "]") } else { ("{ a = ", " }") };
            format!("{}1{}", open.repeat(depth), close.repeat(depth))
        }),
    ]
    .boxed()
}

fn plausible(kind: Kind) -> BoxedStrategy<String> {
    match kind {
        Kind::Secs => int(1, 365 * 24 * 3600),
        Kind::Ms => prop_oneof![
            3 => int(1, 365 * 24 * 3600 * 1000),
            1 => select(&[3999i64, 4000, 4001, 20_000][..]).prop_map(|n| n.to_string()),
        ]
        .boxed(),
        Kind::Int(lo, hi) => int(lo, hi),
        Kind::Path => prop_oneof![
            4 => select(&["/var/lib/gale", "/tmp/g", "/", "/a/../b", "/x y/ä"][..]).prop_map(quoted),
            1 => select(&["relative", "", "./x"][..]).prop_map(quoted),
            1 => quoted_text(),
        ]
        .boxed(),
        Kind::Word(words) => prop_oneof![
            4 => select(words).prop_map(quoted),
            1 => (select(words), any::<Index>()).prop_map(|(w, i)| {
                let mut w = w.to_owned();
                w.remove(i.index(w.len()));
                quoted(&w)
            }),
            1 => select(words).prop_map(|w| quoted(&w.to_uppercase())),
        ]
        .boxed(),
        Kind::Bool => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        Kind::Servers => {
            let server = prop_oneof![
                6 => select(&["127.0.0.1:2181", "zk1:2181", "zk2.example.org:2182", "[::1]:2181"][..]),
                1 => select(&[
                    "a", "a:0", "a:b", ":2181", "::1:2181", "a,b:1", "a:+1", "h h:1", "a/b:1", "a:65536", "[::1:2181",
                    "[]:1", "ä:1", "",
                ][..]),
            ];
            prop_oneof![
                8 => prop::collection::vec(server, 1..4).prop_map(|v| list(v.into_iter().map(quoted).collect())),
                1 => Just("[]".to_owned()),
                1 => Just("\"zk1:2181\"".to_owned()),
            ]
            .boxed()
        }
        Kind::Root => prop_oneof![
            4 => select(&["/gale", "/a/b-c", "/storm.1/x_y"][..]).prop_map(quoted),
            2 => select(&["/", "gale", "/a/", "/a//b", "/..", "/a/.", "/ä", "/a b", "/a/../b", ""][..])
                .prop_map(quoted),
            1 => ident().prop_map(|i| quoted(&format!("/{i}"))),
        ]
        .boxed(),
        Kind::Auth => prop_oneof![
            3 => Just("{ scheme = \"digest\", credentials_file = \"/etc/gale/zk.cred\" }".to_owned()),
            1 => select(&[
                "{ credentials_file = \"/c\" }",
                "{ scheme = \"digest\" }",
                "{ scheme = \"sasl\", credentials_file = \"/c\" }",
                "{ scheme = \"digest\", credentials_file = \"c\" }",
                "{ user = \"x\" }",
                "{}",
            ][..])
            .prop_map(str::to_owned),
        ]
        .boxed(),
        Kind::Id => ident().prop_map(|i| quoted(&i)).boxed(),
        Kind::Text => prop_oneof![3 => "[a-z0-9.-]{1,20}".prop_map(|h| quoted(&h)), 1 => quoted_text()].boxed(),
        Kind::Slots => prop_oneof![
            6 => prop::collection::vec(
                prop_oneof![6 => 6700i64..6706, 1 => select(&[0i64, 1, 65_535, 65_536, -1][..])],
                1..5
            )
            .prop_map(|v| list(v.iter().map(i64::to_string).collect())),
            1 => Just("[]".to_owned()),
            1 => Just("[6700, \"6701\"]".to_owned()),
        ]
        .boxed(),
        Kind::Labels => prop::collection::vec((quoted_text(), quoted_text()), 0..3)
            .prop_map(|kv| {
                let pairs: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", pairs.join(", "))
            })
            .boxed(),
        Kind::Capacity => (int(1, U32), int(1, MAX_MB), any::<bool>())
            .prop_map(|(cpu, mem, both)| {
                let cpu = if both { format!("cpu_percent = {cpu}, ") } else { String::new() };
                format!("{{ {cpu}memory_mb = {mem} }}")
            })
            .boxed(),
        Kind::Users => {
            let user = prop_oneof![3 => "[a-z]{1,8}".prop_map(|u| quoted(&u)), 1 => quoted_text()];
            prop::collection::vec(user, 0..3).prop_map(list).boxed()
        }
        Kind::Level => prop_oneof![
            4 => select(&["info", "debug", "gale=debug,info", "warn,gale::slot=trace", "off", "TRACE"][..])
                .prop_map(quoted),
            2 => select(&["inof", "", " ", "infoo", "gale=", "=info", "[{x}]", "a[", ",", "warning", "gale=loud"][..])
                .prop_map(quoted),
            1 => quoted_text(),
        ]
        .boxed(),
        Kind::Listen => prop_oneof![
            3 => select(&["127.0.0.1:8780", "", "[::1]:0", "0.0.0.0:65535"][..]).prop_map(quoted),
            1 => select(&["localhost:80", "1.2.3.4", "[fe80::1%2]:80", "[fe80::1%eth0]:80", "1.2.3.4:65536", ":80"][..])
                .prop_map(quoted),
        ]
        .boxed(),
    }
}

fn value(kind: Kind) -> BoxedStrategy<String> {
    prop_oneof![8 => plausible(kind), 1 => weird()].boxed()
}

/// Lines that do not belong: misspelt or unknown keys and tables, a table given twice, a key
/// without a value, dotted keys into real tables, arbitrary text.
fn junk_line() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(&[
            "sesion_timeout_ms = 5000", "[zookeper]", "x = 1", "[supervisor]", "[zookeeper]", "[[zookeeper]]",
            "= 1", "servers", "supervisor.capacity.cpu_percent = 5", "[supervisor.capacity]", "[supervisor.labels]",
            "[zookeeper.auth]", "zookeeper = 1", "\"servers\" = [\"a:1\"]", "labels.rack = \"r1\"", "# ä comment",
            "[supervisor.capacity.x]", "a.b.c.d = 1", "[\"\"]", "\u{feff}x = 1",
        ][..])
        .prop_map(str::to_owned),
        1 => text(),
    ]
    .boxed()
}

/// A config file built from the real keys; `zookeeper.servers` (the one required key) is
/// usually present so that many files pass and their `Config` gets checked.
pub fn config_text() -> BoxedStrategy<String> {
    let sections: Vec<BoxedStrategy<Option<String>>> = SECTIONS
        .iter()
        .map(|&(name, keys)| {
            let lines: Vec<BoxedStrategy<Option<String>>> = keys
                .iter()
                .map(|&(key, kind)| {
                    let p = if key == "servers" { 0.95 } else { 0.4 };
                    prop::option::weighted(p, value(kind)).prop_map(move |v| v.map(|v| format!("{key} = {v}"))).boxed()
                })
                .collect();
            let p = if name == "zookeeper" { 0.97 } else { 0.5 };
            prop::option::weighted(p, lines)
                .prop_map(move |lines| {
                    lines.map(|lines| {
                        let body: Vec<String> = lines.into_iter().flatten().collect();
                        format!("[{name}]\n{}\n", body.join("\n"))
                    })
                })
                .boxed()
        })
        .collect();
    let junk = prop_oneof![6 => Just(Vec::new()), 1 => prop::collection::vec((any::<Index>(), junk_line()), 1..3)];
    (sections, junk, any::<bool>())
        .prop_map(|(sections, junk, crlf)| {
            let mut lines: Vec<String> =
                sections.into_iter().flatten().flat_map(|s| s.lines().map(str::to_owned).collect::<Vec<_>>()).collect();
            for (at, line) in junk {
                lines.insert(at.index(lines.len() + 1), line);
            }
            lines.join(if crlf { "\r\n" } else { "\n" })
        })
        .boxed()
}
