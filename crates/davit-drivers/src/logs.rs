//! Size-rotated log files: `<dir>/<task>.<stream>.N`, N increasing from 0.
//!
//! When the current file reaches `max_file_bytes` the writer opens `N+1` and deletes every file older than
//! the newest `max_files`. A new writer (task restart) appends to the newest existing file while it has room,
//! so numbering continues across restarts.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::LogRotation;

/// A [`Write`] that splits its output over rotated files. No single file ever exceeds `max_file_bytes`.
#[derive(Debug)]
pub struct RotatingWriter {
    dir: PathBuf,
    /// `<task>.<stream>`, e.g. `web.stdout`.
    base_name: String,
    max_files: u64,
    max_file_bytes: u64,
    index: u64,
    file: File,
    size: u64,
}

impl RotatingWriter {
    /// Opens (creating `dir` if needed) the stream `<base_name>.N` in `dir`.
    pub fn open(dir: &Path, base_name: &str, rotation: LogRotation) -> io::Result<RotatingWriter> {
        std::fs::create_dir_all(dir)?;
        let max_files = u64::from(rotation.max_files.max(1));
        let max_file_bytes = rotation.max_file_bytes.max(1);
        let newest = existing_indexes(dir, base_name)?.into_iter().max();
        let (index, file, size) = match newest {
            Some(index) => {
                let path = file_path(dir, base_name, index);
                let file = open_append(&path)?;
                let size = file.metadata()?.len();
                if size < max_file_bytes { (index, file, size) } else { (index + 1, create(&file_path(dir, base_name, index + 1))?, 0) }
            }
            None => (0, create(&file_path(dir, base_name, 0))?, 0),
        };
        let writer =
            RotatingWriter { dir: dir.to_path_buf(), base_name: base_name.to_owned(), max_files, max_file_bytes, index, file, size };
        writer.delete_old()?;
        Ok(writer)
    }

    /// The file currently written to.
    pub fn current_path(&self) -> PathBuf {
        file_path(&self.dir, &self.base_name, self.index)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.index += 1;
        self.file = create(&self.current_path())?;
        self.size = 0;
        self.delete_old()
    }

    fn delete_old(&self) -> io::Result<()> {
        let oldest_kept = (self.index + 1).saturating_sub(self.max_files);
        for index in existing_indexes(&self.dir, &self.base_name)? {
            if index < oldest_kept {
                match std::fs::remove_file(file_path(&self.dir, &self.base_name, index)) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }
}

impl Write for RotatingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.size >= self.max_file_bytes {
            self.rotate()?;
        }
        let room = usize::try_from(self.max_file_bytes - self.size).unwrap_or(usize::MAX);
        let written = self.file.write(&buf[..buf.len().min(room)])?;
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn file_path(dir: &Path, base_name: &str, index: u64) -> PathBuf {
    dir.join(format!("{base_name}.{index}"))
}

fn create(path: &Path) -> io::Result<File> {
    open_append(path)
}

/// Indexes of the existing `<base_name>.N` files.
fn existing_indexes(dir: &Path, base_name: &str) -> io::Result<Vec<u64>> {
    let prefix = format!("{base_name}.");
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(index) = name.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok()) {
            indexes.push(index);
        }
    }
    Ok(indexes)
}

/// Opens a log file to append to, never through a link (the log directory is out of tasks' reach; this is the
/// second line of defence).
fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options().create(true).append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().into_string().unwrap(), e.metadata().unwrap().len())
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn rotates_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = LogRotation { max_files: 3, max_file_bytes: 10 };
        let mut writer = RotatingWriter::open(dir.path(), "web.stdout", rotation).unwrap();
        for chunk in 0..9u8 {
            writer.write_all(&[b'a' + chunk; 5]).unwrap();
        }
        // 45 bytes: files 0..=4, 0 and 1 deleted.
        assert_eq!(files(dir.path()), vec![("web.stdout.2".into(), 10), ("web.stdout.3".into(), 10), ("web.stdout.4".into(), 5)]);
        assert_eq!(std::fs::read(dir.path().join("web.stdout.4")).unwrap(), b"iiiii");
        assert_eq!(std::fs::read(dir.path().join("web.stdout.3")).unwrap(), b"ggggghhhhh");
    }

    #[test]
    fn one_big_write_is_split() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = LogRotation { max_files: 2, max_file_bytes: 4 };
        let mut writer = RotatingWriter::open(dir.path(), "t.stderr", rotation).unwrap();
        writer.write_all(b"0123456789").unwrap();
        assert_eq!(files(dir.path()), vec![("t.stderr.1".into(), 4), ("t.stderr.2".into(), 2)]);
        assert_eq!(std::fs::read(dir.path().join("t.stderr.2")).unwrap(), b"89");
    }

    #[test]
    fn a_planted_link_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("t.stdout.0")).unwrap();
        let opened = RotatingWriter::open(dir.path(), "t.stdout", LogRotation::default()).and_then(|mut writer| writer.write_all(b"x"));
        assert!(opened.is_err(), "wrote through a link");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn reopening_continues_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = LogRotation { max_files: 5, max_file_bytes: 4 };
        RotatingWriter::open(dir.path(), "t.stdout", rotation).unwrap().write_all(b"abcdef").unwrap();
        let mut writer = RotatingWriter::open(dir.path(), "t.stdout", rotation).unwrap();
        assert_eq!(writer.current_path(), dir.path().join("t.stdout.1"));
        writer.write_all(b"gh").unwrap();
        RotatingWriter::open(dir.path(), "t.stdout", rotation).unwrap().write_all(b"i").unwrap();
        assert_eq!(files(dir.path()), vec![("t.stdout.0".into(), 4), ("t.stdout.1".into(), 4), ("t.stdout.2".into(), 1)]);
        // Other streams are left alone.
        assert!(RotatingWriter::open(dir.path(), "t.stdout.x", rotation).is_ok());
    }
}
