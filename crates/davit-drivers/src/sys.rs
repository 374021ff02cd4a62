//! Thin, safe wrappers over the few Linux calls the exec driver needs: pidfds, signals, `setsid`,
//! user lookup and `/proc/<pid>/stat`. Every `unsafe` block of the crate outside `pre_exec` hooks lives here.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A process identity that survives pid reuse: the pid plus its start time
/// (field 22 of `/proc/<pid>/stat`, in clock ticks since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_time: u64,
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The one-letter state (`R`, `S`, `Z`, …).
    pub state: char,
    pub start_time: u64,
}

impl ProcStat {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Reads state and start time of `pid`; `Ok(None)` when there is no such process.
pub fn proc_stat(pid: u32) -> io::Result<Option<ProcStat>> {
    proc_stat_at(Path::new("/proc"), pid)
}

fn proc_stat_at(proc_root: &Path, pid: u32) -> io::Result<Option<ProcStat>> {
    let text = match std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        // ESRCH shows up when the process exits while the file is read.
        Err(error) if error.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(error) => return Err(error),
    };
    parse_proc_stat(&text)
        .map(Some)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unparsable /proc/{pid}/stat: {text:?}")))
}

/// Parses `pid (comm) S ppid … starttime …`. `comm` may contain spaces and parentheses, so fields
/// are counted from the last `)`.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After `comm`, `state` is field 3; `starttime` is field 22, i.e. 19 fields after `state`.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// True when `identity` still names a live (non-zombie) process, i.e. the pid was not reused.
pub fn is_alive(identity: ProcessIdentity) -> bool {
    matches!(proc_stat(identity.pid), Ok(Some(stat)) if stat.start_time == identity.start_time && !stat.is_zombie())
}

/// Opens a pidfd for `pid` (Linux ≥ 5.3). Works for any process, not only children.
/// `Ok(None)` when the process does not exist (any more).
pub fn pidfd_open(pid: u32) -> io::Result<Option<OwnedFd>> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let error = io::Error::last_os_error();
        return if error.raw_os_error() == Some(libc::ESRCH) { Ok(None) } else { Err(error) };
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Opens a pidfd for `identity` and checks (after opening, so the fd cannot refer to a successor
/// that reused the pid) that it is still the same, live process. `Ok(None)` when it is gone.
pub fn pidfd_open_identity(identity: ProcessIdentity) -> io::Result<Option<OwnedFd>> {
    let Some(pidfd) = pidfd_open(identity.pid)? else { return Ok(None) };
    Ok(is_alive(identity).then_some(pidfd))
}

/// Sends `signal` through a pidfd (no pid-reuse race). `Ok(false)` when the process already exited.
pub fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<bool> {
    // SAFETY: the fd is a valid pidfd we own; `info` may be null; flags must be 0.
    let result = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0) };
    if result == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) { Ok(false) } else { Err(error) }
}

/// `kill(pid, signal)`; `Ok(false)` when there is no such process.
pub fn kill(pid: u32, signal: i32) -> io::Result<bool> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    if pid <= 0 {
        // Never signal process groups or "every process" by accident.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill has no memory arguments; pid > 0 targets exactly one process.
    if unsafe { libc::kill(pid, signal) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) { Ok(false) } else { Err(error) }
}

/// Sends `signal` to every process of the process group `pgid`.
pub fn kill_process_group(pgid: u32, signal: i32) -> io::Result<bool> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    if pgid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill has no memory arguments; -pgid (pgid > 1) targets one process group.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) { Ok(false) } else { Err(error) }
}

/// Makes the calling process the leader of a new session (and process group), detached from any
/// controlling terminal. Fails with `EPERM` if it already leads a process group.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no arguments and only changes the caller's session.
    if unsafe { libc::setsid() } < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Maps `SIGTERM`, `TERM`, `sigterm` or `15` to the signal number.
