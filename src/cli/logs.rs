//! `gale logs TOPOLOGY_ID|PORT [-f] [-n N]`: print, and follow, workers' logs on this host.
//!
//! Only reads files: `<log_dir>/workers/<topology>/<port>/worker.log` (SPEC §4), with
//! `log_dir` from the config. No daemon and no ZooKeeper needed.
//!
//! - An argument of digits only is a port: the log of that port under whichever topology used
//!   it; when several did, the most recently written one (stderr says which). Anything else is
//!   a topology id: the logs of all its ports, each under a `==> path <==` header as `tail`
//!   prints them when there is more than one.
//! - `-n N` prints the last N lines of each file, found by reading backwards from the end in
//!   64 KiB chunks: a 100 MB log is not read whole.
//! - `-f` then polls every 200 ms and prints what was appended. The agent rotates logs by
//!   copy-then-truncate ([`crate::worker::logrotate`]): a file shorter than what was already
//!   printed was truncated, and is followed again from offset 0. A path that now names another
//!   file (another inode) is reopened, after what was left in the old one is printed. A
//!   truncation followed by more new bytes than the old length within one poll period cannot
//!   be told from an append (as with `tail -f`); at rotation sizes that does not happen.
//!   The set of files is fixed at start: a port the topology gets later is not picked up.
//! - Output stops quietly (exit 0) when stdout is closed: on EPIPE, or, while the logs are
//!   idle, when `poll` reports an error on stdout (a pipe whose reader went away).
//! - `--diag` is about the diagnostics runs' files instead (`<slot dir>/diag/`, see
//!   [`crate::diagnostics`]): alone it lists them, oldest first, over every slot directory the
//!   target names (for a port, under every topology that used it); with a command name it
//!   prints that command's newest run whole, with a file name that file.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{CliError, load_config};
use crate::ident;
use crate::lifecycle::ExitCode;
use crate::worker::logfile::WORKER_LOG_FILE;

/// How often `-f` looks for new bytes.
const POLL_INTERVAL_MS: u16 = 200;
/// Read size, backwards for `-n` and forwards for `-f`.
const CHUNK: usize = 64 * 1024;

