//! Payload generators for `decoders_prop` (SPEC §3): values built field by field, valid
//! about half the time, otherwise with a rule or two broken on purpose, then handed to the
//! JSON mutations and byte damage of `hostile.rs`.

use std::collections::BTreeMap;

use gale::config::Capacity;
use gale::lifecycle::Lifecycle;
use gale::model::assignment::{Assignment, BlobRef, Launch, LivenessMode, WorkerPlacement};
use gale::model::blob_meta::BlobMeta;
use gale::model::usage::{HostUsage, WorkerUsage};
use gale::model::{ExitReason, Health, LastExit, SlotStateName, SupervisorInfo, WorkerInfo};
use proptest::prelude::*;
use proptest::sample::{Index, select};

use super::hostile::{ident, text, valid_ident};

/// `Some(good)` mostly, sometimes `None`: for `Option` fields.
fn maybe<S: Strategy<Value: Clone>>(good: S) -> impl Strategy<Value = Option<S::Value>> {
    prop_oneof![3 => good.prop_map(Some), 1 => Just(None)]
}

// ---- Assignment (SPEC §3.2) ----

/// Blob names come from a small pool so that `{blob:NAME}` often names a declared blob.
const BLOB_NAMES: &[&str] = &["code", "conf", "lib", "a"];

/// Text without `{` or controls: never a placeholder, never a NUL.
const PLAIN: &str = "[\\PC&&[^{]]{0,16}";

fn valid_blobs() -> impl Strategy<Value = Vec<BlobRef>> {
    prop::collection::btree_map(select(BLOB_NAMES), (valid_ident(), any::<bool>(), any::<bool>()), 0..3).prop_map(|m| {
        m.into_iter()
            .map(|(name, (key, extract, restart_on_update))| BlobRef {
                key,
                name: name.to_owned(),
                extract,
                restart_on_update,
            })
            .collect()
    })
}

fn valid_launch(blobs: &[BlobRef]) -> impl Strategy<Value = Launch> + use<> {
    let names: Vec<String> = blobs.iter().map(|b| b.name.clone()).collect();
    let in_blob = if names.is_empty() { vec!["code".to_owned()] } else { names.clone() };
    let has_blobs = !names.is_empty();
    let program = prop_oneof![
        select(&["/usr/bin/python3", "/opt/w/{topology_id}/run", "/{port}", "/a b/é"][..]).prop_map(str::to_owned),
        (select(in_blob), "[a-z/._]{0,8}")
            .prop_map(move |(n, rest)| { if has_blobs { format!("{{blob:{n}}}/{rest}") } else { format!("/{rest}") } }),
    ];
    let mut placeholders: Vec<String> = ["{port}", "{worker_id}", "{topology_id}", "{supervisor_id}", "{worker_dir}/x"]
        .into_iter()
        .chain(["--x={port}", "{\"json\": {}}", "${}", "{}", "{ port }", "a{b c}d"])
        .map(str::to_owned)
        .collect();
    placeholders.extend(names.iter().map(|n| format!("{{blob:{n}}}/x")));
    let argument = prop_oneof![2 => select(placeholders), 3 => PLAIN];
    let env_name = "[A-Za-z_][A-Za-z0-9_]{0,12}".prop_map(|n| if n.starts_with("GALE_") { format!("X{n}") } else { n });
    let positive = || prop::option::of(prop_oneof![1u64..10_000, Just(u64::MAX)]);
    (
        (program, prop::collection::vec(argument, 0..5)),
        prop::collection::btree_map(env_name, "\\PC{0,16}", 0..4),
        any::<bool>(),
        (positive(), positive(), positive(), prop::option::of(1u32..=u32::MAX)),
        prop::option::of("[A-Za-z_][A-Za-z0-9._-]{0,31}"),
    )
        .prop_map(|((program, args), env, heartbeat, (start, hb, memory, cpu), user)| Launch {
            command: std::iter::once(program).chain(args).collect(),
            env,
            liveness: if heartbeat { LivenessMode::Heartbeat } else { LivenessMode::Process },
            start_timeout_secs: start,
            heartbeat_timeout_secs: hb,
            memory_mb: memory,
            cpu_percent: cpu,
            user,
        })
}

