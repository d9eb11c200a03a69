//! Starting a worker with `clone3(2)` the way glibc's `posix_spawn` starts a process: the
//! child shares the agent's memory (`CLONE_VM`) on a stack of its own, and the calling thread
//! sleeps until the child has exec'd or exited (`CLONE_VFORK`). Nothing of the agent's address
//! space is copied: a fork of the agent (a multi-threaded process of some 10 MB) copies its
//! page tables at every launch and then pays copy-on-write faults in the agent (issue 14: the
//! fork was about 11 % of the agent's CPU in the restart bench).
//!
//! The child enters the worker's cgroup before the worker's first instruction: born in it
//! (`CLONE_INTO_CGROUP`, Linux ≥ 5.7, cgroup v2: it never runs outside, and no migration is
//! paid; on v1 a move waits an RCU grace period, on v2 it still takes the cgroup locks and
//! moves the charges), or by writing `0` to the `cgroup.procs` files the parent opened (cgroup
//! v1), or it sets `RLIMIT_AS` (rlimits): [`ExecPlan::join_before_exec`].
//!
//! std's `Command` has no hook for clone3's arguments, so this is a spawn of its own that does
//! what `Command::spawn` and the `pre_exec` hooks of [`super`] do, in their order: stdin,
//! stdout and stderr; the working directory; SIGPIPE back to its default and an empty signal
//! mask; a new session and the close-on-exec pass; the cgroups joined (or `RLIMIT_AS` set);
//! the switch to the worker's user; then `execve` of the program (an absolute path: no PATH
//! search), a file the kernel cannot run (`ENOEXEC`: no `#!` line) handed to `/bin/sh` as
//! std's `execvp` does. A failure before the exec reaches the parent as the child's errno
//! through a close-on-exec pipe, as with std, so the spawn fails with the same error (one
//! report for both clone paths below; its few system calls are nothing next to a fork).
//! `CLONE_CLEAR_SIGHAND` gives the child default handlers from birth (ignored signals stay
//! ignored, as across `exec`), so no handler of the agent ever runs in it, on its memory.
//!
//! Invariant: between clone3 and execve the child makes raw system calls only, while the
//! agent's other threads keep running on the memory it shares. It reads only the [`ExecPlan`]
//! built before the clone (owned by the calling thread, which is suspended: nothing frees or
//! changes it) and writes only its own stack. It allocates nothing, takes no lock and never
//! panics (an abort would signal the calling thread's tid: glibc keeps it in the thread's
//! descriptor, which the child shares). glibc's wrappers it calls (`dup2`, `chdir`, `execve`,
//! `syscall`, ...) set `errno` on failure: with `CLONE_VM` and no new TLS that is the calling
//! thread's `errno`, harmless because that thread is suspended until the child is gone or
//! exec'd, and the child reads it back right after its own call. `write` goes through
//! `syscall`: glibc's `write` is a cancellation point, which marks the calling thread's
//! descriptor around the call. Credentials change through the raw system calls, not glibc's
//! wrappers: those broadcast the change to every thread of the agent.
//!
//! The child's stack is [`STACK_SIZE`] bytes above a guard page, mapped for one spawn: an
//! overflow faults in the child (which dies) instead of writing over the agent's memory. The
//! child uses a page or two of it (the test `the_child_uses_little_of_its_stack` measures).
//! The trampoline that starts the child on it is inline assembly (x86_64, aarch64; as glibc's
//! `clone3.S`). On other architectures clone3 has fork semantics: the child gets a copy of the
//! address space (what every spawn paid before) and runs the same steps.

use std::ffi::{CStr, CString, OsStr, c_void};
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
/// The child's stack (module docs): far more than the child's steps need, and only the pages
/// it touches are ever backed by memory.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const STACK_SIZE: usize = 64 * 1024;

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
    /// `cgroup.procs` files, open for writing, the child writes `0` to, in this order.
    cgroup_procs: Vec<OwnedFd>,
    /// `RLIMIT_AS` (soft and hard) in bytes.
    address_space: Option<u64>,
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
            cgroup_procs: Vec::new(),
            address_space: None,
            user,
            _strings: strings,
        })
    }

    /// Makes the child join the cgroups whose `cgroup.procs` files `cgroup_procs` are (opened
    /// for writing by the caller, close-on-exec) and set `RLIMIT_AS` to `address_space`, after
    /// the new session and before the user switch, as std's route does with its hooks
    /// ([`super::join_cgroups_on_exec`], [`super::limit_address_space_on_exec`]): the join is
    /// made with the agent's credentials, which the worker's user may lack. Writing `0` moves
    /// the writer, the child, before the worker's first instruction. If a step fails the spawn
    /// fails with its errno: a worker never runs outside its cgroup.
    pub(crate) fn join_before_exec(
        mut self,
        cgroup_procs: Vec<OwnedFd>,
        address_space: Option<u64>,
    ) -> io::Result<ExecPlan> {
        // Above stderr like stdio: the child's dup2 onto 0, 1 and 2 comes first.
        self.cgroup_procs = cgroup_procs.into_iter().map(above_stderr).collect::<io::Result<_>>()?;
        self.address_space = address_space;
        Ok(self)
    }
}