pub(crate) fn logs(config_path: &Path, target: &str, follow: bool, lines: u64) -> Result<ExitCode, CliError> {
    let target = Target::parse(target)?;
    let config = load_config(config_path)?;
    let root = config.supervisor.log_dir.join("workers");
    let files = find(&root, &target)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match print(&files, lines, follow, &mut out) {
        Ok(()) | Err(Stop::StdoutClosed) => Ok(ExitCode::Clean),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// `gale logs TARGET --diag [NAME|FILE]`: list the diagnostics runs' files, or print one.
pub(crate) fn diag(config_path: &Path, target: &str, which: &str) -> Result<ExitCode, CliError> {
    let target = Target::parse(target)?;
    let config = load_config(config_path)?;
    let root = config.supervisor.log_dir.join("workers");
    let mut files = Vec::new();
    for (topology, port, dir) in slot_dirs(&root, &target)? {
        let listed = crate::diagnostics::list(&dir.join(crate::worker::logfile::DIAG_DIR))
            .map_err(|e| CliError::new(ExitCode::Failure, format!("cannot read {}/diag: {e}", dir.display())))?;
        files.extend(listed.into_iter().map(|f| (topology.clone(), port, f)));
    }
    files.sort_by_key(|(_, _, f)| (f.stamp.clone(), f.suffix == crate::diagnostics::OUT_FILE_SUFFIX));
    let what = match &target {
        Target::Port(port) => format!("port {port}"),
        Target::Topology(topology) => format!("topology {topology}"),
    };
    let none = |m: String| CliError::new(ExitCode::Failure, format!("{m} under {}", root.display()));
    if files.is_empty() {
        return Err(none(format!("no diagnostics run for {what}")));
    }
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let written = if which.is_empty() {
        list_diag(&files, &mut out)
    } else {
        let chosen =
            files.iter().rev().find(|(_, _, f)| f.path.file_name().is_some_and(|n| n == which)).or_else(|| {
                files.iter().rev().find(|(_, _, f)| f.name == which && f.suffix == crate::diagnostics::OUTPUT_SUFFIX)
            });
        let Some((_, _, file)) = chosen else {
            return Err(none(format!("no diagnostics run `{which}` (a command name or a file name) for {what}")));
        };
        print_diag(&files, file, &mut out)
    };
    match written.and_then(|()| out.flush().map_err(write_err)) {
        Ok(()) | Err(Stop::StdoutClosed) => Ok(ExitCode::Clean),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// (topology, port, directory) of every slot directory `target` names under `root`.
fn slot_dirs(root: &Path, target: &Target) -> Result<Vec<(String, u16, PathBuf)>, CliError> {
    let mut dirs = Vec::new();
    match target {
        Target::Topology(topology) => {
            for (name, dir) in list_dir(&root.join(topology))? {
                if let Ok(port) = name.parse::<u16>() {
                    dirs.push((topology.clone(), port, dir));
                }
            }
        }
        Target::Port(port) => {
            for (topology, dir) in list_dir(root)? {
                dirs.push((topology, *port, dir.join(port.to_string())));
            }
        }
    }
    Ok(dirs)
}

type Listed = (String, u16, crate::diagnostics::DiagFile);

fn list_diag(files: &[Listed], out: &mut impl Write) -> Result<(), Stop> {
    writeln!(
        out,
        "{:<24}  {:<5}  {:<20}  {:<16}  {:>10}  FILE",
        "STARTED (UTC)", "PORT", "TOPOLOGY", "COMMAND", "BYTES"
    )
    .map_err(write_err)?;
    for (topology, port, f) in files {
        let s = &f.stamp;
        // 20261207T181500.123Z → 2026-12-07T18:15:00.123Z
        let started = match (s.get(..4), s.get(4..6), s.get(6..11), s.get(11..13), s.get(13..)) {
            (Some(y), Some(m), Some(dh), Some(mi), Some(rest)) => format!("{y}-{m}-{dh}:{mi}:{rest}"),
            _ => s.clone(),
        };
        writeln!(
            out,
            "{started:<24}  {port:<5}  {topology:<20}  {:<16}  {:>10}  {}",
            f.name,
            f.bytes,
            f.path.display()
        )
        .map_err(write_err)?;
    }
    Ok(())
}

/// Prints `file` whole; says on stderr where the same run's `{out}` file is.
fn print_diag(files: &[Listed], file: &crate::diagnostics::DiagFile, out: &mut impl Write) -> Result<(), Stop> {
    let mut source = File::open(&file.path).map_err(read_err(&file.path))?;
    io::copy(&mut source, out).map_err(|e| match e.kind() {
        io::ErrorKind::BrokenPipe => Stop::StdoutClosed,
        _ => Stop::Failed(CliError::new(ExitCode::Failure, format!("cannot print {}: {e}", file.path.display()))),
    })?;
    let same_run =
        |f: &crate::diagnostics::DiagFile| f.stamp == file.stamp && f.name == file.name && f.path != file.path;
    if let Some((_, _, other)) = files.iter().find(|(_, _, f)| same_run(f)) {
        notice(&format!("the same run also left {} ({} bytes)", other.path.display(), other.bytes));
    }
    Ok(())
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Port(u16),
    Topology(String),
}

impl Target {
    fn parse(arg: &str) -> Result<Target, CliError> {
        let usage = |m: String| CliError::new(ExitCode::Usage, m);
        if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
            return match arg.parse::<u16>() {
                Ok(port) if port > 0 => Ok(Target::Port(port)),
                _ => Err(usage(format!("port `{arg}` is not a port number: ports are 1 to 65535"))),
            };
        }
        ident::validate("topology id", arg).map_err(|e| usage(e.to_string()))?;
        Ok(Target::Topology(arg.to_owned()))
    }
}

/// The log files `target` names under `root` (`<log_dir>/workers`), in the order printed.
fn find(root: &Path, target: &Target) -> Result<Vec<PathBuf>, CliError> {
    let not_found =
        |what: String| CliError::new(ExitCode::Failure, format!("no worker log for {what} under {}", root.display()));
    match target {
        Target::Topology(topology) => {
            let mut ports: Vec<(u16, PathBuf)> = list_dir(&root.join(topology))?
                .into_iter()
                .filter_map(|(name, dir)| Some((name.parse::<u16>().ok()?, dir.join(WORKER_LOG_FILE))))
                .filter(|(_, log)| log.is_file())
                .collect();
            ports.sort();
            if ports.is_empty() {
                return Err(not_found(format!("topology {topology}")));
            }
            Ok(ports.into_iter().map(|(_, log)| log).collect())
        }
        Target::Port(port) => {
            let mut found: Vec<(SystemTime, String, PathBuf)> = list_dir(root)?
                .into_iter()
                .filter_map(|(topology, dir)| {
                    let log = dir.join(port.to_string()).join(WORKER_LOG_FILE);
                    let modified = fs::metadata(&log).ok().filter(|m| m.is_file())?.modified().ok()?;
                    Some((modified, topology, log))
                })
                .collect();
            found.sort();
            let Some((_, newest, log)) = found.pop() else {
                return Err(not_found(format!("port {port}")));
            };
            if !found.is_empty() {
                let others: Vec<&str> = found.iter().rev().map(|(_, t, _)| t.as_str()).collect();
                notice(&format!(
                    "port {port} has logs of several topologies; showing {newest}, the most recently written (others: {})",
                    others.join(", ")
                ));
            }
            Ok(vec![log])
        }
    }
}

/// (name, path) of the entries of `dir`; a missing directory has none.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, CliError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CliError::new(ExitCode::Failure, format!("cannot read {}: {e}", dir.display()))),
    };
    Ok(entries.flatten().filter_map(|e| Some((e.file_name().into_string().ok()?, e.path()))).collect())
}

/// A one-line message on stderr that must never fail the command.
fn notice(message: &str) {
    let _ = writeln!(io::stderr(), "gale: {message}");
}

/// Why printing stopped early.
#[derive(Debug)]
enum Stop {
    /// Whoever read our output went away: not an error.
    StdoutClosed,
    Failed(CliError),
}

fn write_err(e: io::Error) -> Stop {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Stop::StdoutClosed
    } else {
        Stop::Failed(CliError::new(ExitCode::Failure, format!("cannot write to stdout: {e}")))
    }
}