fn valid_workers() -> impl Strategy<Value = Vec<WorkerPlacement>> {
    let supervisor = prop_oneof![select(&["s1", "s2"][..]).prop_map(str::to_owned), valid_ident()];
    prop::collection::btree_set((supervisor, 1u16..=u16::MAX), 0..4)
        .prop_map(|set| set.into_iter().map(|(supervisor_id, port)| WorkerPlacement { supervisor_id, port }).collect())
}

/// One rule broken on purpose (or, since some replacement values happen to be valid, not).
#[derive(Debug, Clone)]
pub enum Break {
    Schema(u32),
    TopologyId(String),
    Path(String),
    Program(String),
    Argument(Index, String),
    ManyArguments(usize),
    EnvName(String),
    EnvValue(String),
    ManyEnv(usize),
    Zero(Index),
    User(String),
    BlobKey(Index, String),
    BlobName(Index, String),
    Worker(Index, String, u16),
}

fn breakage() -> impl Strategy<Value = Break> {
    prop_oneof![
        any::<u32>().prop_map(Break::Schema),
        ident().prop_map(Break::TopologyId),
        prop_oneof![ident().prop_map(|n| format!("/gale/assignments/{n}")), text()].prop_map(Break::Path),
        prop_oneof![
            3 => select(&[
                "{blob:}/x", "{blob: }/x", "{blob:a b}/x", "{blob:x/y}/z", "{blob:code}}/x", "{blob:{code}}/x",
                "{blob:code}", "{blob:code}x", "{blob:code/}/x", "{blob:ä}/x", "{blob:nope}/x", "{port}/x",
                "{worker_dir}/run", "worker.py", "./w", "../w", "", "{}/x", "/x\0",
            ][..])
            .prop_map(str::to_owned),
            1 => text(),
        ]
        .prop_map(Break::Program),
        (
            any::<Index>(),
            prop_oneof![
                select(&["{prot}", "{blob:nope}", "{blob:}", "{a:b}", "{.}", "a\0b"][..]).prop_map(str::to_owned),
                text(),
            ]
        )
            .prop_map(|(i, a)| Break::Argument(i, a)),
        select(&[256usize, 257][..]).prop_map(Break::ManyArguments),
        prop_oneof![
            select(&["", "1A", "A-B", "A=B", "A B", "Ä", "A\0", "GALE_X", "GALE_"][..]).prop_map(str::to_owned),
            text()
        ]
        .prop_map(Break::EnvName),
        select(vec!["a\0b".to_owned(), "x".repeat(32 * 1024), "x".repeat(32 * 1024 + 1)]).prop_map(Break::EnvValue),
        select(&[256usize, 257][..]).prop_map(Break::ManyEnv),
        any::<Index>().prop_map(Break::Zero),
        prop_oneof![
            select(
                &[
                    "",
                    "-x",
                    "1x",
                    "a b",
                    "ä",
                    "x:y",
                    "x\0",
                    "uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu",
                    "_uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu"
                ][..]
            )
            .prop_map(str::to_owned),
            text(),
        ]
        .prop_map(Break::User),
        (any::<Index>(), ident()).prop_map(|(i, k)| Break::BlobKey(i, k)),
        (any::<Index>(), prop_oneof![select(BLOB_NAMES).prop_map(str::to_owned), ident()])
            .prop_map(|(i, n)| Break::BlobName(i, n)),
        (
            any::<Index>(),
            prop_oneof![select(&["s1", "s2"][..]).prop_map(str::to_owned), ident()],
            prop_oneof![Just(0u16), any::<u16>()]
        )
            .prop_map(|(i, s, p)| Break::Worker(i, s, p)),
    ]
}

