//! Applying layer tarballs to a rootfs directory.
//!
//! The `tar` crate only reads entries; this module decides what each entry does to the tree:
//!
//! * Paths are normalised to rootfs-relative components. `..` anywhere is rejected, a leading `/` is dropped.
//! * Parent directories are resolved inside the rootfs as if it were `/`: an absolute symlink target restarts
//!   at the rootfs, a relative one that climbs above the rootfs is rejected. The last component of a path is
//!   never followed: whatever is there is replaced.
//! * Whiteouts (`.wh.<name>`) remove the lower entry; an opaque marker (`.wh..wh..opq`) removes everything in
//!   its directory that did not come from the current layer.
//! * Regular files, directories, symlinks, hardlinks (target resolved inside the rootfs) and FIFOs are created
//!   with the entry's mode, uid/gid (`lchown`, only when running as root) and mtime. Device nodes are skipped.

use std::collections::{HashSet, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// How many symlinks one path resolution may follow before it is considered a loop.
const MAX_SYMLINK_HOPS: usize = 64;

/// Why a layer could not be applied.
#[derive(Debug)]
pub(crate) enum UnpackError {
    /// An entry that must not be applied (path traversal, escaping symlink, bad hardlink).
    Unsafe {
        entry: String,
        reason: String,
    },
    Io(io::Error),
}

impl From<io::Error> for UnpackError {
    fn from(error: io::Error) -> UnpackError {
        UnpackError::Io(error)
    }
}

/// Opens a layer blob and returns a reader of the tar stream inside, sniffing gzip and zstd by magic bytes.
pub(crate) fn open_layer(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut file = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let magic = {
        use std::io::BufRead;
        let buffer = file.fill_buf()?;
        buffer[..buffer.len().min(4)].to_vec()
    };
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(file)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = ruzstd::decoding::StreamingDecoder::new(file).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(file))
    }
}