/// `fd` itself if it is numbered 3 or above, else a close-on-exec duplicate that is: the
/// child's `dup2` onto 0, 1 and 2 must not overwrite a descriptor it has yet to use.
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
    /// `clone3` itself (or the pipe or stack before it) failed: e.g. the cgroup is gone or
    /// refuses, or the pids limit is reached.
    Clone(io::Error),
    /// The child's errno: a step before `exec`, or `exec` itself (reaped already).
    Child(io::Error),
}

/// What the child is handed: the plan, and where to report the errno of a failed step.
struct ChildArg<'a> {
    plan: &'a ExecPlan,
    report: RawFd,
}

/// Starts the process `plan` describes, born in the cgroup v2 directory `cgroup` is open on
/// (`None`: where the agent is, then joins what the plan says). Returns once the child has
/// exec'd; if a step before that failed, the child is reaped and its errno returned.
pub(crate) fn spawn(plan: &ExecPlan, cgroup: Option<BorrowedFd<'_>>) -> Result<BornChild, SpawnError> {
    let (report_read, report_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnError::Clone(e.into()))?;
    let mut pidfd: c_int = -1;
    let mut args = clone_args(cgroup, &mut pidfd);
    let pid =
        start_child(&mut args, &ChildArg { plan, report: report_write.as_raw_fd() }).map_err(SpawnError::Clone)?;
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor in `pidfd`; nothing else
    // owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
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

/// Clones the child that runs [`child_main`] with `child`, sharing this address space on a
/// stack of its own; returns its pid once it has exec'd or exited (`CLONE_VFORK`).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn start_child(args: &mut CloneArgs, child: &ChildArg<'_>) -> io::Result<u32> {
    start_child_on(args, child, &ChildStack::new()?)
}

/// [`start_child`] on `stack`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn start_child_on(args: &mut CloneArgs, child: &ChildArg<'_>, stack: &ChildStack) -> io::Result<u32> {
    /// Linux: the child shares the address space, and the caller sleeps until it execs or exits.
    const CLONE_VM: u64 = libc::CLONE_VM as u64;
    const CLONE_VFORK: u64 = libc::CLONE_VFORK as u64;
    args.flags |= CLONE_VM | CLONE_VFORK;
    (args.stack, args.stack_size) = (stack.low as u64, STACK_SIZE as u64);
    // SAFETY: `args` is a valid `clone_args` with CLONE_VM | CLONE_VFORK and a stack that is
    // this spawn's alone, mapped until after the child has exec'd or exited (this thread is
    // suspended until then, so `child`, the plan and `stack` outlive the child's use of them).
    // `child_main` never returns and keeps the module invariant.
    let ret = unsafe { clone3_on_own_stack(args, child_main, std::ptr::from_ref(child).cast()) };
    match u32::try_from(ret) {
        Ok(pid) => Ok(pid),
        Err(_) => Err(io::Error::from_raw_os_error(i32::try_from(-ret).unwrap_or(libc::EINVAL))),
    }
}

/// Clones the child that runs [`child_main`] with `child`: fork semantics (no trampoline for
/// this architecture, module docs). Returns its pid.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn start_child(args: &mut CloneArgs, child: &ChildArg<'_>) -> io::Result<u32> {
    // SAFETY: clone3 with fork semantics (no CLONE_VM, no new stack): the child gets a copy of
    // this address space and returns here with 0. `args` is a valid `clone_args` of the size
    // passed, and its `pidfd` outlives the call. The child goes straight into `child_main`,
    // which never returns (module invariant).
    let ret = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::from_mut(args), size_of::<CloneArgs>()) };
    if ret == 0 {
        child_main(std::ptr::from_ref(child).cast());
    }
    u32::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// `clone3(args)`; the child, on the stack `args` names, calls `entry(arg)`. Returns what the