fn apply_break(path: &mut String, a: &mut Assignment, b: Break) {
    match b {
        Break::Schema(s) => a.schema = s,
        Break::TopologyId(id) => {
            *path = format!("/gale/assignments/{id}");
            a.topology_id = id;
        }
        Break::Path(p) => *path = p,
        Break::Program(p) => a.launch.command[0] = p,
        Break::Argument(i, arg) => {
            let i = i.index(a.launch.command.len() + 1);
            a.launch.command.insert(i, arg);
        }
        Break::ManyArguments(n) => a.launch.command.resize(n, "/x".to_owned()),
        Break::EnvName(n) => {
            a.launch.env.insert(n, "v".to_owned());
        }
        Break::EnvValue(v) => {
            a.launch.env.insert("V".to_owned(), v);
        }
        Break::ManyEnv(n) => a.launch.env.extend((0..n).map(|i| (format!("V{i}"), String::new()))),
        Break::Zero(i) => match i.index(4) {
            0 => a.launch.start_timeout_secs = Some(0),
            1 => a.launch.heartbeat_timeout_secs = Some(0),
            2 => a.launch.memory_mb = Some(0),
            _ => a.launch.cpu_percent = Some(0),
        },
        Break::User(u) => a.launch.user = Some(u),
        Break::BlobKey(i, k) if !a.blobs.is_empty() => {
            let i = i.index(a.blobs.len());
            a.blobs[i].key = k;
        }
        Break::BlobName(i, n) if !a.blobs.is_empty() => {
            let i = i.index(a.blobs.len());
            a.blobs[i].name = n;
        }
        Break::Worker(i, supervisor_id, port) => {
            let i = i.index(a.workers.len() + 1);
            a.workers.insert(i, WorkerPlacement { supervisor_id, port });
        }
        Break::BlobKey(..) | Break::BlobName(..) => a.blobs.push(BlobRef {
            key: "k".to_owned(),
            name: "code".to_owned(),
            extract: false,
            restart_on_update: true,
        }),
    }
}

/// An assignment read from `/gale/assignments/<its id>`, valid about half the time and
/// otherwise with up to two rules broken on purpose.
pub fn assignment() -> impl Strategy<Value = (String, Assignment)> {
    let valid = (valid_ident(), valid_blobs(), valid_workers()).prop_flat_map(|(topology_id, blobs, workers)| {
        valid_launch(&blobs).prop_map(move |launch| Assignment {
            schema: 1,
            topology_id: topology_id.clone(),
            launch,
            blobs: blobs.clone(),
            workers: workers.clone(),
        })
    });
    let breaks = prop_oneof![1 => Just(Vec::new()), 1 => prop::collection::vec(breakage(), 1..3)];
    (valid, breaks).prop_map(|(mut a, breaks)| {
        let mut path = format!("/gale/assignments/{}", a.topology_id);
        for b in breaks {
            apply_break(&mut path, &mut a, b);
        }
        (path, a)
    })
}

// ---- BlobMeta (SPEC §3.3) ----

pub const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

pub fn blob_meta() -> impl Strategy<Value = (String, BlobMeta)> {
    let sha = prop_oneof![
        6 => "[0-9a-f]{64}",
        1 => select(vec![
            String::new(),
            "9F86".to_owned(),
            SHA.to_uppercase(),
            SHA[1..].to_owned(),
            format!("{SHA}0"),
            format!("{}g", &SHA[1..]),
            format!(" {}", &SHA[1..]),
        ]),
        1 => text(),
    ];
    let url = prop_oneof![
        6 => select(&["file:///srv/b/k/1", "http://h:8080/x/1", "https://h/x?y#z", "file:///a"][..])
            .prop_map(str::to_owned),
        3 => select(&[
            "file:///", "file://", "file://h/x", "file:/a", "file:///srv/../etc/passwd", "file:///a/..",
            "file:///a/%2e%2e/b", "http://", "https://", "http:///nohost", "http://h/a b", "http://h\t/x",
            "ftp://h/x", "/srv/x", "HTTP://h/x", "",
        ][..])
        .prop_map(str::to_owned),
        1 => text().prop_map(|t| format!("file://{t}")),
        1 => text().prop_map(|t| format!("http://{t}")),
        1 => text(),
    ];
    let archive = prop_oneof![
        4 => Just(None),
        4 => select(&["tar.gz", "zip"][..]).prop_map(|a| Some(a.to_owned())),
        1 => select(&["", "rar", "TAR.GZ", "tgz", "zip "][..]).prop_map(|a| Some(a.to_owned())),
    ];
    (
        prop_oneof![20 => Just(1u32), 1 => any::<u32>()],
        ident(),
        any::<u64>(),
        sha,
        any::<u64>(),
        url,
        archive,
        prop_oneof![8 => Just(None), 1 => ident().prop_map(Some), 1 => text().prop_map(Some)],
    )
        .prop_map(|(schema, key, version, sha256, size, url, archive, other_path)| {
            let path = match other_path {
                None => format!("/gale/blobstore/{key}"),
                Some(p) if p.starts_with('/') => p,
                Some(name) => format!("/gale/blobstore/{name}"),
            };
            (path, BlobMeta { schema, key, version, sha256, size, url, archive })
        })
}

