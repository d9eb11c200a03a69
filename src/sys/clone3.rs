//! Starting a worker with `clone3(2)`, born in its cgroup (`CLONE_INTO_CGROUP`, Linux ≥ 5.7,
//! cgroup v2): not one instruction of the child runs outside the worker's cgroup, and no
//! migration is paid (on v1 a move waits an RCU grace period; on v2 it still takes the
//! cgroup locks and moves the charges).
//!
//! std's `Command` has no hook for clone3's arguments, so this is a fork and exec of its own
//! that does what `Command::spawn` and the `pre_exec` hooks of [`super`] do, in their order:
//! stdin, stdout and stderr; the working directory; SIGPIPE back to its default and an empty
//! signal mask; a new session and the close-on-exec pass; the switch to the worker's user;
//! then `execve` of the program (an absolute path: no PATH search), a file the kernel cannot
//! run (`ENOEXEC`: no `#!` line) handed to `/bin/sh` as std's `execvp` does. A failure before the exec reaches the parent as the child's
//! errno through a close-on-exec pipe, as with std, so the spawn fails with the same error.
//! `CLONE_CLEAR_SIGHAND` gives the child default handlers from birth (ignored signals stay
//! ignored, as across `exec`), so no handler of the agent ever runs in it.
//!
//! Invariant: between clone3 and execve the child makes raw system calls only. It reads only
//! the [`ExecPlan`] built before the clone, allocates nothing and takes no lock (the agent is
//! multi-threaded: a lock another thread held stays held in the child). Credentials change
//! through the raw system calls, not glibc's wrappers: those broadcast the change to every
//! thread glibc believes the process has, and after a raw clone that list is the parent's.

use std::ffi::{CStr, CString, OsStr};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::libc::{self, c_char, c_int};
use rustix::process::{WaitId, WaitIdOptions};

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, 88 bytes): the libc crate
/// defines it on a few targets only.
#[repr(C, align(8))]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
/// Linux ≥ 5.5: every handled signal back to its default in the child.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
/// Linux ≥ 5.7: the child starts in the cgroup v2 directory `cgroup` is a descriptor of.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// What `execvp` hands a file without a `#!` line that the kernel cannot run.
const SHELL: &CStr = c"/bin/sh";

/// A worker started by [`spawn`]: our child, with a pidfd that becomes readable when it exits.
#[derive(Debug)]
pub(crate) struct BornChild {
    pub pid: u32,
    pub pidfd: OwnedFd,
}

/// Credentials the child drops to before `exec` (supplementary groups and gid first, uid last).
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Everything the child needs between clone3 and execve, made before the clone. The pointer
/// arrays point into the `CString`s this plan owns (a `CString`'s bytes do not move with it).
#[derive(Debug)]
pub(crate) struct ExecPlan {
    program: CString,
    argv: Vec<*const c_char>,
    /// `/bin/sh <program> <argv[1..]>`: what `execvp` runs on `ENOEXEC`.
    script_argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    cwd: Option<CString>,
    /// The child's stdin, stdout and stderr; each numbered 3 or above (see [`ExecPlan::new`]).
    stdio: [OwnedFd; 3],
    user: Option<Credentials>,
    /// Owns the bytes `argv`, `envp` and `script_argv` point to.
    _strings: Vec<CString>,
}

