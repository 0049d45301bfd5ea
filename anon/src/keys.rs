//! Secure mode's local files: private key files (mode 0600), allow lists of
//! client keys, and the key log (`ANON_KEYLOG`).
//!
//! The formats are the core's ([`StaticSecret::to_file_text`],
//! [`parse_allow_list`]); this module only adds what files need: creating
//! them private, refusing to overwrite, and warning about loose modes.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anon_proto::secure::{KeyError, PublicKey, StaticSecret, parse_allow_list};
use rand::SeedableRng;
use rand::rngs::StdRng;
use zeroize::Zeroizing;

/// Why a key file or allow list could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It could not be read, created or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `keygen` without `--force` found a file there.
    #[error("{} exists; not overwritten (--force replaces it)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// It holds no usable private key.
    #[error("{}: {source}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: KeyError,
    },
    /// A line of an allow list is not a public key.
    #[error("{} line {line}: {source}", path.display())]
    BadAllowList {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        source: KeyError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io { path: path.to_path_buf(), source }
}

/// A new key pair from the operating system's randomness.
pub fn generate() -> StaticSecret {
    StaticSecret::generate(&mut StdRng::from_os_rng())
}

/// Options for a new private file: owner read and write only (the umask
/// can only take bits away).
fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Writes a new key to `path` (mode 0600). An existing file is an error
/// unless `force`, which replaces it atomically (a private temporary file
/// beside it, renamed over it), so that a reader never sees half a key and
/// the new file is 0600 whatever the old one's mode was.
pub fn write_new_key(path: &Path, force: bool) -> Result<StaticSecret, KeyFileError> {
    let key = generate();
    let text = key.to_file_text();
    if !force {
        let mut file = private_options().open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                KeyFileError::Exists { path: path.to_path_buf() }
            } else {
                KeyFileError::Io { path: path.to_path_buf(), source: e }
            }
        })?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(io_err(path))?;
        return Ok(key);
    }
    // The temporary file, and so the key file, has mode 0600.
    crate::files::write_atomically(path, ".anon-key.", text.as_bytes()).map_err(io_err(path))?;
    Ok(key)
}

/// Reads the private key in `path`; warns on stderr when the file is
/// readable by others than its owner.
pub fn read_key(path: &Path) -> Result<StaticSecret, KeyFileError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    warn_if_not_private(path, &file);
    // The key's text is erased once parsed.
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(io_err(path))?;
    StaticSecret::from_file_text(&text).map_err(|source| KeyFileError::BadKey { path: path.to_path_buf(), source })
}

/// The key in `path`, or a new one written there (mode 0600) when there is
/// no file; says whether it was created.
pub fn read_or_create_key(path: &Path) -> Result<(StaticSecret, bool), KeyFileError> {
    match write_new_key(path, false) {
        Ok(key) => Ok((key, true)),
        // Already there (or made meanwhile by another process): read it.
        Err(KeyFileError::Exists { .. }) => read_key(path).map(|k| (k, false)),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn warn_if_not_private(path: &Path, file: &std::fs::File) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata() {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "key file {} is open to others than its owner (mode {mode:04o}); anyone who reads it can \
                 impersonate this key: chmod 600 it",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_not_private(_: &Path, _: &std::fs::File) {}

/// Reads an allow list: one client public key per line.
pub fn read_allow_list(path: &Path) -> Result<HashSet<PublicKey>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let keys = parse_allow_list(&text).map_err(|(line, source)| KeyFileError::BadAllowList {
        path: path.to_path_buf(),
        line,
        source,
    })?;
    Ok(keys.into_iter().collect())
}

/// Appends a key log line to `path` (created with mode 0600), as browsers
/// do with SSLKEYLOGFILE. A failure is reported and otherwise ignored: the
/// key log is a debugging aid, not part of the transfer.
pub fn append_key_log(path: &Path, line: &str) {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = options.open(path).and_then(|mut f| {
        let mut text = Zeroizing::new(String::with_capacity(line.len() + 1));
        text.push_str(line);
        text.push('\n');
        // One write call: lines of clients sharing the file do not mix.
        f.write_all(text.as_bytes())
    });
    if let Err(e) = result {
        tracing::warn!("cannot write the key log {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_keys_are_private_and_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = write_new_key(&path, false).unwrap();
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read_key(&path).unwrap().public(), key.public());
        assert!(matches!(write_new_key(&path, false), Err(KeyFileError::Exists { .. })));
        assert_eq!(read_key(&path).unwrap().public(), key.public(), "untouched");
        let again = write_new_key(&path, true).unwrap();
        assert_ne!(again.public(), key.public());
        assert_eq!(read_key(&path).unwrap().public(), again.public());
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        let (same, created) = read_or_create_key(&path).unwrap();
        assert!(!created);
        assert_eq!(same.public(), again.public());
    }

    #[test]
    fn bad_files_say_which_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "# nothing\n").unwrap();
        let e = read_key(&path).unwrap_err().to_string();
        assert!(e.contains("no key in the file") && e.contains("key"), "{e}");
        let list = dir.path().join("allow");
        std::fs::write(&list, format!("{}\n\nnonsense\n", generate().public())).unwrap();
        let e = read_allow_list(&list).unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn key_log_lines_are_appended_to_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keylog");
        append_key_log(&path, "ANON_SECURE a");
        append_key_log(&path, "ANON_SECURE b");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ANON_SECURE a\nANON_SECURE b\n");
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
    }
}
