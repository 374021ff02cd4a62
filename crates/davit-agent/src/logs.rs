//! Reading a task's rotated log files `<log_dir>/<task>.<stream>.<N>` (N = 0, 1, 2, …; the driver appends
//! to the highest N and starts N+1 when it is full; the oldest files may have been deleted) as one stream.
//!
//! Offsets count bytes from the start of the oldest file still kept. The reader never blocks: it returns
//! what is there now, and the caller polls again to follow.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A position in a task's log that can be advanced by reading.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    /// `<task>.<stream>`.
    base: String,
    /// Index N of the file being read.
    file: u64,
    /// Byte position within that file.
    position: u64,
    /// How many bytes there were after the starting point when the log was opened.
    left_at_open: u64,
    /// `Some(n)`: stop after `n` more bytes (see [`LogReader::until_opened_end`]).
    limit: Option<u64>,
}

impl LogReader {
    /// Opens the log of `task`'s `stream` at `offset` (negative: that many bytes before the end).
    /// An offset past the end starts at the end. No files yet: starts at the beginning of the first.
    pub fn open(dir: &Path, task: &str, stream: &str, offset: i64) -> io::Result<LogReader> {
        LogReader::open_at(dir, task, stream, |_, _, total| {
            Ok(if offset >= 0 { (offset as u64).min(total) } else { total.saturating_sub(offset.unsigned_abs()) })
        })
    }

    /// Opens the log of `task`'s `stream` at the start of its last `lines` lines (a last line without its
    /// newline counts), as `tail -n` does; fewer lines than that: at the start.
    pub fn open_last_lines(dir: &Path, task: &str, stream: &str, lines: u64) -> io::Result<LogReader> {
        LogReader::open_at(
            dir,
            task,
            stream,
            |base, files, total| {
                if lines == 0 { Ok(total) } else { last_lines_start(dir, base, files, total, lines) }
            },
        )
    }

    /// Opens the stream at the byte `start` picks from its files (listed once) and their total length.
    fn open_at(
        dir: &Path,
        task: &str,
        stream: &str,
        start: impl FnOnce(&str, &[LogFile], u64) -> io::Result<u64>,
    ) -> io::Result<LogReader> {
        let base = format!("{task}.{stream}");
        let files = list_files(dir, &base)?;
        let total: u64 = files.iter().map(|file| file.len).sum();
        let mut remaining = start(&base, &files, total)?;
        let first = files.first().map_or(0, |file| file.index);
        let left_at_open = total.saturating_sub(remaining);
        let mut reader = LogReader { dir: dir.to_path_buf(), base, file: first, position: 0, left_at_open, limit: None };
        for (position, file) in files.iter().enumerate() {
            let last = position + 1 == files.len();
            if remaining < file.len || last {
                reader.file = file.index;
                reader.position = remaining.min(file.len);
                break;
            }
            remaining -= file.len;
        }
        Ok(reader)
    }

    /// Reads no further than the log's end when it was opened, so that a one-off read (`--tail N`) shows
    /// what was there then and not lines written while it was being sent.
    pub fn until_opened_end(mut self) -> LogReader {
        self.limit = Some(self.left_at_open);
        self
    }

    /// Reads up to `max` bytes that are available now, moving on to newer files as older ones are done.
    /// Empty: nothing new (yet), or the limit of [`LogReader::until_opened_end`] is reached.
    pub fn read_available(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let max = match self.limit {
            Some(limit) => max.min(usize::try_from(limit).unwrap_or(usize::MAX)),
            None => max,
        };
        if max == 0 {
            return Ok(Vec::new());
        }
        let data = self.read_files(max)?;
        if let Some(limit) = &mut self.limit {
            *limit -= data.len() as u64;
        }
        Ok(data)
    }

    fn read_files(&mut self, max: usize) -> io::Result<Vec<u8>> {
        loop {
            let files = list_files(&self.dir, &self.base)?;
            let Some(current) = files.iter().find(|file| file.index == self.file) else {
                // Not created yet, or deleted by rotation before we read it all: go to the next newer file.
                match files.iter().find(|file| file.index > self.file) {
                    Some(newer) => {
                        self.file = newer.index;
                        self.position = 0;
                        continue;
                    }
                    None => return Ok(Vec::new()),
                }
            };
            // Checked before reading: once a newer file exists, the writer no longer appends to this one,
            // so reading this one to its end afterwards cannot miss anything.
            let newer = files.iter().find(|file| file.index > self.file).map(|file| file.index);
            if current.len < self.position {
                // Truncated or replaced: start over.
                self.position = 0;
            }
            let data = read_from(&self.path(self.file), self.position, max)?;
            if !data.is_empty() {
                self.position += data.len() as u64;
                return Ok(data);
            }
            match newer {
                Some(index) => {
                    self.file = index;
                    self.position = 0;
                }
                None => return Ok(Vec::new()),
            }
        }
    }