/// system call returned to the parent: the child's pid, or `-errno`.
///
/// The child must not return from this function: the parent's frame above it is the parent's
/// (it shares the memory), so it leaves the `asm!` block only by calling `entry`, which never
/// returns; should it, `ud2` faults. The argument and the entry are held in callee-saved
/// registers, which the kernel hands the child as they were (glibc's `clone3.S` does the same).
///
/// # Safety
/// `args` asks for `CLONE_VM` with a stack (`stack`, `stack_size`) nothing else uses; `entry`
/// never returns and keeps the module invariant; `arg` stays valid for the child's use.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_on_own_stack(
    args: &mut CloneArgs,
    entry: extern "C" fn(*const c_void) -> !,
    arg: *const c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the caller's contract. `syscall` clobbers rcx and r11 and returns in rax; the
    // parent leaves the block at `2:` with nothing else changed, the child never leaves it.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            // The child, on its own stack: rsp = stack + stack_size, 16-byte aligned, so
            // `entry` starts as after any call. No frame above it (rbp 0).
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") std::ptr::from_mut(args),
            in("rsi") size_of::<CloneArgs>(),
            in("r12") entry,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// As the x86_64 one: `svc #0` returns 0 in x0 to the child, whose sp is the new stack's top.
///
/// # Safety
/// As the x86_64 one.
#[cfg(target_arch = "aarch64")]
unsafe fn clone3_on_own_stack(
    args: &mut CloneArgs,
    entry: extern "C" fn(*const c_void) -> !,
    arg: *const c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the caller's contract. `svc` returns in x0 and changes no other register; the
    // parent leaves the block at `2:`, the child never leaves it.
    unsafe {
        std::arch::asm!(
            "svc #0",
            "cbnz x0, 2f",
            // The child: no frame above it (fp 0).
            "mov x29, xzr",
            "mov x0, x21",
            "blr x20",
            "udf #0",
            "2:",
            inlateout("x0") std::ptr::from_mut(args) => ret,
            in("x1") size_of::<CloneArgs>(),
            in("x8") libc::SYS_clone3,
            in("x20") entry,
            in("x21") arg,
            options(nostack),
        );
    }
    ret
}

