//! The seccomp profile of a container: Docker's default (moby/profiles `seccomp/default.json`, v0.2.3) as an
//! allowlist. Everything not listed fails with EPERM; system calls that only make sense with a capability are
//! allowed only when the container has it; `clone` may not create namespaces and `clone3` reports ENOSYS
//! (so the C library falls back to `clone`) unless the container has `SYS_ADMIN`.
//!
//! Left out of Docker's list: the names libseccomp 2.5.4 (Debian 12) cannot resolve, which crun would warn about
//! on every start (`cachestat`, `fchmodat2`, `futex_wait`/`futex_wake`/`futex_requeue`, `getxattrat` and its
//! siblings, `listmount`, `statmount`, `map_shadow_stack`, `mseal`, `uretprobe`, `riscv_hwprobe`, and the
//! `lsm_*` calls of `SYS_ADMIN`): Linux 6.1 has none of them.

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall,
    LinuxSyscallBuilder,
};

use crate::DriverError;

/// Allowed for every container (Docker's unconditional rule, x86-64 and its compat ABIs).
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // x86-64 only (Docker's arch rules), and kernels ≥ 4.8 make these safe without SYS_PTRACE.
    "arch_prctl",
    "modify_ldt",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
];

/// System calls allowed only with a capability.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (Capability::SysModule, &["delete_module", "init_module", "finit_module"]),
    (Capability::SysPacct, &["acct"]),
    (Capability::SysPtrace, &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (Capability::SysTime, &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    (Capability::SysTtyConfig, &["vhangup"]),
    (Capability::SysNice, &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// `personality` values allowed: PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32|UNAME26 and the query 0xffffffff.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// AF_ALG and AF_VSOCK: the socket families a container may not open.
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// The profile for a container whose bounding capability set is `capabilities`.
pub(super) fn profile(capabilities: &HashSet<Capability>) -> Result<LinuxSeccomp, DriverError> {
    let build_error = |error: oci_spec::OciSpecError| DriverError::Other(format!("building the seccomp profile: {error}"));
    let allow = |names: Vec<String>| LinuxSyscallBuilder::default().names(names).action(LinuxSeccompAction::ScmpActAllow).build();
    let arg =
        |index: usize, value: u64, op: LinuxSeccompOperator| LinuxSeccompArgBuilder::default().index(index).value(value).op(op).build();
    let with_arg = |name: &str, arg| {
        LinuxSyscallBuilder::default().names(vec![name.to_owned()]).action(LinuxSeccompAction::ScmpActAllow).args(vec![arg]).build()
    };

    let mut names: Vec<String> = ALLOWED.iter().map(|name| (*name).to_owned()).collect();
    for (capability, calls) in BY_CAPABILITY {
        if capabilities.contains(capability) {
            names.extend(calls.iter().map(|name| (*name).to_owned()));
        }
    }
    names.sort();
    names.dedup();
    let mut rules: Vec<LinuxSyscall> = vec![allow(names).map_err(build_error)?];
    // Every socket family but AF_ALG and AF_VSOCK.
    for (value, op) in
        [(AF_ALG, LinuxSeccompOperator::ScmpCmpLt), (39, LinuxSeccompOperator::ScmpCmpEq), (AF_VSOCK, LinuxSeccompOperator::ScmpCmpGt)]
    {
        rules.push(with_arg("socket", arg(0, value, op).map_err(build_error)?).map_err(build_error)?);
    }
    for personality in PERSONALITIES {
        rules.push(
            with_arg("personality", arg(0, personality, LinuxSeccompOperator::ScmpCmpEq).map_err(build_error)?).map_err(build_error)?,
        );
    }
    if !capabilities.contains(&Capability::SysAdmin) {
        let no_namespaces = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(CLONE_NAMESPACE_FLAGS)
            .value_two(0u64)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()
            .map_err(build_error)?;
        rules.push(with_arg("clone", no_namespaces).map_err(build_error)?);
        let enosys = u32::try_from(libc::ENOSYS).unwrap_or(38);
        rules.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_owned()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(enosys)
                .build()
                .map_err(build_error)?,
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(u32::try_from(libc::EPERM).unwrap_or(1))
        .architectures(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32])
        .syscalls(rules)
        .build()
        .map_err(build_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(profile: &LinuxSeccomp) -> Vec<String> {
        profile.syscalls().as_ref().unwrap()[0].names().clone()
    }

    #[test]
    fn an_allowlist_with_capability_gated_calls() {
        let plain = profile(&HashSet::new()).unwrap();
        assert_eq!(plain.default_action(), LinuxSeccompAction::ScmpActErrno);
        let names = allowed(&plain);
        assert!(names.contains(&"read".to_owned()) && !names.contains(&"clone".to_owned()));
        for denied in ["mount", "unshare", "setns", "bpf", "reboot", "init_module", "keyctl", "add_key", "kexec_load", "clock_settime"] {
            assert!(!names.contains(&denied.to_owned()), "{denied}");
        }
        let clone = plain.syscalls().as_ref().unwrap().iter().find(|rule| rule.names() == &["clone".to_owned()]).unwrap();
        assert_eq!(clone.args().as_ref().unwrap()[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);

        let admin = profile(&HashSet::from([Capability::SysAdmin, Capability::SysTime])).unwrap();
        let names = allowed(&admin);
        assert!(names.contains(&"mount".to_owned()) && names.contains(&"clone".to_owned()) && names.contains(&"clock_settime".to_owned()));
        assert!(
            !admin.syscalls().as_ref().unwrap().iter().any(|rule| rule.names() == &["clone3".to_owned()]),
            "clone3 allowed with SYS_ADMIN"
        );
    }
}