fn read_err(path: &Path) -> impl Fn(io::Error) -> Stop + '_ {
    move |e| Stop::Failed(CliError::new(ExitCode::Failure, format!("cannot read {}: {e}", path.display())))
}

/// Prints the last `lines` lines of each file, then, with `follow`, what is appended.
fn print(files: &[PathBuf], lines: u64, follow: bool, out: &mut impl Write) -> Result<(), Stop> {
    let headers = files.len() > 1;
    let mut logs = Vec::with_capacity(files.len());
    for (i, path) in files.iter().enumerate() {
        if headers {
            let gap = if i > 0 { "\n" } else { "" };
            writeln!(out, "{gap}==> {} <==", path.display()).map_err(write_err)?;
        }
        let mut log = FollowedLog::open(path).map_err(read_err(path))?;
        let len = log.file.metadata().map_err(read_err(path))?.len();
        log.pos = tail_start(&log.file, len, lines, CHUNK).map_err(read_err(path))?;
        log.copy_up_to(len, &mut |bytes| out.write_all(bytes).map_err(write_err))?;
        out.flush().map_err(write_err)?;
        logs.push(log);
    }
    if !follow {
        return Ok(());
    }
    let stdout = io::stdout();
    // The file whose bytes were printed last: a header goes out when that changes.
    let mut last = logs.len() - 1;
    loop {
        wait_unless_closed(&stdout)?;
        for (i, log) in logs.iter_mut().enumerate() {
            let path = log.path.clone();
            let mut emit = |bytes: &[u8]| {
                if headers && last != i {
                    writeln!(out, "\n==> {} <==", path.display()).map_err(write_err)?;
                    last = i;
                }
                out.write_all(bytes).map_err(write_err)
            };
            log.poll(&mut emit)?;
        }
        out.flush().map_err(write_err)?;
    }
}

/// Sleeps one poll interval; returns early with [`Stop::StdoutClosed`] when stdout reports an
/// error or hang-up (with no events asked for, that is all `poll` can report).
fn wait_unless_closed(stdout: &io::Stdout) -> Result<(), Stop> {
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::from(POLL_INTERVAL_MS)) {
        Ok(0) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Ok(_) => Err(Stop::StdoutClosed),
        Err(_) => {
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS.into()));
            Ok(())
        }
    }
}

/// One log file being printed: the open file and how far it was printed.
#[derive(Debug)]
struct FollowedLog {
    path: PathBuf,
    file: File,
    /// (device, inode) of `file`, to notice the path naming another file.
    id: (u64, u64),
    /// Offset up to which the file was printed.
    pos: u64,
}

