//! Files the programs write whole or not at all: into a temporary file
//! beside the target (one file system, so the rename is atomic), synced,
//! then renamed over it. The temporary file is private (mode 0600), and so
//! is the result.

use std::io::{self, Write};
use std::path::Path;

/// The folder a file named by `path` goes in: `.` for a bare name.
pub fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Writes `bytes` to `path` atomically; `prefix` names the temporary file
/// meanwhile.
pub fn write_atomically(path: &Path, prefix: &str, bytes: &[u8]) -> io::Result<()> {
    let mut temp = tempfile::Builder::new().prefix(prefix).tempfile_in(folder_of(path))?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old").unwrap();
        write_atomically(&path, ".f.", b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(folder_of(Path::new("bare")), Path::new("."));
        assert_eq!(folder_of(&path), dir.path());
    }
}