pub fn signal_number(name: &str) -> Option<i32> {
    let trimmed = name.trim();
    if let Ok(number) = trimmed.parse::<i32>() {
        return (1..=64).contains(&number).then_some(number);
    }
    let upper = trimmed.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match bare {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "KILL" => libc::SIGKILL,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => return None,
    })
}

/// A user's uid and primary gid, from the passwd database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

/// Looks a user up by name (`getpwnam_r`); a purely numeric name is taken as a uid with gid = uid
/// unless the passwd database knows it.
pub fn lookup_user(name: &str) -> io::Result<UserIds> {
    let c_name = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: passwd is plain old data; all-zero is a valid (empty) value that getpwnam_r overwrites.
        let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the duration of the call; buffer.len() is its real size.
        let code = unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut passwd, buffer.as_mut_ptr().cast(), buffer.len(), &mut result) };
        if code == libc::ERANGE && buffer.len() < 1024 * 1024 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if code != 0 {
            return Err(io::Error::from_raw_os_error(code));
        }
        if result.is_null() {
            if let Ok(uid) = name.parse::<u32>() {
                return Ok(UserIds { uid, gid: uid });
            }
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no such user: {name}")));
        }
        return Ok(UserIds { uid: passwd.pw_uid, gid: passwd.pw_gid });
    }
}

/// Paths as C strings, prepared before a fork for [`enter_private_mount_namespace`].
pub fn c_paths(paths: &[std::path::PathBuf]) -> io::Result<Vec<std::ffi::CString>> {
    use std::os::unix::ffi::OsStrExt;
    paths.iter().map(|path| std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)).collect()
}

