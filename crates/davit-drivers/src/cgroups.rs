//! Per-task cgroups on cgroup v1 (also "hybrid" hosts) and cgroup v2.
//!
//! The layout is detected at runtime from files under a configurable root (normally `/sys/fs/cgroup`):
//!
//! - **v2**: the root is a cgroup2 mount (`<root>/cgroup.controllers` exists and lists `cpu memory pids`).
//!   A task gets `<root>/davit/<alloc_id>.<task>`; the `davit` parent has `+cpu +memory +pids` in its
//!   `cgroup.subtree_control`.
//! - **v1 / hybrid**: v1 controllers are mounted at `<root>/<controller>` (a cgroup2 mount without controllers
//!   at `<root>/unified` is ignored). A task gets `<root>/<controller>/davit/<alloc_id>.<task>` for each of
//!   `memory`, `cpu`, `cpuacct` and `pids`.
//!
//! Detection and all operations only read and write files, so the v2 code path is unit-tested against a
//! fake directory tree. Interface files that a kernel may lack (`memory.memsw.*`, `memory.swap.max`,
//! `memory.oom.group`, `cgroup.kill`) are used when present.
//!
//! Invariant: a [`TaskCgroup`] only ever names directories below `<root>/…/davit/`; removing it never touches
//! the `davit` parents or anything outside them.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{TaskResources, TaskStats};

/// Where cgroup hierarchies are normally mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
/// The directory (in every hierarchy) that holds davit's task cgroups.
pub const PARENT_DIR: &str = "davit";
/// The CFS period used for CPU quotas, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// v1 controllers a task cgroup is created in.
pub const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
/// v2 controllers enabled for task cgroups.
pub const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// The key of the single directory of a v2 task cgroup in [`TaskCgroup::dirs`].
pub const V2_KEY: &str = "unified";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }

    pub fn parse(text: &str) -> Option<CgroupVersion> {
        match text {
            "v1" => Some(CgroupVersion::V1),
            "v2" => Some(CgroupVersion::V2),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroups under {root}: {reason}")]
    Unavailable { root: PathBuf, reason: String },
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{operation} {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path}: {content:?}")]
    Parse { path: PathBuf, content: String },
    #[error("processes {pids:?} of cgroup {path} survived SIGKILL for {waited:?}")]
    StillPopulated { path: PathBuf, pids: Vec<u32>, waited: Duration },
}

/// The cgroup hierarchy (or hierarchies) found under a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLayout {
    root: PathBuf,
    version: CgroupVersion,
}

/// The cgroup directories of one task: for v1 one per controller (keys `memory`, `cpu`, `cpuacct`, `pids`),
/// for v2 a single directory under the key [`V2_KEY`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskCgroup {
    version: CgroupVersion,
    dirs: BTreeMap<String, PathBuf>,
}

/// Limits applied to a task cgroup, derived from [`TaskResources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Hard memory limit; `None` = unlimited.
    pub memory_bytes: Option<u64>,
    /// CFS quota per [`CPU_PERIOD_US`]; `None` = unlimited.
    pub cpu_quota_us: Option<u64>,
    /// v1 `cpu.shares` (1024 = one core).
    pub cpu_shares: u64,
    /// v2 `cpu.weight` (1..=10000, 100 = default), converted from the shares like runc does.
    pub cpu_weight: u64,
}

impl CgroupLimits {
    pub fn from_resources(resources: TaskResources) -> CgroupLimits {
        let millicores = u64::from(resources.cpu_millicores);
        let memory_bytes = (resources.memory_mib > 0).then(|| u64::from(resources.memory_mib) * 1024 * 1024);
        // The kernel refuses quotas below 1 ms.
        let cpu_quota_us = (millicores > 0).then(|| (millicores * 100).max(1000));
        let cpu_shares = if millicores == 0 { 1024 } else { (millicores * 1024 / 1000).clamp(2, 262_144) };
        let cpu_weight = (1 + (cpu_shares - 2) * 9999 / 262_142).clamp(1, 10_000);
        CgroupLimits { memory_bytes, cpu_quota_us, cpu_shares, cpu_weight }
    }
}

