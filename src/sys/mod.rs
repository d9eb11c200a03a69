//! The one place where the crate needs `unsafe`: starting a worker with `clone3` ([`clone3`]:
//! a child that shares the agent's memory until its exec, born in its cgroup or joining it),
//! the `pre_exec` hooks of std's `Command` that run in a forked child between `fork` and
//! `exec` (the route where the kernel has no clone3), and handing a descriptor to tokio's
//! reactor.
//!
//! The rest of the crate is `#![deny(unsafe_code)]` (Cargo.toml lints); this module and its
//! child allow it so that the unsafe surface is a few functions that can be read in minutes.
//! Everything else that touches the kernel goes through safe wrappers (`nix`, `rustix`,
//! `tokio`).
//!
//! Invariant: the closures handed to `pre_exec`, and the child side of [`clone3::spawn`], only
//! make async-signal-safe system calls. They allocate nothing, take no lock and touch no state
//! shared with the parent, because after `fork` in a multi-threaded process only the forking
//! thread exists and any lock another thread held stays held forever; and the clone3 child
//! shares the memory the agent's other threads keep changing ([`clone3`]'s invariant).
#![allow(unsafe_code)]

pub(crate) mod clone3;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Makes the child of `command` the leader of a new session and a new process group
/// (`setsid`), and marks every inherited descriptor above stderr close-on-exec.
///
/// Why a new session: a worker must outlive the agent and must not receive signals meant for
/// the agent's terminal or process group (a Ctrl-C on `gale` in a foreground shell, systemd's
/// `KillMode=mixed` signal to the main process's group). Being its own group leader is also
/// what lets the agent stop the worker and everything it forked with one `killpg`.
///
/// Why the extra close-on-exec pass: Rust and tokio open every descriptor with `O_CLOEXEC`,
/// but a C library linked into the agent may not. `close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`
/// (Linux ≥ 5.11) flags rather than closes, so the pipe std uses to report a failed `exec`
/// (already close-on-exec) keeps working. On an older kernel the call fails with `EINVAL` or
/// `ENOSYS` and is ignored: Rust's own descriptors are still close-on-exec.
pub(crate) fn new_session_on_exec(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before `exec`. It only calls `setsid(2)`
    // and `close_range(2)`, both async-signal-safe raw system calls; it allocates nothing
    // (the error from `setsid` is an errno wrapped in `io::Error`'s `Os` variant, which does
    // not allocate), takes no lock and reads no memory shared with other threads.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::libc::syscall(
                nix::libc::SYS_close_range,
                3 as nix::libc::c_uint,
                nix::libc::c_uint::MAX,
                nix::libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
}

/// Makes the child drop to `uid`/`gid` with supplementary `groups` just before `exec`, in the
/// order that works: groups and gid first (they need root), uid last. Runs after
/// [`new_session_on_exec`] when both are registered (hooks run in registration order).
pub(crate) fn switch_user_on_exec(command: &mut Command, uid: u32, gid: u32, groups: &[u32]) {
    // Built before the fork: the child must not allocate.
    let groups: Vec<nix::unistd::Gid> = groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    let (uid, gid) = (nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(gid));
    // SAFETY: runs in the forked child before `exec`: `setgroups(2)`, `setgid(2)` and
    // `setuid(2)` are async-signal-safe raw system calls; the closure only reads the vector
    // built before the fork (owned by the closure, not shared), allocates nothing and takes no
    // lock; errors are errno values in `io::Error::Os`, which does not allocate.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setgroups(&groups).map_err(std::io::Error::from)?;
            nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
            nix::unistd::setuid(uid).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// Registers `fd` with the tokio reactor for readiness `interest`. Must be called inside a
/// tokio runtime. Used for pidfds, which become readable when their process exits.
pub(crate) fn register_owned_fd(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: tokio requires the descriptor to stay open and to be the same one for the whole
    // life of the `AsyncFd`. The `OwnedFd` is moved into the `AsyncFd`, which is then its only
    // owner: nothing else can close it, and `OwnedFd::as_raw_fd` always returns the number it
    // was made with. It is closed only when the `AsyncFd` drops it, after deregistering.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

/// Makes the child of `command` join the cgroups whose `cgroup.procs` files `procs` are, before
/// `exec`: the worker's first instruction already runs under its limits, and nothing it forks
/// can be born outside them. The files are opened by the caller (the child must not open
/// paths or allocate); they are close-on-exec, so the worker never holds them.
///
/// Writing "0" to `cgroup.procs` moves the writing process (v1 and v2). If a write fails the
/// child reports the errno and the spawn fails: a worker never runs outside its cgroup.
pub(crate) fn join_cgroups_on_exec(command: &mut Command, procs: Vec<OwnedFd>) {
    use std::os::fd::AsRawFd;
    // SAFETY: the closure runs in the forked child before `exec`. It only calls `write(2)`, an
    // async-signal-safe system call, on descriptors owned by the closure (moved in, so open
    // for as long as the `Command` lives, and inherited by the child across `fork`) with a
    // static one-byte buffer. It allocates nothing (`last_os_error` is an errno in the `Os`
    // variant), takes no lock and reads no memory other threads write.
    unsafe {
        command.pre_exec(move || {
            for fd in &procs {
                let written = nix::libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Sets `RLIMIT_AS` (soft and hard) to `bytes` in the child of `command` before `exec`: the
/// rlimits fallback for `memory_mb` where no cgroup can be made (see `isolation`).
pub(crate) fn limit_address_space_on_exec(command: &mut Command, bytes: u64) {
    let limit = nix::libc::rlimit { rlim_cur: bytes as nix::libc::rlim_t, rlim_max: bytes as nix::libc::rlim_t };
    // SAFETY: the closure runs in the forked child before `exec`. It only calls
    // `setrlimit(2)`, an async-signal-safe system call, with a pointer to a `rlimit` copied
    // into the closure; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            if nix::libc::setrlimit(nix::libc::RLIMIT_AS, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
