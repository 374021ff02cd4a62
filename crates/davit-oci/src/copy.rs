//! Copying an unpacked rootfs for kernels without overlayfs.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::unpack::{set_owner, set_times, unsafe_free_geteuid};

/// Copies the tree at `source` to `destination` (which must not exist), preserving file types, modes
/// (including setuid/setgid/sticky), ownership (when running as root), mtimes, symlinks (not followed) and
/// hardlinks between files inside the tree. FIFOs and device nodes are recreated; sockets are skipped.
///
/// The copy is made in a temporary sibling of `destination` and renamed into place, so a failed copy
/// leaves no `destination` behind.
pub fn copy_rootfs(source: &Path, destination: &Path) -> io::Result<()> {
    if fs::symlink_metadata(destination).is_ok() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} already exists", destination.display())));
    }
    let parent = destination.parent().ok_or_else(|| io::Error::other("destination has no parent directory"))?;
    let file_name = destination.file_name().ok_or_else(|| io::Error::other("destination has no file name"))?;
    let temporary = parent.join(format!(".{}.copying-{}", file_name.to_string_lossy(), std::process::id()));
    crate::unpack::remove_any(&temporary)?;
    let mut copier = Copier { is_root: unsafe_free_geteuid() == 0, hardlinks: HashMap::new() };
    let result = copier.copy_directory(source, &temporary).and_then(|()| fs::rename(&temporary, destination));
    if result.is_err() {
        let _ = crate::unpack::remove_any(&temporary);
    }
    result
}

struct Copier {
    is_root: bool,
    /// (device, inode) of a multiply-linked source file → the first copy made of it.
    hardlinks: HashMap<(u64, u64), PathBuf>,
}

impl Copier {
    fn copy_directory(&mut self, source: &Path, destination: &Path) -> io::Result<()> {
        let metadata = fs::symlink_metadata(source)?;
        fs::create_dir(destination)?;
        let mut children: Vec<_> = fs::read_dir(source)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|child| child.file_name());
        for child in children {
            self.copy_entry(&child.path(), &destination.join(child.file_name()))?;
        }
        self.copy_metadata(destination, &metadata)
    }

    fn copy_entry(&mut self, source: &Path, destination: &Path) -> io::Result<()> {
        let metadata = fs::symlink_metadata(source)?;
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            return self.copy_directory(source, destination);
        }
        if file_type.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(source)?, destination)?;
            set_owner(destination, metadata.uid().into(), metadata.gid().into(), self.is_root)?;
            return set_times(destination, mtime_of(&metadata));
        }
        if file_type.is_file() {
            if metadata.nlink() > 1 {
                let key = (metadata.dev(), metadata.ino());
                if let Some(first) = self.hardlinks.get(&key) {
                    return fs::hard_link(first, destination);
                }
                self.hardlinks.insert(key, destination.to_path_buf());
            }
            fs::copy(source, destination)?;
            return self.copy_metadata(destination, &metadata);
        }
        if file_type.is_fifo() || file_type.is_char_device() || file_type.is_block_device() {
            let path = CString::new(destination.as_os_str().as_bytes()).map_err(io::Error::other)?;
            let kind = if file_type.is_fifo() {
                libc::S_IFIFO
            } else if file_type.is_char_device() {
                libc::S_IFCHR
            } else {
                libc::S_IFBLK
            };
            // SAFETY: `path` is NUL-terminated and outlives the call.
            if unsafe { libc::mknod(path.as_ptr(), kind | 0o600, metadata.rdev()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            return self.copy_metadata(destination, &metadata);
        }
        tracing::debug!(path = %source.display(), "skipping socket while copying rootfs");
        Ok(())
    }

    fn copy_metadata(&self, destination: &Path, metadata: &fs::Metadata) -> io::Result<()> {
        // chown first: it clears setuid/setgid bits that chmod then restores.
        set_owner(destination, metadata.uid().into(), metadata.gid().into(), self.is_root)?;
        fs::set_permissions(destination, fs::Permissions::from_mode(metadata.mode() & 0o7777))?;
        set_times(destination, mtime_of(metadata))
    }
}

fn mtime_of(metadata: &fs::Metadata) -> libc::timespec {
    libc::timespec { tv_sec: metadata.mtime() as libc::time_t, tv_nsec: metadata.mtime_nsec() as _ }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_modes_links_and_times() {
        let sandbox = tempfile::tempdir().unwrap();
        let source = sandbox.path().join("source");
        fs::create_dir_all(source.join("bin")).unwrap();
        fs::write(source.join("bin/tool"), "tool").unwrap();
        fs::set_permissions(source.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(source.join("bin/tool"), source.join("bin/tool2")).unwrap();
        std::os::unix::fs::symlink("tool", source.join("bin/alias")).unwrap();
        std::os::unix::fs::symlink("/nowhere", source.join("dangling")).unwrap();
        fs::create_dir(source.join("tmp")).unwrap();
        fs::set_permissions(source.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        crate::unpack::set_mtime(&source.join("bin/tool"), 1_000_000).unwrap();

        let destination = sandbox.path().join("copy");
        copy_rootfs(&source, &destination).unwrap();
        let tool = fs::metadata(destination.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755);
        assert_eq!(tool.mtime(), 1_000_000);
        assert_eq!(tool.nlink(), 2);
        assert_eq!(fs::metadata(destination.join("bin/tool2")).unwrap().ino(), tool.ino());
        assert_eq!(fs::read_link(destination.join("bin/alias")).unwrap(), Path::new("tool"));
        assert_eq!(fs::read_link(destination.join("dangling")).unwrap(), Path::new("/nowhere"));
        assert_eq!(fs::metadata(destination.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
        assert_eq!(copy_rootfs(&source, &destination).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
    }
}