/// Applies one layer (an uncompressed tar stream) on top of `root`.
pub(crate) fn apply_layer(root: &Path, layer: impl Read) -> Result<(), UnpackError> {
    let is_root = unsafe_free_geteuid() == 0;
    let mut archive = tar::Archive::new(layer);
    // Paths touched by this layer: an opaque marker only hides what lower layers put in its directory.
    let mut from_this_layer: HashSet<PathBuf> = HashSet::new();
    // Directory mtimes are set after the layer, since creating children changes them.
    let mut directory_times: Vec<(PathBuf, u64)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw_path = entry.path_bytes().into_owned();
        let entry_name = String::from_utf8_lossy(&raw_path).into_owned();
        let unsafe_entry = |reason: &str| UnpackError::Unsafe { entry: entry_name.clone(), reason: reason.to_string() };
        let components = normalise(OsStr::from_bytes(&raw_path)).map_err(&unsafe_entry)?;
        let Some((name, parents)) = components.split_last() else {
            // The rootfs itself ("/" or "./"): keep the directory davit made.
            continue;
        };
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            let directory = resolve_directory(root, parents).map_err(|reason| unsafe_entry(&reason))?;
            let relative: PathBuf = parents.iter().collect();
            if directory.is_dir() {
                clear_lower_entries(&directory, &relative, &from_this_layer)?;
            }
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(unsafe_entry("whiteout of an invalid name"));
            }
            let directory = resolve_directory(root, parents).map_err(|reason| unsafe_entry(&reason))?;
            remove_any(&directory.join(OsStr::from_bytes(hidden)))?;
            continue;
        }
        let parent = resolve_directory(root, parents).map_err(|reason| unsafe_entry(&reason))?;
        create_directories(root, &parent)?;
        let target = parent.join(name);
        let relative: PathBuf = components.iter().collect();
        let header = entry.header();
        let mode = header.mode()? & 0o7777;
        let uid = header.uid()?;
        let gid = header.gid()?;
        let mtime = header.mtime().unwrap_or(0);
        match header.entry_type() {
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(metadata) if metadata.is_dir() => {}
                    Ok(_) => {
                        remove_any(&target)?;
                        fs::create_dir(&target)?;
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => fs::create_dir(&target)?,
                    Err(error) => return Err(error.into()),
                }
                set_owner(&target, uid, gid, is_root)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
                directory_times.push((target, mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                remove_any(&target)?;
                let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&target)?;
                io::copy(&mut entry, &mut file)?;
                drop(file);
                set_owner(&target, uid, gid, is_root)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
                set_mtime(&target, mtime)?;
            }
            EntryType::Symlink => {
                let link_target = entry.link_name_bytes().ok_or_else(|| unsafe_entry("symlink without a target"))?.into_owned();
                remove_any(&target)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link_target), &target)?;
                set_owner(&target, uid, gid, is_root)?;
                set_mtime(&target, mtime)?;
            }
            EntryType::Link => {
                let link_name = entry.link_name_bytes().ok_or_else(|| unsafe_entry("hardlink without a target"))?.into_owned();
                let link_components = normalise(OsStr::from_bytes(&link_name)).map_err(&unsafe_entry)?;
                let Some((link_file, link_parents)) = link_components.split_last() else {
                    return Err(unsafe_entry("hardlink to the rootfs itself"));
                };
                let source = resolve_directory(root, link_parents).map_err(|reason| unsafe_entry(&reason))?.join(link_file);
                match fs::symlink_metadata(&source) {
                    Ok(metadata) if metadata.is_dir() => return Err(unsafe_entry("hardlink to a directory")),
                    Ok(_) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        return Err(unsafe_entry("hardlink target does not exist in the rootfs"));
                    }
                    Err(error) => return Err(error.into()),
                }
                if source != target {
                    remove_any(&target)?;
                    // linkat(2) without AT_SYMLINK_FOLLOW: a symlink is linked itself, never followed.
                    fs::hard_link(&source, &target)?;
                }
            }
            EntryType::Fifo => {
                remove_any(&target)?;
                let path = CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
                // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
                if unsafe { libc::mkfifo(path.as_ptr(), 0o600) } != 0 {
                    return Err(io::Error::last_os_error().into());
                }
                set_owner(&target, uid, gid, is_root)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
                set_mtime(&target, mtime)?;
            }
            EntryType::Char | EntryType::Block => {
                tracing::debug!(entry = %entry_name, "skipping device node in layer");
                continue;
            }
            other => {
                tracing::debug!(entry = %entry_name, kind = ?other, "skipping unsupported tar entry");
                continue;
            }
        }
        from_this_layer.insert(relative);
    }
    for (directory, mtime) in directory_times.iter().rev() {
        // A later entry of the layer may have replaced the directory; then there is nothing to do.
        if fs::symlink_metadata(directory).is_ok_and(|metadata| metadata.is_dir()) {
            set_mtime(directory, *mtime)?;
        }
    }
    Ok(())
}

/// Splits a tar path into normal components. A leading `/` and `.` components are dropped; `..` is refused.
fn normalise(path: &OsStr) -> Result<Vec<OsString>, &'static str> {
    let mut components = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => components.push(name.to_os_string()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("path contains '..'"),
            Component::Prefix(_) => return Err("path has a prefix"),
        }
    }
    Ok(components)
}

/// Resolves directory components inside `root`, following symlinks as if `root` were `/`.
///
/// Returns a host path under `root` whose existing components are real directories (no symlinks). Components
/// that do not exist yet are kept as they are, for [`create_directories`]. Fails when a relative symlink climbs
/// above the rootfs or symlinks loop.
pub(crate) fn resolve_directory(root: &Path, components: &[OsString]) -> Result<PathBuf, String> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
    let mut hops = 0;
    while let Some(component) = pending.pop_front() {
        if component == ".." {
            if resolved.pop().is_none() {
                return Err("a symlink in the path points outside the rootfs".to_string());
            }
            continue;
        }
        if component == "." || component.is_empty() {
            continue;
        }
        let candidate: PathBuf =
            std::iter::once(root.as_os_str()).chain(resolved.iter().map(OsString::as_os_str)).collect::<PathBuf>().join(&component);
        match fs::symlink_metadata(&candidate) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err("too many levels of symlinks in the path".to_string());
                }
                let link = fs::read_link(&candidate).map_err(|error| error.to_string())?;
                if link.is_absolute() {
                    resolved.clear();
                }
                let mut expanded: Vec<OsString> = link
                    .components()
                    .filter_map(|part| match part {
                        Component::Normal(name) => Some(name.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
                    })
                    .collect();
                expanded.extend(pending.drain(..));
                pending = expanded.into();
            }
            Ok(metadata) if metadata.is_dir() => resolved.push(component),
            Ok(_) => return Err(format!("{} is not a directory", candidate.display())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => resolved.push(component),
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(std::iter::once(root.as_os_str()).chain(resolved.iter().map(OsString::as_os_str)).collect())
}