/// Moves the calling process into a new mount namespace that does not propagate back to the host, and detaches
/// `unmount` there. Does nothing when `unmount` is empty. Async-signal-safe (system calls only), for `pre_exec`.
pub fn enter_private_mount_namespace(unmount: &[std::ffi::CString]) -> io::Result<()> {
    if unmount.is_empty() {
        return Ok(());
    }
    // SAFETY: plain system calls; the path pointers come from live `CString`s and the other pointers are null
    // or static strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return Err(io::Error::last_os_error());
        }
        for path in unmount {
            if libc::umount2(path.as_ptr(), libc::MNT_DETACH) != 0 {
                let error = io::Error::last_os_error();
                // Already gone is what we want.
                if error.raw_os_error() != Some(libc::EINVAL) && error.raw_os_error() != Some(libc::ENOENT) {
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

/// `struct mount_attr` of `mount_setattr(2)` (not in the libc crate).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Whether this kernel has `mount_setattr(2)` (Linux 5.12 and later), which [`isolate_filesystem`] needs: a call
/// with no valid argument fails with `ENOSYS` only where the system call does not exist.
pub fn mount_setattr_available() -> bool {
    // SAFETY: an invalid descriptor, a null path and a null attribute of size 0: the kernel checks them and
    // fails (EBADF/EINVAL/EFAULT) without touching memory or any mount.
    let result =
        unsafe { libc::syscall(libc::SYS_mount_setattr, -1, std::ptr::null::<libc::c_char>(), 0, std::ptr::null::<MountAttr>(), 0) };
    result == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

/// Makes the mount at `path` and every mount below it read-only (`read_only`) or writable again; either way
/// set-uid bits and device files there stop working (`nosuid`, `nodev`), except under `/dev` (`devices`).
///
/// # Safety
/// Only a system call on the pointer of a live C string; async-signal-safe.
unsafe fn set_read_only(path: &std::ffi::CStr, read_only: bool, devices: bool) -> io::Result<()> {
    let hardening = MOUNT_ATTR_NOSUID | if devices { 0 } else { MOUNT_ATTR_NODEV };
    let attr = MountAttr {
        attr_set: hardening | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: (if read_only { 0 } else { MOUNT_ATTR_RDONLY }) | if devices { MOUNT_ATTR_NODEV } else { 0 },
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: see the function's contract; `attr` outlives the call and its size is passed.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Gives the calling process (a forked child before exec, still root) its own mount namespace in which the
/// host is read-only, `nosuid` and `nodev` except `writable` (each bind-mounted over itself, writable but still
/// `nosuid`/`nodev`), `/dev` keeps its devices but gets a private `/dev/shm`, and `/tmp` is a private tmpfs with
/// `tmp_options` (if given). Then changes to `cwd` again, so the working
/// directory is the writable mount and not the read-only one below it. Async-signal-safe: only system calls
/// on values prepared before fork.
pub fn isolate_filesystem(writable: &[std::ffi::CString], cwd: &std::ffi::CStr, tmp_options: Option<&std::ffi::CStr>) -> io::Result<()> {
    let check = |result: libc::c_int| if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    // SAFETY: plain system calls on pointers of live C strings (or null / static strings).
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
        set_read_only(c"/", true, false)?;
        set_read_only(c"/dev", false, true)?;
        // The host's /dev/shm is shared and world-writable: the task gets its own.
        check(libc::mount(
            c"tmpfs".as_ptr(),
            c"/dev/shm".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=1777,size=65536k".as_ptr().cast(),
        ))?;
        for path in writable {
            check(libc::mount(path.as_ptr(), path.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
            set_read_only(path, false, false)?;
        }
        if let Some(options) = tmp_options {
            check(libc::mount(
                c"tmpfs".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            ))?;
        }
        check(libc::chdir(cwd.as_ptr()))
    }
}

/// Joins the mount namespace `namespace_fd` refers to (a task's `/proc/<pid>/ns/mnt`) and changes to `cwd`
/// there. Async-signal-safe.
pub fn enter_mount_namespace(namespace_fd: std::os::fd::RawFd, cwd: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: plain system calls on an open fd and a live C string.
    unsafe {
        if libc::setns(namespace_fd, libc::CLONE_NEWNS) != 0 || libc::chdir(cwd.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Mounts an overlay filesystem at `target` with `options` (`lowerdir=…,upperdir=…,workdir=…`).
pub fn mount_overlay(target: &std::path::Path, options: &str) -> io::Result<()> {
    let target = c_paths(&[target.to_path_buf()])?.remove(0);
    let options = std::ffi::CString::new(options).map_err(io::Error::other)?;
    // SAFETY: all pointers come from live C strings.
    let result = unsafe {
        libc::mount(c"overlay".as_ptr(), target.as_ptr(), c"overlay".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, options.as_ptr().cast())
    };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Detaches the mount at `target` (lazily: busy mounts go once unused).
pub fn unmount(target: &std::path::Path) -> io::Result<()> {
    let target = c_paths(&[target.to_path_buf()])?.remove(0);
    // SAFETY: the pointer comes from a live C string.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_mount_setattr() {
        // Every machine davit is tested on runs Linux 5.12 or later; the probe must not mistake an invalid
        // argument for a missing system call.
        assert!(mount_setattr_available());
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let text = "1234 (we ird) (name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        let stat = parse_proc_stat(text).unwrap();
        assert_eq!(stat, ProcStat { state: 'S', start_time: 987654 });
    }

    #[test]
    fn own_process_is_alive() {
        let pid = std::process::id();
        let stat = proc_stat(pid).unwrap().unwrap();
        assert!(is_alive(ProcessIdentity { pid, start_time: stat.start_time }));
        assert!(!is_alive(ProcessIdentity { pid, start_time: stat.start_time + 1 }));
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("term"), Some(libc::SIGTERM));
        assert_eq!(signal_number("SIGKILL"), Some(9));
        assert_eq!(signal_number("SIGUSR2"), Some(libc::SIGUSR2));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(signal_number("0"), None);
    }

    #[test]
    fn looks_up_root() {
        assert_eq!(lookup_user("root").unwrap(), UserIds { uid: 0, gid: 0 });
        assert!(lookup_user("no-such-user-davit").is_err());
    }
}