    fn path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{}.{index}", self.base))
    }
}

/// Where the last `lines` (≥ 1) lines of the stream made of `files` start: after the `lines`-th newline
/// before the end, the log's own final newline not counted (it ends the last line); 0 if there are fewer.
/// Reads backwards in chunks, only as far as needed.
fn last_lines_start(dir: &Path, base: &str, files: &[LogFile], total: u64, lines: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut newlines = 0;
    let mut last_byte = true;
    let mut file_start = total;
    for file in files.iter().rev() {
        file_start -= file.len;
        let path = dir.join(format!("{base}.{}", file.index));
        let mut chunk_end = file.len;
        while chunk_end > 0 {
            let chunk_start = chunk_end.saturating_sub(CHUNK);
            let chunk = read_from(&path, chunk_start, (chunk_end - chunk_start) as usize)?;
            for (position, byte) in chunk.iter().enumerate().rev() {
                if std::mem::take(&mut last_byte) && *byte == b'\n' {
                    continue;
                }
                if *byte == b'\n' {
                    newlines += 1;
                    if newlines == lines {
                        return Ok(file_start + chunk_start + position as u64 + 1);
                    }
                }
            }
            chunk_end = chunk_start;
        }
    }
    Ok(0)
}

#[derive(Clone, Copy, Debug)]
struct LogFile {
    index: u64,
    len: u64,
}

/// The files of one stream, oldest first. A missing directory holds no files.
fn list_files(dir: &Path, base: &str) -> io::Result<Vec<LogFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let prefix = format!("{base}.");
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(index) = name.to_str().and_then(|name| name.strip_prefix(&prefix)).and_then(|suffix| suffix.parse::<u64>().ok()) else {
            continue;
        };
        match entry.metadata() {
            Ok(metadata) => files.push(LogFile { index, len: metadata.len() }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        }
    }
    files.sort_by_key(|file| file.index);
    Ok(files)
}