impl ExecPlan {
    /// `program` to exec (a path); `argv` from `argv[0]`; `envp` as `NAME=value`. A string
    /// with a NUL byte is `InvalidInput`, as with std.
    pub(crate) fn new(
        program: &OsStr,
        argv: &[&OsStr],
        envp: &[Vec<u8>],
        cwd: Option<&Path>,
        stdio: [OwnedFd; 3],
        user: Option<Credentials>,
    ) -> io::Result<ExecPlan> {
        let [stdin, stdout, stderr] = stdio;
        let c = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte found in provided data"))
        };
        let mut strings = Vec::new();
        let pointers = |items: Vec<CString>, strings: &mut Vec<CString>| {
            let mut ptrs: Vec<*const c_char> = items.iter().map(|s| s.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            strings.extend(items);
            ptrs
        };
        let argv_c = argv.iter().map(|a| c(a.as_bytes())).collect::<io::Result<Vec<_>>>()?;
        let argv_ptrs = pointers(argv_c, &mut strings);
        let envp_c = envp.iter().map(|e| c(e)).collect::<io::Result<Vec<_>>>()?;
        let envp_ptrs = pointers(envp_c, &mut strings);
        let program = c(program.as_bytes())?;
        let mut script_argv = vec![SHELL.as_ptr(), program.as_ptr()];
        script_argv.extend(argv_ptrs.iter().skip(1));
        Ok(ExecPlan {
            program,
            argv: argv_ptrs,
            script_argv,
            envp: envp_ptrs,
            cwd: cwd.map(|d| c(d.as_os_str().as_bytes())).transpose()?,
            stdio: [above_stderr(stdin)?, above_stderr(stdout)?, above_stderr(stderr)?],
            user,
            _strings: strings,
        })
    }
}

/// `fd` itself if it is numbered 3 or above, else a close-on-exec duplicate that is: the
/// child's `dup2` onto 0, 1 and 2 must not overwrite a source it has yet to use.
fn above_stderr(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 { Ok(fd) } else { Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?) }
}

fn clone_args(cgroup: Option<BorrowedFd<'_>>, pidfd: &mut c_int) -> CloneArgs {
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_CLEAR_SIGHAND,
        pidfd: std::ptr::from_mut(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    args
}

/// Why [`spawn`] failed: no process was created, or the child failed before its `exec`.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// `clone3` itself (or the pipe before it) failed: e.g. the cgroup is gone or refuses.
    Clone(io::Error),
    /// The child's errno: a step before `exec`, or `exec` itself (reaped already).
    Child(io::Error),
}

/// Starts the process `plan` describes, born in the cgroup v2 directory `cgroup` is open on
/// (`None`: where the agent is; tests use that to check the child's steps on any host).
/// Returns once the child has exec'd; if a step before that failed, the child is reaped and
/// its errno returned.
pub(crate) fn spawn(plan: &ExecPlan, cgroup: Option<BorrowedFd<'_>>) -> Result<BornChild, SpawnError> {
    let (report_read, report_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnError::Clone(e.into()))?;
    let mut pidfd: c_int = -1;
    let mut args = clone_args(cgroup, &mut pidfd);
    // SAFETY: clone3 with fork semantics (no CLONE_VM, no new stack): the child gets a copy of
    // this address space and returns here with 0. `args` is a valid `clone_args` of the size
    // passed, and `pidfd` outlives the call. The child goes straight into `run_child`, which
    // never returns (module invariant).
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &raw mut args, size_of::<CloneArgs>()) };
    if ret == 0 {
        run_child(plan, report_write.as_raw_fd());
    }
    if ret < 0 {
        return Err(SpawnError::Clone(io::Error::last_os_error()));
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor in `pidfd`; nothing else
    // owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let pid = u32::try_from(ret).expect("a pid fits in u32");
    drop(report_write);
    let mut report = Vec::with_capacity(4);
    let read = std::fs::File::from(report_read).read_to_end(&mut report);
    match (read, report.len()) {
        (Ok(_), 0) => Ok(BornChild { pid, pidfd }),
        (Ok(_), 4) => {
            reap(&pidfd);
            let errno = i32::from_ne_bytes(report.try_into().expect("four bytes"));
            Err(SpawnError::Child(io::Error::from_raw_os_error(errno)))
        }
        (read, n) => {
            let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
            reap(&pidfd);
            let e =
                read.err().unwrap_or_else(|| io::Error::other(format!("the child's exec report has {n} bytes, not 4")));
            Err(SpawnError::Child(e))
        }
    }
}

/// Waits for the child of `pidfd` to exit and reaps it.
pub(crate) fn reap(pidfd: &OwnedFd) {
    while let Err(rustix::io::Errno::INTR) =
        rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED)
    {}
}