impl CgroupLayout {
    /// Detects the layout under `root` (see the module docs). Fails when neither a v2 mount with the
    /// `cpu`, `memory` and `pids` controllers nor v1 `memory`, `cpu`, `cpuacct` and `pids` hierarchies exist.
    pub fn detect(root: &Path) -> Result<CgroupLayout, CgroupError> {
        let unavailable = |reason: String| CgroupError::Unavailable { root: root.to_path_buf(), reason };
        let controllers_file = root.join("cgroup.controllers");
        if controllers_file.exists() {
            let text = read_string(&controllers_file)?;
            let available: Vec<&str> = text.split_whitespace().collect();
            let missing: Vec<&str> = V2_CONTROLLERS.iter().copied().filter(|c| !available.contains(c)).collect();
            if !missing.is_empty() {
                return Err(unavailable(format!("cgroup v2 mount lacks controllers {missing:?} (has {available:?})")));
            }
            return Ok(CgroupLayout { root: root.to_path_buf(), version: CgroupVersion::V2 });
        }
        let missing: Vec<&str> = V1_CONTROLLERS.iter().copied().filter(|c| !root.join(c).join("cgroup.procs").exists()).collect();
        if missing.is_empty() {
            return Ok(CgroupLayout { root: root.to_path_buf(), version: CgroupVersion::V1 });
        }
        if missing.len() == V1_CONTROLLERS.len() {
            return Err(unavailable("neither a cgroup2 mount nor cgroup v1 controllers found".to_owned()));
        }
        Err(unavailable(format!("cgroup v1 controllers {missing:?} are not mounted")))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The cgroup name of a task: `<alloc_id>.<task>`.
    pub fn task_cgroup_name(alloc_id: &str, task_name: &str) -> String {
        format!("{alloc_id}.{task_name}")
    }

    /// Creates (or reuses, after a task restart) the task cgroup `name` and applies `limits`.
    pub fn create(&self, name: &str, limits: CgroupLimits) -> Result<TaskCgroup, CgroupError> {
        validate_name(name)?;
        let cgroup = match self.version {
            CgroupVersion::V1 => self.create_v1(name)?,
            CgroupVersion::V2 => self.create_v2(name)?,
        };
        if let Err(error) = cgroup.apply_limits(limits) {
            // Do not leave half-configured cgroups behind.
            let _ = cgroup.remove(Duration::from_secs(1));
            return Err(error);
        }
        Ok(cgroup)
    }

    /// Checks that task cgroups can be created here by creating and removing an empty one.
    pub fn probe(&self) -> Result<(), CgroupError> {
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let name = format!("probe-{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed));
        let cgroup = match self.version {
            CgroupVersion::V1 => self.create_v1(&name)?,
            CgroupVersion::V2 => self.create_v2(&name)?,
        };
        cgroup.remove(Duration::from_secs(1))
    }

    /// The task cgroup `name` as it would be created, without touching the file system.
    pub fn task_cgroup(&self, name: &str) -> TaskCgroup {
        let dirs = match self.version {
            CgroupVersion::V1 => V1_CONTROLLERS
                .iter()
                .map(|controller| (controller.to_string(), self.root.join(controller).join(PARENT_DIR).join(name)))
                .collect(),
            CgroupVersion::V2 => BTreeMap::from([(V2_KEY.to_owned(), self.root.join(PARENT_DIR).join(name))]),
        };
        TaskCgroup { version: self.version, dirs }
    }

    fn create_v1(&self, name: &str) -> Result<TaskCgroup, CgroupError> {
        let cgroup = self.task_cgroup(name);
        // With co-mounted controllers (`cpu,cpuacct`) two keys name one directory: AlreadyExists is fine.
        for dir in cgroup.dirs.values() {
            create_dir_all(dir)?;
        }
        Ok(cgroup)
    }

    fn create_v2(&self, name: &str) -> Result<TaskCgroup, CgroupError> {
        let wanted: Vec<String> = V2_CONTROLLERS.iter().map(|c| format!("+{c}")).collect();
        let wanted = wanted.join(" ");
        // The root must delegate the controllers to its children (systemd hosts already do).
        let root_subtree = self.root.join("cgroup.subtree_control");
        let enabled = read_string(&root_subtree).unwrap_or_default();
        if !V2_CONTROLLERS.iter().all(|c| enabled.split_whitespace().any(|e| e.trim_start_matches('+') == *c)) {
            write_file(&root_subtree, &wanted)?;
        }
        let parent = self.root.join(PARENT_DIR);
        create_dir(&parent)?;
        write_file(&parent.join("cgroup.subtree_control"), &wanted)?;
        let cgroup = self.task_cgroup(name);
        for dir in cgroup.dirs.values() {
            create_dir(dir)?;
        }
        Ok(cgroup)
    }
}

impl TaskCgroup {
    /// Rebuilds a task cgroup from what [`TaskCgroup::dirs`] returned earlier (e.g. persisted driver state).
    pub fn from_dirs(version: CgroupVersion, dirs: BTreeMap<String, PathBuf>) -> TaskCgroup {
        TaskCgroup { version, dirs }
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    pub fn dirs(&self) -> &BTreeMap<String, PathBuf> {
        &self.dirs
    }

    /// The same cgroup without some v1 `controllers` (a directory shared with a kept controller stays). A v2
    /// cgroup is one directory and stays whole.
    pub fn without(&self, controllers: &[String]) -> TaskCgroup {
        if self.version == CgroupVersion::V2 {
            return self.clone();
        }
        let dropped: Vec<&PathBuf> = self.dirs.iter().filter(|(key, _)| controllers.contains(key)).map(|(_, dir)| dir).collect();
        let dirs = self.dirs.iter().filter(|(_, dir)| !dropped.contains(dir)).map(|(key, dir)| (key.clone(), dir.clone())).collect();
        TaskCgroup { version: self.version, dirs }
    }

    /// The files a process writes `0` into to join the cgroup (one per distinct directory).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.unique_dirs().into_iter().map(|dir| dir.join("cgroup.procs")).collect()
    }

    /// Writes the limits into the interface files.
    pub fn apply_limits(&self, limits: CgroupLimits) -> Result<(), CgroupError> {
        match self.version {
            CgroupVersion::V1 => {
                let memory = self.dir("memory")?;
                let memory_value = limits.memory_bytes.map_or_else(|| "-1".to_owned(), |b| b.to_string());
                let memsw = memory.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    // memsw must stay ≥ limit_in_bytes: lift it first, then set both (works on reuse too).
                    write_file(&memsw, "-1")?;
                    write_file(&memory.join("memory.limit_in_bytes"), &memory_value)?;
                    write_file(&memsw, &memory_value)?;
                } else {
                    write_file(&memory.join("memory.limit_in_bytes"), &memory_value)?;
                }
                let cpu = self.dir("cpu")?;
                write_file(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                let quota = limits.cpu_quota_us.map_or_else(|| "-1".to_owned(), |q| q.to_string());
                write_file(&cpu.join("cpu.cfs_quota_us"), &quota)?;
                write_file(&cpu.join("cpu.shares"), &limits.cpu_shares.to_string())?;
            }
            CgroupVersion::V2 => {
                let dir = self.dir(V2_KEY)?;
                let memory_value = limits.memory_bytes.map_or_else(|| "max".to_owned(), |b| b.to_string());
                write_file(&dir.join("memory.max"), &memory_value)?;
                // Absent without swap accounting; a fake tree gets the file.
                write_optional(&dir.join("memory.swap.max"), "0");
                // Kill the whole task on OOM rather than one random process of it.
                write_optional(&dir.join("memory.oom.group"), "1");
                let quota = limits.cpu_quota_us.map_or_else(|| "max".to_owned(), |q| q.to_string());
                write_file(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write_file(&dir.join("cpu.weight"), &limits.cpu_weight.to_string())?;
            }
        }
        Ok(())
    }

    /// How many processes the kernel OOM killer killed in this cgroup.
    pub fn oom_kill_count(&self) -> Result<u64, CgroupError> {
        let file = match self.version {
            CgroupVersion::V1 => self.dir("memory")?.join("memory.oom_control"),
            CgroupVersion::V2 => self.dir(V2_KEY)?.join("memory.events"),
        };
        let text = read_string(&file)?;
        Ok(keyed_value(&text, "oom_kill").unwrap_or(0))
    }

    /// Memory in use (including page cache charged to the task) and CPU time consumed.
    pub fn stats(&self) -> Result<TaskStats, CgroupError> {
        match self.version {
            CgroupVersion::V1 => {
                let memory_bytes = read_u64(&self.dir("memory")?.join("memory.usage_in_bytes"))?;
                let cpu_usage_ns = read_u64(&self.dir("cpuacct")?.join("cpuacct.usage"))?;
                Ok(TaskStats { cpu_usage_ns, memory_bytes })
            }
            CgroupVersion::V2 => {
                let dir = self.dir(V2_KEY)?;
                let memory_bytes = read_u64(&dir.join("memory.current"))?;
                let cpu_stat_file = dir.join("cpu.stat");
                let cpu_stat = read_string(&cpu_stat_file)?;
                let usage_usec =
                    keyed_value(&cpu_stat, "usage_usec").ok_or(CgroupError::Parse { path: cpu_stat_file, content: cpu_stat })?;
                Ok(TaskStats { cpu_usage_ns: usage_usec.saturating_mul(1000), memory_bytes })
            }
        }
    }

    /// The processes in the cgroup (union over all directories). A removed cgroup has none.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        for procs in self.procs_files() {
            let text = match std::fs::read_to_string(&procs) {
                Ok(text) => text,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Io { operation: "reading", path: procs, source }),
            };
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let pid = line.trim().parse().map_err(|_| CgroupError::Parse { path: procs.clone(), content: text.clone() })?;
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        Ok(pids)
    }

    /// Kills every process in the cgroup and waits (up to `timeout`) until it is empty.
    /// v2 uses `cgroup.kill` when the kernel has it; otherwise every listed pid gets SIGKILL, repeatedly,
    /// so that processes forked meanwhile die too.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let started = Instant::now();
        if self.version == CgroupVersion::V2 {
            let kill_file = self.dir(V2_KEY)?.join("cgroup.kill");
            if kill_file.exists() {
                write_optional(&kill_file, "1");
            }
        }
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                let path = self.unique_dirs().into_iter().next().unwrap_or_default();
                return Err(CgroupError::StillPopulated { path, pids, waited: started.elapsed() });
            }
            for pid in pids {
                // A pid listed a moment ago may have exited already; that is the goal anyway.
                let _ = crate::sys::kill(pid, libc::SIGKILL);
            }
            // Killed processes leave the cgroup asynchronously and there is no portable event for it on v1.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills what is left in the cgroup and removes its directories. Idempotent.
    pub fn remove(&self, timeout: Duration) -> Result<(), CgroupError> {
        let started = Instant::now();
        self.kill_all(timeout)?;
        for dir in self.unique_dirs() {
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                    // Exiting processes can keep the cgroup busy for a moment after they left cgroup.procs.
                    Err(error) if error.raw_os_error() == Some(libc::EBUSY) && started.elapsed() < timeout => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(source) => return Err(CgroupError::Io { operation: "removing", path: dir, source }),
                }
            }
        }
        Ok(())
    }

    fn dir(&self, key: &str) -> Result<&PathBuf, CgroupError> {
        self.dirs.get(key).ok_or_else(|| CgroupError::Unavailable {
            root: self.dirs.values().next().cloned().unwrap_or_default(),
            reason: format!("task cgroup has no {key} directory"),
        })
    }

    /// Distinct directories: co-mounted v1 controllers (`cpu,cpuacct`) reach one directory by two paths.
    fn unique_dirs(&self) -> Vec<PathBuf> {
        let mut seen: Vec<PathBuf> = Vec::new();
        let mut unique = Vec::new();
        for dir in self.dirs.values() {
            let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            if !seen.contains(&canonical) {
                seen.push(canonical);
                unique.push(dir.clone());
            }
        }
        unique
    }
}

