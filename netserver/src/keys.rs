//! Secrets of the network server: the KEK files and the unwrapped network session keys.
//!
//! Secret files hold hex (as `joinserver init` writes them, mode 0600). A file readable by
//! "other" users is refused; one readable by its group is accepted with a warning. Errors name
//! the file and the problem, never the content.

use std::path::{Path, PathBuf};

use protocol::keys::{FNwkSIntKey, NwkSEncKey, NwkSKey, SNwkSIntKey};

/// The network session keys of a live session, in clear (memory only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkKeys {
    /// LoRaWAN 1.0.x: one key for integrity and FPort-0 encryption.
    V1_0(NwkSKey),
    /// LoRaWAN 1.1: three keys.
    V1_1 {
        /// Forwarding network session integrity key.
        f_nwk_s_int_key: FNwkSIntKey,
        /// Serving network session integrity key.
        s_nwk_s_int_key: SNwkSIntKey,
        /// Network session encryption key.
        nwk_s_enc_key: NwkSEncKey,
    },
}

/// A secret file could not be used. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is readable by other users.
    #[error("secret file {path} is readable by other users (mode {mode:o}); chmod 600 it")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not a key.
    #[error("secret file {path}: {reason}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong (no key material).
        reason: String,
    },
}

/// Reads a secret file and parses its trimmed content with `parse` (a key type's `FromStr`).
pub fn read_secret<T, E: std::fmt::Display>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, SecretFileError> {
    check_permissions(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = zeroize::Zeroizing::new(text);
    parse(text.trim()).map_err(|e| SecretFileError::Content {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(SecretFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    if mode & 0o070 != 0 {
        tracing::warn!(path = %path.display(), mode = format_args!("{mode:o}"), "secret file is readable by its group");
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), SecretFileError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::keys::Kek;

    #[test]
    fn reads_hex_key_files_and_checks_modes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ns.kek");
        std::fs::write(&p, "000102030405060708090a0b0c0d0e0f\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o604)).unwrap();
            let e = read_secret(&p, str::parse::<Kek>).unwrap_err();
            assert!(matches!(e, SecretFileError::Permissions { .. }), "{e}");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let k = read_secret(&p, str::parse::<Kek>).unwrap();
        assert_eq!(k.expose()[15], 0x0f);

        std::fs::write(&p, "000102030405060708090a0b0c0d0eZZ").unwrap();
        let e = read_secret(&p, str::parse::<Kek>).unwrap_err().to_string();
        assert!(e.contains("ns.kek") && !e.contains("0a0b"), "{e}");
        let e = read_secret(&dir.path().join("missing"), str::parse::<Kek>).unwrap_err();
        assert!(matches!(e, SecretFileError::Read { .. }));
    }
}