fn read_from(path: &Path, position: u64, max: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    // A log file is never a link: refuse to read through one.
    let mut file = match File::options().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    file.seek(SeekFrom::Start(position))?;
    let mut data = Vec::new();
    file.take(max as u64).read_to_end(&mut data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write(dir: &Path, name: &str, data: &str) {
        std::fs::write(dir.join(name), data).unwrap();
    }

    #[test]
    fn a_planted_link_is_not_read_through() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "host secret\n").unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::os::unix::fs::symlink(&secret, logs.join("web.stdout.0")).unwrap();
        let read = LogReader::open(&logs, "web", "stdout", 0).and_then(|mut reader| reader.read_available(1 << 20));
        assert!(read.as_ref().is_err() || read.as_ref().is_ok_and(|data| data.is_empty()), "read through a link: {read:?}");
    }

    fn append(dir: &Path, name: &str, data: &str) {
        std::fs::OpenOptions::new().append(true).create(true).open(dir.join(name)).unwrap().write_all(data.as_bytes()).unwrap();
    }

    /// Everything available now, read in small pieces to cross file boundaries often.
    fn drain(reader: &mut LogReader) -> String {
        let mut out = Vec::new();
        loop {
            let chunk = reader.read_available(3).unwrap();
            if chunk.is_empty() {
                return String::from_utf8(out).unwrap();
            }
            out.extend(chunk);
        }
    }

    #[test]
    fn last_lines_across_rotated_files() {
        let dir = rotated_dir();
        for (lines, expected) in [(0, ""), (1, "cc\n"), (2, "bbbb\ncc\n"), (3, "aaaa\nbbbb\ncc\n"), (10, "aaaa\nbbbb\ncc\n")] {
            let mut reader = LogReader::open_last_lines(dir.path(), "web", "stdout", lines).unwrap();
            assert_eq!(drain(&mut reader), expected, "{lines} lines");
        }
        // A last line still being written counts as a line; empty lines count too.
        append(dir.path(), "web.stdout.3", "\nd");
        for (lines, expected) in [(1, "d"), (2, "\nd"), (3, "cc\n\nd")] {
            let mut reader = LogReader::open_last_lines(dir.path(), "web", "stdout", lines).unwrap();
            assert_eq!(drain(&mut reader), expected, "{lines} lines");
        }
        let mut reader = LogReader::open_last_lines(&dir.path().join("nope"), "web", "stdout", 3).unwrap();
        assert_eq!(drain(&mut reader), "");
    }

    #[test]
    fn a_one_off_read_ends_where_the_log_ended_when_it_was_opened() {
        let dir = rotated_dir();
        let mut reader = LogReader::open_last_lines(dir.path(), "web", "stdout", 2).unwrap().until_opened_end();
        let mut from_offset = LogReader::open(dir.path(), "web", "stdout", 5).unwrap().until_opened_end();
        // Written after opening, also into a new file: not part of these reads.
        append(dir.path(), "web.stdout.3", "dd\n");
        write(dir.path(), "web.stdout.4", "ee\n");
        assert_eq!(drain(&mut reader), "bbbb\ncc\n");
        assert_eq!(drain(&mut from_offset), "bbbb\ncc\n");
    }

    fn rotated_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        // File 0 was deleted by rotation; 1 and 2 are full, 3 is being written.
        write(dir.path(), "web.stdout.1", "aaaa\n");
        write(dir.path(), "web.stdout.2", "bbbb\n");
        write(dir.path(), "web.stdout.3", "cc\n");
        write(dir.path(), "web.stderr.1", "error\n");
        write(dir.path(), "other.stdout.1", "not mine\n");
        write(dir.path(), "web.stdout.tmp", "not a log file\n");
        dir
    }

    #[test]
    fn offsets_across_rotated_files() {
        let dir = rotated_dir();
        let cases: &[(i64, &str)] = &[
            (0, "aaaa\nbbbb\ncc\n"),
            (3, "a\nbbbb\ncc\n"),
            (5, "bbbb\ncc\n"),
            (7, "bb\ncc\n"),
            (10, "cc\n"),
            (13, ""),
            (1000, ""),
            (-3, "cc\n"),
            (-4, "\ncc\n"),
            (-9, "\nbbbb\ncc\n"),
            (-6, "bb\ncc\n"),
            (-1000, "aaaa\nbbbb\ncc\n"),
        ];
        for &(offset, expected) in cases {
            let mut reader = LogReader::open(dir.path(), "web", "stdout", offset).unwrap();
            assert_eq!(drain(&mut reader), expected, "offset {offset}");
        }
        let mut reader = LogReader::open(dir.path(), "web", "stderr", 0).unwrap();
        assert_eq!(drain(&mut reader), "error\n");
    }

    #[test]
    fn missing_files_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut reader = LogReader::open(&dir.path().join("nope"), "web", "stdout", -10).unwrap();
        assert_eq!(drain(&mut reader), "");
        let mut reader = LogReader::open(dir.path(), "web", "stdout", 0).unwrap();
        assert_eq!(drain(&mut reader), "");
        // The first file appears later.
        write(dir.path(), "web.stdout.0", "hello\n");
        assert_eq!(drain(&mut reader), "hello\n");
    }

    #[test]
    fn follow_picks_up_appends_and_new_files() {
        let dir = rotated_dir();
        let mut reader = LogReader::open(dir.path(), "web", "stdout", -3).unwrap();
        assert_eq!(drain(&mut reader), "cc\n");
        assert_eq!(drain(&mut reader), "");
        append(dir.path(), "web.stdout.3", "dd\n");
        assert_eq!(drain(&mut reader), "dd\n");
        // The writer finishes file 3 and rotates to 4.
        append(dir.path(), "web.stdout.3", "ee\n");
        write(dir.path(), "web.stdout.4", "ff\n");
        assert_eq!(drain(&mut reader), "ee\nff\n");
        append(dir.path(), "web.stdout.4", "gg\n");
        assert_eq!(drain(&mut reader), "gg\n");
    }

    #[test]
    fn follow_survives_deleted_files() {
        let dir = rotated_dir();
        let mut reader = LogReader::open(dir.path(), "web", "stdout", 0).unwrap();
        assert_eq!(reader.read_available(2).unwrap(), b"aa");
        // Rotation deleted the file being read and the next one: go on with the oldest kept.
        std::fs::remove_file(dir.path().join("web.stdout.1")).unwrap();
        std::fs::remove_file(dir.path().join("web.stdout.2")).unwrap();
        assert_eq!(drain(&mut reader), "cc\n");
    }
}
