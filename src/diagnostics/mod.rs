//! Diagnostics on demand (`[diagnostics]`, Storm's profiler actions for any language): named
//! commands the operator configures, run against one worker by `gale worker diag PORT NAME`
//! or a `diag` ZooKeeper action, their output kept under the worker's log dir.
//!
//! Design: this file is the pure part, the rules shared by config validation, the executor
//! and `gale logs`: what a command may look like ([`check_command`]), its placeholders
//! ([`expand`]), and the names of the files a run leaves (`<stamp>-<name>.txt`, and
//! `<stamp>-<name>.out` for a command that writes `{out}`; [`DiagFile`]). [`run`] is the
//! process edge.
//!
//! Invariants:
//! - **Never a shell, never `$PATH`.** A command is an argv whose program is absolute; its
//!   placeholders are substituted verbatim into single arguments, never rescanned (the
//!   grammar of [`crate::model::placeholders`]).
//! - **Only known placeholders.** A command with another `{name}` is refused when the config
//!   is loaded, so a typo never reaches a run.
//! - **The files are the agent's, and bounded.** They live in
//!   `<log_dir>/workers/<topology>/<port>/diag/` (owned by the agent, mode 0640), each at most
//!   `max_output_mb` (plus a header and a trailer), and count towards `logs.node_quota_mb`,
//!   which deletes the oldest first ([`crate::worker::logrotate`]).

pub(crate) mod run;

use std::path::{Path, PathBuf};

use crate::model::placeholders::{placeholders, substitute};

/// The placeholders a diagnostics command may use.
pub(crate) const PLACEHOLDERS: [&str; 6] = ["pid", "worker_dir", "out", "port", "topology_id", "worker_id"];

/// Suffix of a run's captured stdout and stderr (with gale's header and trailer).
pub(crate) const OUTPUT_SUFFIX: &str = ".txt";
/// Suffix of the copy of the file a command wrote at `{out}`.
pub(crate) const OUT_FILE_SUFFIX: &str = ".out";

/// Why a configured command cannot be a diagnostics command, or `Ok`.
pub(crate) fn check_command(argv: &[String]) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Err(
            "must not be empty: give the program and its arguments, e.g. [\"/usr/bin/jstack\", \"{pid}\"]".into()
        );
    };
    if !program.starts_with('/') {
        return Err(format!(
            "the program `{program}` must be an absolute path (a command is never run through a shell or $PATH)"
        ));
    }
    for arg in argv {
        if let Some(name) = placeholders(arg).find(|name| !PLACEHOLDERS.contains(name)) {
            let known: Vec<String> = PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect();
            return Err(format!("unknown placeholder `{{{name}}}` in `{arg}`: known are {}", known.join(", ")));
        }
    }
    Ok(())
}

/// Whether the command writes a file at `{out}` (the run then prepares a place for it).
pub(crate) fn uses_out(argv: &[String]) -> bool {
    argv.iter().any(|arg| placeholders(arg).any(|name| name == "out"))
}

/// What the placeholders of one run stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Values {
    pub pid: u32,
    pub port: u16,
    pub topology_id: String,
    pub worker_id: String,
    pub worker_dir: PathBuf,
    /// Where the command may write its file; `None` when it does not use `{out}`.
    pub out: Option<PathBuf>,
}

/// `argv` with its placeholders substituted (values verbatim, never rescanned).
pub(crate) fn expand(argv: &[String], v: &Values) -> Result<Vec<String>, String> {
    let path = |p: &Path| p.to_str().map(str::to_owned).ok_or_else(|| format!("{} is not UTF-8", p.display()));
    let value = |name: &str| match name {
        "pid" => Ok(v.pid.to_string()),
        "port" => Ok(v.port.to_string()),
        "topology_id" => Ok(v.topology_id.clone()),
        "worker_id" => Ok(v.worker_id.clone()),
        "worker_dir" => path(&v.worker_dir),
        "out" => v.out.as_deref().map_or_else(|| Err("no place for `{out}` was prepared".to_owned()), path),
        other => Err(format!("unknown placeholder `{{{other}}}`")),
    };
    argv.iter().map(|arg| substitute(arg, value)).collect()
}

/// `20261207T181500.123Z`: a run's start, UTC, sortable, safe in a file name.
pub(crate) fn stamp(unix_ms: u64) -> String {
    crate::local_state::format_unix_ms(unix_ms).replace(['-', ':'], "")
}

/// Length of a [`stamp`] (until the year 10000).
const STAMP_LEN: usize = "20261207T181500.123Z".len();

/// `<stamp>-<name>`: what a run's files are called, before their suffix.
pub(crate) fn file_stem(unix_ms: u64, name: &str) -> String {
    format!("{}-{name}", stamp(unix_ms))
}