/// Creates the missing directories of `directory` (a result of [`resolve_directory`]) below `root`.
fn create_directories(root: &Path, directory: &Path) -> io::Result<()> {
    let relative = directory.strip_prefix(root).map_err(io::Error::other)?;
    let mut current = root.to_path_buf();
    for component in relative.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => return Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{} is not a directory", current.display()))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current)?;
                fs::set_permissions(&current, fs::Permissions::from_mode(0o755))?;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (file, symlink, or directory tree) without following a symlink there.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Removes the entries of `directory` (at `relative` in the rootfs) that the current layer did not create,
/// descending into directories the current layer did create.
fn clear_lower_entries(directory: &Path, relative: &Path, from_this_layer: &HashSet<PathBuf>) -> io::Result<()> {
    for child in fs::read_dir(directory)? {
        let child = child?;
        let child_relative = relative.join(child.file_name());
        if !from_this_layer.contains(&child_relative) {
            remove_any(&child.path())?;
        } else if child.file_type()?.is_dir() {
            clear_lower_entries(&child.path(), &child_relative, from_this_layer)?;
        }
    }
    Ok(())
}

/// `lchown` when running as root; an unprivileged unpack keeps the caller's ownership.
pub(crate) fn set_owner(path: &Path, uid: u64, gid: u64, is_root: bool) -> io::Result<()> {
    if !is_root {
        return Ok(());
    }
    let uid = u32::try_from(uid).map_err(io::Error::other)?;
    let gid = u32::try_from(gid).map_err(io::Error::other)?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Sets atime and mtime of `path` without following a symlink there.
pub(crate) fn set_mtime(path: &Path, seconds: u64) -> io::Result<()> {
    let seconds = libc::time_t::try_from(seconds).unwrap_or(libc::time_t::MAX);
    set_times(path, libc::timespec { tv_sec: seconds, tv_nsec: 0 })
}

pub(crate) fn set_times(path: &Path, time: libc::timespec) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let times = [time, time];
    // SAFETY: `c_path` is NUL-terminated and `times` holds the two timespecs utimensat reads; both outlive the call.
    let result = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if result != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

pub(crate) fn unsafe_free_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Builds a tar archive in memory from (path, kind) pairs.
    enum Item<'a> {
        File(&'a str, &'a str, u32),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Whiteout(&'a str),
    }

    fn layer(items: &[Item<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_600_000_000);
            let (path, data): (&str, &[u8]) = match item {
                Item::File(path, contents, mode) => {
                    header.set_entry_type(EntryType::Regular);
                    header.set_mode(*mode);
                    (path, contents.as_bytes())
                }
                Item::Dir(path) => {
                    header.set_entry_type(EntryType::Directory);
                    header.set_mode(0o755);
                    (path, b"")
                }
                Item::Symlink(path, target) | Item::Hardlink(path, target) => {
                    let kind = if matches!(item, Item::Symlink(..)) { EntryType::Symlink } else { EntryType::Link };
                    header.set_entry_type(kind);
                    header.set_mode(0o777);
                    header.set_size(0);
                    // set_link_name refuses '..' and absolute names; write the raw bytes as an attacker would.
                    let name = &mut header.as_old_mut().linkname;
                    name[..target.len()].copy_from_slice(target.as_bytes());
                    (path, b"")
                }
                Item::Whiteout(path) => {
                    header.set_entry_type(EntryType::Regular);
                    header.set_mode(0);
                    (path, b"")
                }
            };
            header.set_size(data.len() as u64);
            // Write the path raw too, so tests can build traversal attempts the builder would refuse.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn apply(root: &Path, items: &[Item<'_>]) -> Result<(), UnpackError> {
        apply_layer(root, layer(items).as_slice())
    }

    /// Lists the tree under `root` as sorted lines: `path kind [extra]`.
    fn listing(root: &Path) -> Vec<String> {
        fn walk(root: &Path, directory: &Path, lines: &mut Vec<String>) {
            let mut children: Vec<_> = fs::read_dir(directory).unwrap().map(|child| child.unwrap().path()).collect();
            children.sort();
            for child in children {
                let relative = child.strip_prefix(root).unwrap().display().to_string();
                let metadata = fs::symlink_metadata(&child).unwrap();
                if metadata.is_dir() {
                    lines.push(format!("{relative}/"));
                    walk(root, &child, lines);
                } else if metadata.file_type().is_symlink() {
                    lines.push(format!("{relative} -> {}", fs::read_link(&child).unwrap().display()));
                } else {
                    let contents = fs::read_to_string(&child).unwrap();
                    lines.push(format!("{relative} {:o} {contents:?} links={}", metadata.mode() & 0o7777, metadata.nlink()));
                }
            }
        }
        let mut lines = Vec::new();
        walk(root, root, &mut lines);
        lines
    }

    #[test]
    fn files_dirs_symlinks_hardlinks() {
        let root = tempfile::tempdir().unwrap();
        apply(
            root.path(),
            &[
                Item::Dir("./"),
                Item::Dir("bin/"),
                Item::File("bin/tool", "#!", 0o4755),
                Item::Symlink("bin/alias", "tool"),
                Item::Hardlink("bin/tool2", "bin/tool"),
                Item::File("/etc/conf", "a=1", 0o640),
            ],
        )
        .unwrap();
        assert_eq!(
            listing(root.path()),
            [
                "bin/",
                "bin/alias -> tool",
                "bin/tool 4755 \"#!\" links=2",
                "bin/tool2 4755 \"#!\" links=2",
                "etc/",
                "etc/conf 640 \"a=1\" links=1"
            ]
        );
        let mtime = fs::metadata(root.path().join("bin")).unwrap().mtime();
        assert_eq!(mtime, 1_600_000_000);
    }

    #[test]
    fn whiteouts_and_opaque_directories() {
        let root = tempfile::tempdir().unwrap();
        apply(
            root.path(),
            &[
                Item::File("etc/gone", "x", 0o644),
                Item::File("etc/kept", "x", 0o644),
                Item::File("data/old/a", "a", 0o644),
                Item::File("data/keep-not", "b", 0o644),
                Item::Dir("data/sub/"),
                Item::File("data/sub/lower", "l", 0o644),
            ],
        )
        .unwrap();
        apply(
            root.path(),
            &[
                Item::Whiteout("etc/.wh.gone"),
                Item::Dir("data/"),
                Item::Dir("data/sub/"),
                Item::File("data/sub/upper", "u", 0o644),
                Item::Whiteout("data/.wh..wh..opq"),
                Item::File("data/new", "n", 0o644),
                Item::Whiteout("missing/.wh.nothing"),
            ],
        )
        .unwrap();
        assert_eq!(
            listing(root.path()),
            ["data/", "data/new 644 \"n\" links=1", "data/sub/", "data/sub/upper 644 \"u\" links=1", "etc/", "etc/kept 644 \"x\" links=1"]
        );
    }

    #[test]
    fn replaces_entries_of_other_kinds() {
        let root = tempfile::tempdir().unwrap();
        apply(root.path(), &[Item::Dir("a/"), Item::File("a/x", "x", 0o644), Item::File("b", "b", 0o644), Item::Symlink("c", "/etc")])
            .unwrap();
        apply(root.path(), &[Item::File("a", "now a file", 0o600), Item::Dir("b/"), Item::File("c", "no longer a link", 0o644)]).unwrap();
        assert_eq!(listing(root.path()), ["a 600 \"now a file\" links=1", "b/", "c 644 \"no longer a link\" links=1"]);
    }

    #[test]
    fn symlinked_parents_resolve_inside_the_rootfs() {
        let root = tempfile::tempdir().unwrap();
        apply(
            root.path(),
            &[Item::Dir("usr/lib/"), Item::Symlink("lib", "usr/lib"), Item::Symlink("abs", "/usr"), Item::File("lib/libc.so", "c", 0o644)],
        )
        .unwrap();
        apply(root.path(), &[Item::File("abs/lib/libm.so", "m", 0o644)]).unwrap();
        assert!(root.path().join("usr/lib/libc.so").is_file());
        assert!(root.path().join("usr/lib/libm.so").is_file());
    }

    fn check_rejected(items: &[Item<'_>], expected_reason: &str) {
        let sandbox = tempfile::tempdir().unwrap();
        let root = sandbox.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        match apply(&root, items) {
            Err(UnpackError::Unsafe { reason, .. }) => assert!(reason.contains(expected_reason), "{reason}"),
            Err(UnpackError::Io(error)) => panic!("expected an unsafe-entry error, got {error}"),
            Ok(()) => panic!("expected an unsafe-entry error"),
        }
        let outside: Vec<_> = fs::read_dir(sandbox.path()).unwrap().map(|child| child.unwrap().file_name()).collect();
        assert_eq!(outside, [OsString::from("rootfs")], "nothing may be written next to the rootfs");
    }

    #[test]
    fn path_traversal_is_rejected() {
        check_rejected(&[Item::File("../x", "x", 0o644)], "'..'");
        check_rejected(&[Item::File("a/../../x", "x", 0o644)], "'..'");
        check_rejected(&[Item::Symlink("out", "../"), Item::File("out/x", "x", 0o644)], "outside the rootfs");
        check_rejected(&[Item::Symlink("out", "a/../../.."), Item::Dir("out/dir/")], "outside the rootfs");
        check_rejected(&[Item::Hardlink("passwd", "../etc/passwd")], "'..'");
        check_rejected(&[Item::Symlink("out", ".."), Item::Hardlink("passwd", "out/etc/passwd")], "outside the rootfs");
        check_rejected(&[Item::Hardlink("x", "missing")], "does not exist");
        check_rejected(&[Item::Symlink("loop", "loop"), Item::File("loop/x", "x", 0o644)], "too many levels");
        check_rejected(&[Item::Symlink("out", ".."), Item::Whiteout("out/.wh.x")], "outside the rootfs");
    }

    #[test]
    fn absolute_symlink_targets_stay_in_the_rootfs() {
        let sandbox = tempfile::tempdir().unwrap();
        let root = sandbox.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        let escape = format!("{}", sandbox.path().display());
        apply(&root, &[Item::Symlink("host", &escape), Item::File("host/x", "x", 0o644)]).unwrap();
        assert!(!sandbox.path().join("x").exists());
        assert!(root.join(escape.trim_start_matches('/')).join("x").is_file());
    }

    #[test]
    fn compressed_layers_are_sniffed() {
        let dir = tempfile::tempdir().unwrap();
        let tar_bytes = layer(&[Item::File("hello", "world", 0o644)]);
        let gz_path = dir.path().join("layer.gz");
        let mut encoder = flate2::write::GzEncoder::new(File::create(&gz_path).unwrap(), flate2::Compression::fast());
        io::Write::write_all(&mut encoder, &tar_bytes).unwrap();
        encoder.finish().unwrap();
        let zstd_path = dir.path().join("layer.zst");
        fs::write(&zstd_path, ruzstd::encoding::compress_to_vec(tar_bytes.as_slice(), ruzstd::encoding::CompressionLevel::Fastest))
            .unwrap();
        let tar_path = dir.path().join("layer.tar");
        fs::write(&tar_path, &tar_bytes).unwrap();
        for path in [gz_path, zstd_path, tar_path] {
            let root = dir.path().join(format!("root-{}", path.extension().unwrap().to_string_lossy()));
            fs::create_dir(&root).unwrap();
            apply_layer(&root, open_layer(&path).unwrap()).unwrap();
            assert_eq!(fs::read_to_string(root.join("hello")).unwrap(), "world", "{}", path.display());
        }
    }
}