/// Whether this kernel starts a process in a chosen cgroup: `Ok` when `clone3` with
/// `CLONE_INTO_CGROUP` is understood; else the errno (`ENOSYS`: no clone3, Linux < 5.3 or a
/// seccomp filter; `E2BIG` or `EINVAL`: no `CLONE_INTO_CGROUP`, Linux < 5.7). The probe names
/// `/`, which is not a cgroup: a kernel that knows the flag refuses that with `EBADF` before
/// any process exists, so nothing is started.
pub(crate) fn probe_clone_into_cgroup() -> io::Result<()> {
    let not_a_cgroup = std::fs::File::open("/")?;
    let mut pidfd: c_int = -1;
    let mut args = clone_args(Some(not_a_cgroup.as_fd()), &mut pidfd);
    // SAFETY: as in `spawn`. Should a kernel start a process anyway, the child only exits.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &raw mut args, size_of::<CloneArgs>()) };
    match ret {
        // SAFETY: `_exit` is async-signal-safe and ends the child at once.
        0 => unsafe { libc::_exit(0) },
        r if r > 0 => {
            // SAFETY: as in `spawn`: a new descriptor nothing else owns.
            reap(&unsafe { OwnedFd::from_raw_fd(pidfd) });
            Err(io::Error::other("clone3 started a process in a directory that is not a cgroup"))
        }
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EBADF) => Ok(()),
            e => Err(e),
        },
    }
}

/// The child: runs the steps of the plan and execs; never returns. On a failure it writes the
/// errno to `report` and exits 127.
fn run_child(plan: &ExecPlan, report: RawFd) -> ! {
    // SAFETY: we are the child of a clone3 with fork semantics. `prepare_and_exec` and the
    // calls here are raw system calls on memory of the plan (built before the clone, only
    // read) and the stack: no allocation, no lock, no glibc state that tracks threads.
    unsafe {
        let errno = prepare_and_exec(plan).to_ne_bytes();
        libc::write(report, errno.as_ptr().cast(), errno.len());
        libc::_exit(127)
    }
}

/// The steps between clone and exec, in std's order (module docs). Returns the errno of the
/// step that failed; returns only on failure.
///
/// # Safety
/// Only in the child of [`spawn`], before anything else.
unsafe fn prepare_and_exec(plan: &ExecPlan) -> c_int {
    let errno = || nix::errno::Errno::last_raw();
    // SAFETY: raw system calls with descriptors and NUL-terminated strings the plan owns, and
    // a zeroed signal set on the stack (see `run_child`).
    unsafe {
        for (fd, target) in plan.stdio.iter().zip(0..) {
            if libc::dup2(fd.as_raw_fd(), target) < 0 {
                return errno();
            }
        }
        if let Some(cwd) = &plan.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                return errno();
            }
        }
        // The agent ignores SIGPIPE (Rust's runtime does); std gives its children the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let empty: u64 = 0;
        if libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &raw const empty, std::ptr::null::<u64>(), 8) != 0
        {
            return errno();
        }
        // What `super::new_session_on_exec` does on the std path.
        if libc::setsid() < 0 {
            return errno();
        }
        libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC);
        if let Some(user) = &plan.user {
            if libc::syscall(libc::SYS_setgroups, user.groups.len(), user.groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setgid, user.gid) != 0
                || libc::syscall(libc::SYS_setuid, user.uid) != 0
            {
                return errno();
            }
        }
        exec(plan)
    }
}

/// `execve` of the program; on `ENOEXEC`, of `/bin/sh` with the program as its script (what
/// `execvp` does). Returns the errno to report.
///
/// # Safety
/// As [`prepare_and_exec`].
unsafe fn exec(plan: &ExecPlan) -> c_int {
    // SAFETY: NUL-terminated strings and NULL-terminated pointer arrays the plan owns.
    unsafe {
        libc::execve(plan.program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        if nix::errno::Errno::last_raw() == libc::ENOEXEC {
            libc::execve(SHELL.as_ptr(), plan.script_argv.as_ptr(), plan.envp.as_ptr());
        }
    }
    nix::errno::Errno::last_raw()
}