/// One file a run left in a `diag/` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiagFile {
    pub path: PathBuf,
    /// The run's start, as in the name.
    pub stamp: String,
    /// The command's name.
    pub name: String,
    /// [`OUTPUT_SUFFIX`] or [`OUT_FILE_SUFFIX`].
    pub suffix: &'static str,
    pub bytes: u64,
}

impl DiagFile {
    /// The file at `path`, if its name is one a run gives.
    fn parse(path: PathBuf, bytes: u64) -> Option<DiagFile> {
        let file = path.file_name()?.to_str()?;
        let suffix = [OUTPUT_SUFFIX, OUT_FILE_SUFFIX].into_iter().find(|s| file.ends_with(s))?;
        let stem = &file[..file.len() - suffix.len()];
        let (stamp, name) = (stem.get(..STAMP_LEN)?, stem.get(STAMP_LEN..)?.strip_prefix('-')?);
        crate::ident::validate("diagnostics command name", name).ok()?;
        let (stamp, name) = (stamp.to_owned(), name.to_owned());
        Some(DiagFile { path, stamp, name, suffix, bytes })
    }
}

/// The runs' files in `dir` (regular files only, never through a symlink), oldest first; a
/// missing directory has none.
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<DiagFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files: Vec<DiagFile> = entries
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok().filter(std::fs::Metadata::is_file)?;
            DiagFile::parse(e.path(), meta.len())
        })
        .collect();
    // A run's output before its `{out}` file.
    files.sort_by_key(|f| (f.stamp.clone(), f.name.clone(), f.suffix == OUT_FILE_SUFFIX));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn commands_are_absolute_argv_with_known_placeholders() {
        assert_eq!(check_command(&argv(&["/usr/bin/jstack", "{pid}"])), Ok(()));
        assert_eq!(check_command(&argv(&["/usr/bin/jmap", "-dump:format=b,file={out}", "{pid}"])), Ok(()));
        assert_eq!(check_command(&argv(&["/bin/echo", "{json: 1}", "{}", "${HOME"])), Ok(()));
        let err = check_command(&[]).unwrap_err();
        assert!(err.contains("must not be empty"), "{err}");
        let err = check_command(&argv(&["jstack", "{pid}"])).unwrap_err();
        assert!(err.contains("`jstack` must be an absolute path"), "{err}");
        let err = check_command(&argv(&["{worker_dir}/bin/dump"])).unwrap_err();
        assert!(err.contains("absolute path"), "{err}");
        let err = check_command(&argv(&["/usr/bin/gdb", "-p", "{ppid}"])).unwrap_err();
        assert!(err.contains("unknown placeholder `{ppid}` in `{ppid}`") && err.contains("{out}"), "{err}");
        assert!(uses_out(&argv(&["/x", "--file={out}"])) && !uses_out(&argv(&["/x", "{pid}", "out"])));
    }

    #[test]
    fn expansion_substitutes_each_value_verbatim() {
        let v = Values {
            pid: 4242,
            port: 6700,
            topology_id: "wc".into(),
            worker_id: "{pid}".into(),
            worker_dir: "/var/lib/gale/workers/w".into(),
            out: Some("/var/lib/gale/workers/w/.gale-diag-x/out".into()),
        };
        let got =
            expand(&argv(&["/bin/x", "{pid}", "-o={out}", "{worker_dir}/a", "{worker_id}", "{port}{topology_id}"]), &v);
        assert_eq!(
            got.unwrap(),
            argv(&[
                "/bin/x",
                "4242",
                "-o=/var/lib/gale/workers/w/.gale-diag-x/out",
                "/var/lib/gale/workers/w/a",
                "{pid}",
                "6700wc"
            ])
        );
        let err = expand(&argv(&["/bin/x", "{out}"]), &Values { out: None, ..v }).unwrap_err();
        assert!(err.contains("{out}"), "{err}");
    }

    #[test]
    fn file_names_carry_the_utc_start_and_the_command_and_list_oldest_first() {
        assert_eq!(file_stem(1_796_667_300_123, "jstack"), "20261207T181500.123Z-jstack");
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "20261207T181500.123Z-jstack.txt",
            "20261207T181400.000Z-heap.v2.out",
            "20261207T181400.000Z-heap.v2.txt",
            "worker.log",
            "20261207T181400.000Z-.txt",
            "short-jstack.txt",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("20261207T181600.000Z-link.txt")).unwrap();
        let files = list(dir.path()).unwrap();
        let got: Vec<(&str, &str, &str)> =
            files.iter().map(|f| (f.stamp.as_str(), f.name.as_str(), f.suffix)).collect();
        assert_eq!(
            got,
            [
                ("20261207T181400.000Z", "heap.v2", ".txt"),
                ("20261207T181400.000Z", "heap.v2", ".out"),
                ("20261207T181500.123Z", "jstack", ".txt")
            ]
        );
        assert!(list(&dir.path().join("missing")).unwrap().is_empty());
    }
}