impl FollowedLog {
    fn open(path: &Path) -> io::Result<FollowedLog> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        Ok(FollowedLog { path: path.to_owned(), file, id: (meta.dev(), meta.ino()), pos: 0 })
    }

    /// Prints what was appended since the last call, after handling replacement and truncation.
    fn poll(&mut self, emit: &mut dyn FnMut(&[u8]) -> Result<(), Stop>) -> Result<(), Stop> {
        let path = self.path.clone();
        // Replaced (deleted and created again, or renamed over): finish the old file, then
        // start the new one from its beginning. A path that is gone keeps the old file.
        if let Ok(meta) = fs::metadata(&path) {
            if (meta.dev(), meta.ino()) != self.id {
                if let Ok(next) = FollowedLog::open(&path) {
                    let len = self.file.metadata().map_err(read_err(&path))?.len();
                    self.copy_up_to(len, emit)?;
                    notice(&format!("{} was replaced; following the new file", path.display()));
                    *self = next;
                }
            }
        }
        let len = self.file.metadata().map_err(read_err(&path))?.len();
        if len < self.pos {
            // Copy-then-truncate rotation: what is there now was written after it.
            notice(&format!("{}: file truncated", path.display()));
            self.pos = 0;
        }
        self.copy_up_to(len, emit)
    }

    /// Prints bytes `pos..len` (less if the file shrank meanwhile) and advances `pos`.
    fn copy_up_to(&mut self, len: u64, emit: &mut dyn FnMut(&[u8]) -> Result<(), Stop>) -> Result<(), Stop> {
        let mut buf = vec![0; CHUNK.min(len.saturating_sub(self.pos) as usize)];
        while self.pos < len {
            let want = CHUNK.min((len - self.pos) as usize);
            let got = self.file.read_at(&mut buf[..want], self.pos).map_err(read_err(&self.path))?;
            if got == 0 {
                break;
            }
            emit(&buf[..got])?;
            self.pos += got as u64;
        }
        Ok(())
    }
}

/// Offset at which the last `n` lines of the first `len` bytes of `file` begin, read backwards
/// in `chunk`-sized pieces. A final newline ends the last line rather than starting an empty
/// one (as `tail` counts). A file that shrank under us is shown from its start.
fn tail_start(file: &File, len: u64, n: u64, chunk: usize) -> io::Result<u64> {
    if n == 0 || len == 0 {
        return Ok(len);
    }
    let mut buf = vec![0; chunk.min(len as usize)];
    let mut end = len;
    let mut newlines = 0;
    while end > 0 {
        let start = end.saturating_sub(chunk as u64);
        let part = &mut buf[..(end - start) as usize];
        match file.read_exact_at(part, start) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            other => other?,
        }
        for (i, byte) in part.iter().enumerate().rev() {
            let at = start + i as u64;
            if *byte == b'\n' && at != len - 1 {
                newlines += 1;
                if newlines == n {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_of(content: &str, n: u64, chunk: usize) -> String {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        fs::write(tmp.path(), content).unwrap();
        let file = File::open(tmp.path()).unwrap();
        let start = tail_start(&file, content.len() as u64, n, chunk).unwrap();
        content[start as usize..].to_owned()
    }

    #[test]
    fn tail_counts_lines_like_tail_whatever_the_chunk_size() {
        let text = "one\ntwo\nthree\nfour\n";
        for chunk in [1, 2, 3, 5, 64, CHUNK] {
            assert_eq!(start_of(text, 0, chunk), "", "chunk {chunk}");
            assert_eq!(start_of(text, 1, chunk), "four\n", "chunk {chunk}");
            assert_eq!(start_of(text, 2, chunk), "three\nfour\n", "chunk {chunk}");
            assert_eq!(start_of(text, 4, chunk), text, "chunk {chunk}");
            assert_eq!(start_of(text, 100, chunk), text, "chunk {chunk}");
            // An unfinished last line counts as a line.
            assert_eq!(start_of("one\ntwo\npart", 1, chunk), "part", "chunk {chunk}");
            assert_eq!(start_of("one\ntwo\npart", 2, chunk), "two\npart", "chunk {chunk}");
            assert_eq!(start_of("\n\n\n", 2, chunk), "\n\n", "chunk {chunk}");
        }
        assert_eq!(start_of("", 10, 4), "");
    }

    #[test]
    fn tail_finds_lines_that_straddle_chunks_of_a_big_file() {
        // 200 000 lines (2 MB, 30 chunks): the last lines are found from the end, whichever
        // chunk boundary they cross.
        let text: String = (0..200_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(start_of(&text, 3, CHUNK), "line 199997\nline 199998\nline 199999\n");
        let last_5000: String = (195_000..200_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(start_of(&text, 5000, CHUNK), last_5000);
    }

    #[test]
    fn digits_are_a_port_anything_else_a_topology_id() {
        assert_eq!(Target::parse("6700").unwrap(), Target::Port(6700));
        assert_eq!(Target::parse("wordcount-2").unwrap(), Target::Topology("wordcount-2".into()));
        for bad in ["0", "65536", "99999999999999999999", "", "../etc", "a/b", "-n"] {
            let err = Target::parse(bad).unwrap_err();
            assert_eq!(err.code, ExitCode::Usage, "{bad:?}: {}", err.message);
        }
    }
}