fn validate_name(name: &str) -> Result<(), CgroupError> {
    let invalid = |reason| Err(CgroupError::InvalidName { name: name.to_owned(), reason });
    if name.is_empty() || name == "." || name == ".." {
        return invalid("empty or a relative path component");
    }
    if name.contains('/') || name.contains('\0') {
        return invalid("contains '/' or NUL");
    }
    if name.starts_with("cgroup.") || name.starts_with("memory.") || name.starts_with("cpu.") {
        return invalid("clashes with cgroup interface file names");
    }
    Ok(())
}

/// Finds `key N` on its own line (`memory.oom_control`, `memory.events`, `cpu.stat`).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(key)).then(|| parts.next()?.parse().ok()).flatten()
    })
}

fn read_string(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Io { operation: "reading", path: path.to_path_buf(), source })
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read_string(path)?;
    text.trim().parse().map_err(|_| CgroupError::Parse { path: path.to_path_buf(), content: text })
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Io { operation: "writing", path: path.to_path_buf(), source })
}

fn write_optional(path: &Path, value: &str) {
    if let Err(error) = std::fs::write(path, value) {
        tracing::debug!(path = %path.display(), %error, "optional cgroup file not written");
    }
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Io { operation: "creating", path: path.to_path_buf(), source }),
    }
}

