//! NoCloud seed images: a small FAT file system labelled `CIDATA` holding `meta-data`, `user-data` and
//! optionally `network-config`, which cloud-init (and the test guest's `/bin/cloud-init`) read on first boot.

use std::io::{self, Cursor, Write};
use std::path::Path;

/// The seed's size: small files only, FAT12 (the smallest volume `fatfs` formats comfortably).
const SEED_BYTES: usize = 1024 * 1024;

/// The files of one seed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedFiles {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: Option<String>,
}

/// Writes a raw vfat image with volume label `CIDATA` to `path` (replacing it).
pub fn write_seed_image(path: &Path, files: &SeedFiles) -> io::Result<()> {
    let total: usize = files.meta_data.len() + files.user_data.len() + files.network_config.as_ref().map_or(0, String::len);
    if total > SEED_BYTES / 2 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("cloud-init data too large ({total} bytes)")));
    }
    let mut disk = Cursor::new(vec![0u8; SEED_BYTES]);
    fatfs::format_volume(&mut disk, fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "))?;
    {
        let file_system = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
        let mut entries = vec![("meta-data", &files.meta_data), ("user-data", &files.user_data)];
        if let Some(network_config) = &files.network_config {
            entries.push(("network-config", network_config));
        }
        for (name, content) in entries {
            let mut file = file_system.root_dir().create_file(name)?;
            file.truncate()?;
            file.write_all(content.as_bytes())?;
            file.flush()?;
        }
        file_system.unmount()?;
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, disk.into_inner())?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn seed_holds_the_files_under_the_cidata_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let files = SeedFiles {
            meta_data: "instance-id: a1\nlocal-hostname: web\n".to_owned(),
            user_data: "#cloud-config\nhostname: web\n".to_owned(),
            network_config: None,
        };
        write_seed_image(&path, &files).unwrap();
        let image = std::fs::File::open(&path).unwrap();
        let file_system = fatfs::FileSystem::new(image, fatfs::FsOptions::new()).unwrap();
        assert_eq!(file_system.volume_label(), "CIDATA");
        let mut meta_data = String::new();
        file_system.root_dir().open_file("meta-data").unwrap().read_to_string(&mut meta_data).unwrap();
        assert_eq!(meta_data, files.meta_data);
        let names: Vec<String> = file_system.root_dir().iter().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(names, ["meta-data", "user-data"]);
    }
}
