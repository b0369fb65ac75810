//! Files only the server's user may read: the data directory (0700), its redb files and the
//! event file (0600; events hold decrypted payloads). Modes are set explicitly rather than left
//! to the umask; a directory or file that already exists with wider modes is narrowed.
//! Elsewhere than Unix these are plain creations.

use std::fs::{File, OpenOptions};
use std::path::Path;

/// Mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the store and event files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and its parents) if needed and makes it 0700.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    narrow(dir, DIR_MODE)
}

/// Creates `path` 0600 if it does not exist (empty, for a store that initialises an empty
/// file) and narrows it to 0600 if it exists wider, so it is never readable by others, not even
/// for a moment after its creation.
pub fn create_file(path: &Path) -> std::io::Result<()> {
    let mut o = OpenOptions::new();
    o.create(true).write(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, FILE_MODE);
    o.open(path)?;
    narrow(path, FILE_MODE)
}

/// Opens `path` for appending, creating it 0600 if needed and narrowing it if it exists.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, FILE_MODE);
    let f = o.open(path)?;
    narrow(path, FILE_MODE)?;
    Ok(f)
}

#[cfg(unix)]
fn narrow(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current != mode {
        tracing::warn!(path = %path.display(), from = format_args!("{current:o}"), to = format_args!("{mode:o}"), "narrowing permissions");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn narrow(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_directory_and_file_are_private_and_wide_ones_are_narrowed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/data");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an existing wide directory is narrowed");

        let events = dir.join("events.jsonl");
        open_append(&events).unwrap();
        assert_eq!(mode(&events), 0o600);
        std::fs::set_permissions(&events, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut f = open_append(&events).unwrap();
        std::io::Write::write_all(&mut f, b"x\n").unwrap();
        assert_eq!(mode(&events), 0o600);
        assert_eq!(
            std::fs::read(&events).unwrap(),
            b"x\n",
            "appended, not truncated"
        );

        let store = dir.join("new.redb");
        create_file(&store).unwrap();
        assert_eq!(mode(&store), 0o600, "a new store file is born private");
        let other = dir.join("lib.redb");
        std::fs::write(&other, b"kept").unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_file(&other).unwrap();
        assert_eq!(mode(&other), 0o600, "an existing wide file is narrowed");
        assert_eq!(std::fs::read(&other).unwrap(), b"kept", "not truncated");
    }
}