fn create_dir_all(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError::Io { operation: "creating", path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// A fake cgroup2 mount: only the files the kernel would have at the root.
    fn fake_v2_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma misc\n").unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        std::fs::write(root.path().join("cgroup.procs"), "1\n").unwrap();
        root
    }

    #[test]
    fn limits_from_resources() {
        let limits = CgroupLimits::from_resources(TaskResources { cpu_millicores: 500, memory_mib: 256 });
        assert_eq!(limits, CgroupLimits { memory_bytes: Some(256 << 20), cpu_quota_us: Some(50_000), cpu_shares: 512, cpu_weight: 20 });
        let tiny = CgroupLimits::from_resources(TaskResources { cpu_millicores: 1, memory_mib: 0 });
        assert_eq!(tiny.cpu_quota_us, Some(1000));
        assert_eq!(tiny.cpu_shares, 2);
        assert_eq!(tiny.cpu_weight, 1);
        assert_eq!(tiny.memory_bytes, None);
        let four_cores = CgroupLimits::from_resources(TaskResources { cpu_millicores: 4000, memory_mib: 1 });
        assert_eq!(four_cores.cpu_quota_us, Some(400_000));
        assert_eq!(four_cores.cpu_shares, 4096);
    }

    #[test]
    fn detects_nothing_in_an_empty_dir() {
        let root = tempfile::tempdir().unwrap();
        let error = CgroupLayout::detect(root.path()).unwrap_err();
        assert!(matches!(error, CgroupError::Unavailable { .. }), "{error}");
    }

    #[test]
    fn v2_without_memory_controller_is_unavailable() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu pids\n").unwrap();
        let error = CgroupLayout::detect(root.path()).unwrap_err().to_string();
        assert!(error.contains("memory"), "{error}");
    }

    #[test]
    fn detects_fake_v1() {
        let root = tempfile::tempdir().unwrap();
        for controller in V1_CONTROLLERS {
            std::fs::create_dir(root.path().join(controller)).unwrap();
            std::fs::write(root.path().join(controller).join("cgroup.procs"), "").unwrap();
        }
        // Hybrid hosts also have a controller-less cgroup2 mount; it must not be mistaken for v2.
        std::fs::create_dir(root.path().join("unified")).unwrap();
        std::fs::write(root.path().join("unified").join("cgroup.controllers"), "").unwrap();
        assert_eq!(CgroupLayout::detect(root.path()).unwrap().version(), CgroupVersion::V1);
    }

    #[test]
    fn v2_layout_in_a_fake_tree() {
        let root = fake_v2_root();
        let layout = CgroupLayout::detect(root.path()).unwrap();
        assert_eq!(layout.version(), CgroupVersion::V2);

        let name = CgroupLayout::task_cgroup_name("a1b2", "web");
        let limits = CgroupLimits::from_resources(TaskResources { cpu_millicores: 250, memory_mib: 32 });
        let cgroup = layout.create(&name, limits).unwrap();
        let dir = root.path().join("davit/a1b2.web");
        assert_eq!(cgroup.dirs(), &BTreeMap::from([(V2_KEY.to_owned(), dir.clone())]));
        assert_eq!(cgroup.procs_files(), vec![dir.join("cgroup.procs")]);

        assert_eq!(read(&root.path().join("cgroup.subtree_control")), "+cpu +memory +pids");
        assert_eq!(read(&root.path().join("davit/cgroup.subtree_control")), "+cpu +memory +pids");
        assert_eq!(read(&dir.join("memory.max")), (32u64 << 20).to_string());
        assert_eq!(read(&dir.join("memory.swap.max")), "0");
        assert_eq!(read(&dir.join("memory.oom.group")), "1");
        assert_eq!(read(&dir.join("cpu.max")), "25000 100000");
        assert_eq!(read(&dir.join("cpu.weight")), "10");

        // What the kernel would report.
        std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n").unwrap();
        std::fs::write(dir.join("memory.current"), "4096000\n").unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        assert_eq!(cgroup.oom_kill_count().unwrap(), 1);
        assert_eq!(cgroup.stats().unwrap(), TaskStats { cpu_usage_ns: 1_500_000, memory_bytes: 4_096_000 });
        assert_eq!(cgroup.pids().unwrap(), Vec::<u32>::new());
        cgroup.kill_all(Duration::from_millis(100)).unwrap();
        assert!(!dir.join("cgroup.kill").exists(), "cgroup.kill is only written when the kernel provides it");

        // Reusing the cgroup (task restart) rewrites the limits.
        let bigger = CgroupLimits::from_resources(TaskResources { cpu_millicores: 2000, memory_mib: 64 });
        let again = layout.create(&name, bigger).unwrap();
        assert_eq!(again, cgroup);
        assert_eq!(read(&dir.join("cpu.max")), "200000 100000");

        // On cgroupfs the interface files vanish with rmdir; a fake tree has to drop them first.
        for entry in std::fs::read_dir(&dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        cgroup.remove(Duration::from_millis(100)).unwrap();
        assert!(!dir.exists());
        assert!(root.path().join("davit").exists(), "the shared parent stays");
        cgroup.remove(Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn v2_cgroup_kill_is_used_when_present() {
        let root = fake_v2_root();
        let layout = CgroupLayout::detect(root.path()).unwrap();
        let cgroup = layout.task_cgroup("x.y");
        let dir = root.path().join("davit/x.y");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.kill"), "").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        cgroup.kill_all(Duration::from_millis(100)).unwrap();
        assert_eq!(read(&dir.join("cgroup.kill")), "1");
    }

    #[test]
    fn rejects_bad_names() {
        let root = fake_v2_root();
        let layout = CgroupLayout::detect(root.path()).unwrap();
        let limits = CgroupLimits::from_resources(TaskResources { cpu_millicores: 100, memory_mib: 10 });
        for name in ["", "..", "a/b", "cgroup.procs"] {
            assert!(matches!(layout.create(name, limits), Err(CgroupError::InvalidName { .. })), "{name:?}");
        }
    }

    #[test]
    fn keyed_values() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(oom_control, "oom_kill"), Some(3));
        assert_eq!(keyed_value(oom_control, "oom"), None);
    }
}
