//! A diagnostics run against real processes in temp dirs: what its files hold, the cap and
//! its marker, the timeout killing the whole group, `{out}` kept (and a planted symlink not
//! followed), a program that cannot run.

use super::*;
use crate::proc_identity::Liveness;

struct Case {
    _tmp: tempfile::TempDir,
    request: Request,
}

fn case(name: &str, argv: &[&str], timeout: Duration, max_bytes: u64) -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let worker_dir = tmp.path().join("workers/w-1");
    std::fs::create_dir_all(&worker_dir).unwrap();
    let request = Request {
        name: name.to_owned(),
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        values: Values {
            pid: std::process::id(),
            port: 6700,
            topology_id: "wc".into(),
            worker_id: "w-1".into(),
            worker_dir,
            out: None,
        },
        run_as: None,
        diag_dir: tmp.path().join("logs/workers/wc/6700/diag"),
        timeout,
        max_bytes,
    };
    Case { _tmp: tmp, request }
}

const LONG: Duration = Duration::from_secs(20);
const T0: u64 = 1_796_667_300_123;

#[tokio::test]
async fn the_output_file_holds_the_header_both_streams_and_how_it_ended() {
    let c = case("status", &["/bin/sh", "-c", "echo out {pid}; echo err >&2; exit 3"], LONG, 1 << 20);
    let outcome = run(&c.request, T0).await.unwrap();
    assert_eq!(outcome.result(), "failed");
    assert!(matches!(outcome.ending, Ending::Exited(s) if s.code() == Some(3)), "{outcome:?}");
    let path = c.request.diag_dir.join("20261207T181500.123Z-status.txt");
    assert_eq!(outcome.output.path, path);
    let text = std::fs::read_to_string(&path).unwrap();
    let pid = std::process::id();
    for line in [
        "gale diagnostics `status` on port 6700: topology wc, worker w-1 (pid ".to_owned(),
        format!("command: /bin/sh -c 'echo out {pid}; echo err >&2; exit 3'\n"),
        "started: 2026-12-07T18:15:00.123Z, timeout 20 s".to_owned(),
        format!(
            "----- output (stdout and stderr) -----\nout {pid}\nerr\n----- end of output -----\nexited with code 3"
        ),
    ] {
        assert!(text.contains(&line), "{line:?} not in:\n{text}");
    }
    assert_eq!(outcome.output.bytes, format!("out {pid}\nerr\n").len() as u64);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
    assert!(outcome.summary().starts_with("exited with code 3 after "), "{}", outcome.summary());
}

#[tokio::test]
async fn output_past_the_cap_is_dropped_with_a_marker_and_the_run_still_ends() {
    // 4 MiB through a 1 KiB cap: the command is never blocked by a full pipe.
    let c = case("spew", &["/bin/sh", "-c", "head -c 4194304 /dev/zero | tr '\\0' x"], LONG, 1024);
    let outcome = run(&c.request, T0).await.unwrap();
    assert_eq!(outcome.result(), "ok");
    assert_eq!((outcome.output.bytes, outcome.output.truncated), (1024, true));
    let text = std::fs::read_to_string(&outcome.output.path).unwrap();
    assert!(text.contains(&format!("{}\n----- truncated: output past 1024 bytes", "x".repeat(1024))), "{text}");
    assert!(text.contains(&format!("was discarded: {} bytes", 4_194_304 - 1024)), "{text}");
    assert!(!text.contains(&"x".repeat(1025)));
}