/// The child's stack: [`STACK_SIZE`] bytes above a guard page (module docs), unmapped on drop.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
struct ChildStack {
    /// The mapping: the guard page, then the stack.
    map: *mut c_void,
    len: usize,
    /// The stack's lowest address (its top is `low + STACK_SIZE`, page-aligned).
    low: *mut c_void,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        let guard = page_size();
        let len = guard + STACK_SIZE;
        let (prot, flags) =
            (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK);
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let map = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `guard` < `len`: the address stays inside the mapping.
        let stack = ChildStack { map, len, low: unsafe { map.byte_add(guard) } };
        // SAFETY: the lowest page of the mapping made above, which nothing uses yet.
        if unsafe { libc::mprotect(map, guard, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// How many pages of the stack are backed by memory: those the child touched.
    #[cfg(test)]
    fn pages_touched(&self) -> usize {
        let page = page_size();
        let mut resident = vec![0u8; STACK_SIZE.div_ceil(page)];
        // SAFETY: `low` and `STACK_SIZE` lie in our mapping; one byte per page is written.
        assert_eq!(unsafe { libc::mincore(self.low, STACK_SIZE, resident.as_mut_ptr()) }, 0);
        resident.iter().filter(|&&r| r & 1 != 0).count()
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the child that used it has exec'd or exited.
        unsafe { libc::munmap(self.map, self.len) };
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn page_size() -> usize {
    // SAFETY: sysconf only reads a value.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Waits for the child of `pidfd` to exit and reaps it.
pub(crate) fn reap(pidfd: &OwnedFd) {
    while let Err(rustix::io::Errno::INTR) =
        rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED)
    {}
}

/// Whether this kernel has `clone3` with every flag [`spawn`] uses: `Ok` when
/// `CLONE_INTO_CGROUP` (Linux ≥ 5.7, which has `CLONE_CLEAR_SIGHAND` and `CLONE_PIDFD`) is
/// understood; else the errno (`ENOSYS`: no clone3, Linux < 5.3 or a seccomp filter; `E2BIG`
/// or `EINVAL`: no `CLONE_INTO_CGROUP`, Linux < 5.7). The probe names `/`, which is not a
/// cgroup: a kernel that knows the flag refuses that with `EBADF` before any process exists,
/// so nothing is started.
pub(crate) fn probe_clone_into_cgroup() -> io::Result<()> {
    let not_a_cgroup = std::fs::File::open("/")?;
    let mut pidfd: c_int = -1;
    let mut args = clone_args(Some(not_a_cgroup.as_fd()), &mut pidfd);
    // SAFETY: clone3 with fork semantics (no CLONE_VM, no new stack): should a kernel start a
    // process anyway, the child has a copy of this address space and only exits. `args` is a
    // valid `clone_args` of the size passed, and `pidfd` outlives the call.
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
/// errno to the report pipe and exits 127. `extern "C"`: the trampoline calls it.
extern "C" fn child_main(arg: *const c_void) -> ! {
    // SAFETY: we are the child of `start_child`; `arg` is the `ChildArg` its caller keeps alive
    // (the calling thread is suspended, or, with fork semantics, this is our own copy).
    // `prepare_and_exec` and the calls here are raw system calls on memory of the plan (built
    // before the clone, only read) and this stack: module invariant.
    unsafe {
        let child = &*arg.cast::<ChildArg<'_>>();
        let errno = prepare_and_exec(child.plan).to_ne_bytes();
        libc::syscall(libc::SYS_write, child.report, errno.as_ptr(), errno.len());
        libc::_exit(127)
    }
}

/// The steps between clone and exec, in std's order (module docs). Returns the errno of the
/// step that failed; returns only on failure.
///
/// # Safety
/// Only in the child of [`spawn`], before anything else.
unsafe fn prepare_and_exec(plan: &ExecPlan) -> c_int {
    // SAFETY: raw system calls with descriptors, NUL-terminated strings and a limit the plan
    // owns, and a zeroed signal set on the stack (see `child_main`).
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
        let joined = enter_cgroups(plan);
        if joined != 0 {
            return joined;
        }
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

/// What `super::join_cgroups_on_exec` and `super::limit_address_space_on_exec` do on the std
/// path ([`ExecPlan::join_before_exec`]). Returns 0, or the errno of the step that failed.
///
/// # Safety
/// As [`prepare_and_exec`].
unsafe fn enter_cgroups(plan: &ExecPlan) -> c_int {
    // SAFETY: `write` on descriptors the plan owns from a static buffer, and `prlimit64` of
    // this process with a limit on the stack.
    unsafe {
        for procs in &plan.cgroup_procs {
            if libc::syscall(libc::SYS_write, procs.as_raw_fd(), b"0".as_ptr(), 1) != 1 {
                return errno();
            }
        }
        if let Some(bytes) = plan.address_space {
            let limit = libc::rlimit64 { rlim_cur: bytes, rlim_max: bytes };
            let none = std::ptr::null_mut::<libc::rlimit64>();
            if libc::syscall(libc::SYS_prlimit64, 0, libc::RLIMIT_AS, &raw const limit, none) != 0 {
                return errno();
            }
        }
    }
    0
}

/// The errno the last failed call left (`EIO` should a call fail without one, e.g. a short
/// write): the child's report of a failure is never 0.
fn errno() -> c_int {
    match nix::errno::Errno::last_raw() {
        0 => libc::EIO,
        e => e,
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
    errno()
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    /// Runs `plan`'s child on a stack of its own; returns the pages of it the child touched
    /// and its report (the errno of a failed step, or nothing once it exec'd).
    fn pages_and_report(plan: &ExecPlan) -> (usize, Vec<u8>) {
        let stack = ChildStack::new().unwrap();
        let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut pidfd: c_int = -1;
        let mut args = clone_args(None, &mut pidfd);
        start_child_on(&mut args, &ChildArg { plan, report: report_write.as_raw_fd() }, &stack).unwrap();
        // SAFETY: as in `spawn`.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        drop(report_write);
        let mut report = Vec::new();
        std::fs::File::from(report_read).read_to_end(&mut report).unwrap();
        reap(&pidfd);
        (stack.pages_touched(), report)
    }

    #[test]
    fn the_child_uses_little_of_its_stack() {
        if let Err(e) = probe_clone_into_cgroup() {
            eprintln!("skipping the_child_uses_little_of_its_stack: no clone3 here: {e}");
            return;
        }
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        // Every step the child can take (an rlimit it may set: unlimited), to an exec that
        // works, and to one that fails after the retry through /bin/sh (a missing file is
        // ENOENT at once; a directory is EACCES).
        let plan = |program: &str| {
            let argv = [OsStr::new(program), OsStr::new("-c"), OsStr::new("exit 0")];
            ExecPlan::new(
                OsStr::new(program),
                &argv,
                &[b"A=b".to_vec()],
                Some(Path::new("/")),
                [null(), null(), null()],
                None,
            )
            .unwrap()
            .join_before_exec(Vec::new(), Some(libc::RLIM_INFINITY))
            .unwrap()
        };
        let page = page_size();
        for (program, report) in [("/bin/sh", None), ("/nonexistent", Some(libc::ENOENT)), ("/", Some(libc::EACCES))] {
            let (pages, got) = pages_and_report(&plan(program));
            println!("{program}: the child touched {pages} pages of {page} bytes of its stack");
            assert_eq!(got, report.map(|e: c_int| e.to_ne_bytes().to_vec()).unwrap_or_default(), "{program}");
            assert!((1..=2).contains(&pages), "{program}: {pages} pages of {page} bytes");
        }
    }
}