// ---- SupervisorInfo (SPEC §3.1) ----

fn worker_usage() -> impl Strategy<Value = WorkerUsage> {
    (
        (any::<u64>(), any::<Option<u64>>(), any::<u64>(), any::<Option<u32>>()),
        (any::<u64>(), any::<Option<u64>>(), any::<Option<u64>>()),
    )
        .prop_map(
            |((memory_bytes, memory_peak_bytes, cpu_usec, cpu_percent), (processes, oom_kills, cpu_throttled_usec))| {
                WorkerUsage {
                    memory_bytes,
                    memory_peak_bytes,
                    cpu_usec,
                    cpu_percent,
                    processes,
                    oom_kills,
                    cpu_throttled_usec,
                }
            },
        )
}

fn host_usage() -> impl Strategy<Value = HostUsage> {
    (any::<u32>(), any::<u64>(), any::<u32>(), any::<u64>()).prop_map(
        |(workers, memory_bytes, cpu_percent, processes)| HostUsage { workers, memory_bytes, cpu_percent, processes },
    )
}

fn worker_info() -> impl Strategy<Value = WorkerInfo> {
    let last_exit = (
        any::<Option<i32>>(),
        maybe(text()),
        select(
            &[
                ExitReason::Exited,
                ExitReason::StartTimeout,
                ExitReason::HeartbeatTimeout,
                ExitReason::MemoryLimit,
                ExitReason::Killed,
                ExitReason::Lost,
            ][..],
        ),
        any::<u64>(),
    )
        .prop_map(|(code, signal, reason, at_ms)| LastExit { code, signal, reason, at_ms });
    (
        (any::<u16>(), ident(), ident(), any::<Option<u32>>(), select(&SlotStateName::ALL[..])),
        (any::<u64>(), any::<u32>(), maybe(last_exit), maybe(text()), maybe(worker_usage())),
    )
        .prop_map(|((port, topology_id, worker_id, pid, state), (since_ms, restarts, last_exit, error, usage))| {
            WorkerInfo { port, topology_id, worker_id, pid, state, since_ms, restarts, last_exit, error, usage }
        })
}

pub fn supervisor_info() -> impl Strategy<Value = SupervisorInfo> {
    let lifecycle = select(
        &[Lifecycle::Starting, Lifecycle::Recovering, Lifecycle::Running, Lifecycle::Draining, Lifecycle::Stopping][..],
    );
    let health = select(&[Health::Healthy, Health::Unhealthy, Health::Unknown][..]);
    (
        (prop_oneof![20 => Just(1u32), 1 => any::<u32>()], ident(), text(), text(), lifecycle, health),
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(any::<u16>(), 0..5),
            prop::collection::vec(any::<u16>(), 0..3),
        ),
        (any::<u32>(), any::<u64>()).prop_map(|(cpu_percent, memory_mb)| Capacity { cpu_percent, memory_mb }),
        prop::collection::btree_map(text(), text(), 0..3),
        (prop::collection::vec(worker_info(), 0..3), maybe(host_usage())),
    )
        .prop_map(
            |(
                (schema, id, hostname, version, state, health),
                (started_at_ms, time_ms, slots, used_slots),
                capacity,
                labels,
                (workers, used),
            )| {
                SupervisorInfo {
                    schema,
                    id,
                    hostname,
                    version,
                    state,
                    health,
                    started_at_ms,
                    time_ms,
                    slots,
                    used_slots,
                    capacity,
                    labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                    workers,
                    used,
                }
            },
        )
}