#[tokio::test]
async fn a_run_past_its_timeout_is_killed_with_everything_it_forked() {
    let c = case(
        "hang",
        &["/bin/sh", "-c", "sleep 1000 & echo child $!; exec sleep 1000"],
        Duration::from_millis(700),
        1024,
    );
    let started = Instant::now();
    let outcome = run(&c.request, T0).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(outcome.ending, Ending::TimedOut);
    assert_eq!(outcome.result(), "timed_out");
    let text = std::fs::read_to_string(&outcome.output.path).unwrap();
    assert!(text.contains("killed with its process group at its timeout"), "{text}");
    assert!(!text.contains("left the command's process group"), "a timeout is not an escape: {text}");
    let child: u32 = text.lines().find_map(|l| l.strip_prefix("child ")?.parse().ok()).unwrap();
    let gone = crate::proc_identity::ProcessIdentity::of(child).map_or(true, |id| id.liveness() != Liveness::Alive);
    assert!(gone, "the backgrounded sleep {child} survived");
}

#[tokio::test]
async fn a_file_written_at_out_is_kept_capped_and_the_scratch_dir_removed() {
    let c = case("heap", &["/bin/sh", "-c", "head -c 3000 /dev/zero > {out}; echo wrote"], LONG, 2048);
    let outcome = run(&c.request, T0).await.unwrap();
    let kept = outcome.out_file.clone().unwrap();
    assert_eq!(kept.path, c.request.diag_dir.join("20261207T181500.123Z-heap.out"));
    assert_eq!((kept.bytes, kept.truncated), (2048, true));
    assert_eq!(std::fs::metadata(&kept.path).unwrap().len(), 2048);
    let text = std::fs::read_to_string(&outcome.output.path).unwrap();
    assert!(
        text.contains("{out}: ") && text.contains("(2048 bytes, truncated at diagnostics.max_output_mb)"),
        "{text}"
    );
    let left: Vec<_> = std::fs::read_dir(&c.request.values.worker_dir).unwrap().collect();
    assert!(left.is_empty(), "the {{out}} directory is removed: {left:?}");
}

#[tokio::test]
async fn a_symlink_at_out_is_not_followed_and_no_file_is_said_so() {
    let c = case("sneaky", &["/bin/ln", "-s", "/etc/shadow", "{out}"], LONG, 2048);
    let outcome = run(&c.request, T0).await.unwrap();
    assert_eq!(outcome.out_file, None);
    assert!(outcome.out_note.as_deref().unwrap().contains("a symlink is not followed"), "{outcome:?}");
    let c = case("lazy", &["/bin/echo", "{out}"], LONG, 2048);
    let outcome = run(&c.request, T0).await.unwrap();
    assert_eq!(outcome.out_note.as_deref(), Some("{out}: the command wrote no file there"));
}

#[tokio::test]
async fn a_program_that_cannot_run_is_reported_in_its_file() {
    let c = case("nope", &["/nonexistent/jmap", "-dump:file={out}", "{pid}"], LONG, 2048);
    let outcome = run(&c.request, T0).await.unwrap();
    assert_eq!(outcome.result(), "not_run");
    assert_eq!((outcome.out_file, outcome.out_note), (None, None), "nothing to say about {{out}}");
    assert!(std::fs::read_dir(&c.request.values.worker_dir).unwrap().next().is_none(), "its {{out}} dir is removed");
    let text = std::fs::read_to_string(&outcome.output.path).unwrap();
    assert!(text.contains("could not be run: cannot execute /nonexistent/jmap: No such file"), "{text}");
    // Its output file cannot be made: nothing runs, the error names the path.
    let c = case("x", &["/bin/true"], LONG, 2048);
    let parent = c.request.diag_dir.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    std::fs::write(&c.request.diag_dir, b"a file, not a dir").unwrap();
    let err = run(&c.request, T0).await.unwrap_err().to_string();
    assert!(err.contains("cannot create") && err.contains("diag/20261207T181500.123Z-x.txt"), "{err}");
}

#[test]
fn the_command_line_shows_each_argument_as_exec_gets_it() {
    let argv: Vec<String> = ["/usr/bin/gdb", "-batch", "-ex", "info threads", "", "it's"].map(String::from).to_vec();
    assert_eq!(shown(&argv), r#"/usr/bin/gdb -batch -ex 'info threads' '' 'it'\''s'"#);
}
