//! Secrets of the network server: the KEK files and the unwrapped network session keys.
//!
//! Secret files hold hex (as `joinserver init` writes them, mode 0600). A file readable by
//! "other" users is refused; one readable by its group is accepted with a warning. Errors name
//! the file and the problem, never the content.

use std::path::{Path, PathBuf};

use protocol::keys::{FNwkSIntKey, Key128, NwkSEncKey, NwkSKey, SNwkSIntKey};
pub use protocol::keywrap::LabeledKek;
use protocol::keywrap::{KeyEnvelope, KeyWrapError};

use protocol::data::NetworkSessionKeys;
use protocol::ts002::NetworkKeys as StoredNetworkKeys;

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

/// A network key envelope could not be opened. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The envelope is wrapped under a KEK this server does not have.
    #[error("{role} is wrapped under KEK {label:?}, not this server's KEK")]
    UnknownKek {
        /// The key role.
        role: &'static str,
        /// The envelope's KEKLabel.
        label: String,
    },
    /// Unwrapping failed (wrong KEK, altered data, wrong length).
    #[error("{role}: {source}")]
    Unwrap {
        /// The key role.
        role: &'static str,
        /// The cause.
        source: KeyWrapError,
    },
}

impl EnvelopeError {
    /// Stable metric label.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::UnknownKek { .. } => "unknown_kek",
            Self::Unwrap { .. } => "unwrap_failed",
        }
    }
}

/// Opens an envelope addressed to this network server: in clear when `KEKLabel` is empty,
/// unwrapped with `ns_kek` when the label is its label, refused otherwise.
pub fn open_envelope<K: Key128>(
    env: &KeyEnvelope,
    ns_kek: &LabeledKek,
) -> Result<K, EnvelopeError> {
    let kek = if env.kek_label.is_empty() {
        None
    } else if env.kek_label == ns_kek.label {
        Some(&ns_kek.key)
    } else {
        return Err(EnvelopeError::UnknownKek {
            role: K::ROLE,
            label: env.kek_label.clone(),
        });
    };
    env.open(kek).map_err(|source| EnvelopeError::Unwrap {
        role: K::ROLE,
        source,
    })
}

impl NetworkKeys {
    /// Opens stored or received network key envelopes.
    pub fn open(stored: &StoredNetworkKeys, ns_kek: &LabeledKek) -> Result<Self, EnvelopeError> {
        Ok(match stored {
            StoredNetworkKeys::V1_0 { nwk_s_key } => Self::V1_0(open_envelope(nwk_s_key, ns_kek)?),
            StoredNetworkKeys::V1_1 {
                f_nwk_s_int_key,
                s_nwk_s_int_key,
                nwk_s_enc_key,
            } => Self::V1_1 {
                f_nwk_s_int_key: open_envelope(f_nwk_s_int_key, ns_kek)?,
                s_nwk_s_int_key: open_envelope(s_nwk_s_int_key, ns_kek)?,
                nwk_s_enc_key: open_envelope(nwk_s_enc_key, ns_kek)?,
            },
        })
    }

    /// The form kept on disk: every key wrapped under the NS KEK (a key the join server sent
    /// in clear is wrapped here, so the store never holds one in clear).
    pub fn seal(&self, ns_kek: &LabeledKek) -> StoredNetworkKeys {
        fn env<K: Key128>(k: &K, kek: &LabeledKek) -> KeyEnvelope {
            KeyEnvelope {
                kek_label: kek.label.clone(),
                aes_key: protocol::keywrap::wrap_key(&kek.key, k).to_vec(),
            }
        }
        match self {
            Self::V1_0(k) => StoredNetworkKeys::V1_0 {
                nwk_s_key: env(k, ns_kek),
            },
            Self::V1_1 {
                f_nwk_s_int_key,
                s_nwk_s_int_key,
                nwk_s_enc_key,
            } => StoredNetworkKeys::V1_1 {
                f_nwk_s_int_key: env(f_nwk_s_int_key, ns_kek),
                s_nwk_s_int_key: env(s_nwk_s_int_key, ns_kek),
                nwk_s_enc_key: env(nwk_s_enc_key, ns_kek),
            },
        }
    }

    /// The protocol crate's form of the keys (what [`protocol::data::SessionCrypto`] expands).
    pub fn session_keys(&self) -> NetworkSessionKeys {
        match self {
            Self::V1_0(k) => NetworkSessionKeys::V1_0 {
                nwk_s_key: k.clone(),
            },
            Self::V1_1 {
                f_nwk_s_int_key,
                s_nwk_s_int_key,
                nwk_s_enc_key,
            } => NetworkSessionKeys::V1_1 {
                f_nwk_s_int_key: f_nwk_s_int_key.clone(),
                s_nwk_s_int_key: s_nwk_s_int_key.clone(),
                nwk_s_enc_key: nwk_s_enc_key.clone(),
            },
        }
    }
}

impl From<NetworkSessionKeys> for NetworkKeys {
    /// The protocol crate's form back (the inverse of [`NetworkKeys::session_keys`]).
    fn from(k: NetworkSessionKeys) -> Self {
        match k {
            NetworkSessionKeys::V1_0 { nwk_s_key } => Self::V1_0(nwk_s_key),
            NetworkSessionKeys::V1_1 {
                f_nwk_s_int_key,
                s_nwk_s_int_key,
                nwk_s_enc_key,
            } => Self::V1_1 {
                f_nwk_s_int_key,
                s_nwk_s_int_key,
                nwk_s_enc_key,
            },
        }
    }
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

/// Reads a KEK file as `joinserver init` writes `ns.kek` and `as.kek`: TOML with
/// `label = "…"` (the KEKLabel) and `key = "<32 hex digits>"`.
pub fn read_labeled_kek(path: &Path) -> Result<LabeledKek, SecretFileError> {
    read_secret(path, LabeledKek::from_file_text)
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

    fn write600(p: &Path, text: &str) -> std::io::Result<()> {
        std::fs::write(p, text)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

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

    fn kek(label: &str, b: u8) -> LabeledKek {
        LabeledKek {
            label: label.into(),
            key: Kek::new([b; 16]),
        }
    }

    #[test]
    fn network_keys_open_and_seal() {
        let ns = kek("ns-1", 7);
        let k = NwkSKey::new([0x42; 16]);
        // Wrapped under our KEK, in clear, under someone else's KEK, altered.
        let wrapped = KeyEnvelope::seal("ns-1", Some(&ns.key), &k).unwrap();
        let clear = KeyEnvelope::seal("", None, &k).unwrap();
        let other = KeyEnvelope::seal("ns-2", Some(&Kek::new([8; 16])), &k).unwrap();
        let mut altered = wrapped.clone();
        altered.aes_key[3] ^= 1;
        let open = |e: &KeyEnvelope| {
            NetworkKeys::open(
                &StoredNetworkKeys::V1_0 {
                    nwk_s_key: e.clone(),
                },
                &ns,
            )
        };
        assert_eq!(open(&wrapped).unwrap(), NetworkKeys::V1_0(k.clone()));
        assert_eq!(open(&clear).unwrap(), NetworkKeys::V1_0(k.clone()));
        assert_eq!(open(&other).unwrap_err().kind(), "unknown_kek");
        assert_eq!(open(&altered).unwrap_err().kind(), "unwrap_failed");
        // Sealing wraps even what came in clear, and round-trips; the RFC 3394 wrap is
        // deterministic, so it equals the join server's envelope.
        let sealed = NetworkKeys::V1_0(k.clone()).seal(&ns);
        assert_eq!(sealed, StoredNetworkKeys::V1_0 { nwk_s_key: wrapped });
        let v11 = NetworkKeys::V1_1 {
            f_nwk_s_int_key: FNwkSIntKey::new([1; 16]),
            s_nwk_s_int_key: SNwkSIntKey::new([2; 16]),
            nwk_s_enc_key: NwkSEncKey::new([3; 16]),
        };
        assert_eq!(NetworkKeys::open(&v11.seal(&ns), &ns).unwrap(), v11);
        assert!(!format!("{v11:?}").contains("0101"));
    }

    #[test]
    fn reads_labeled_kek_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ns.kek");
        write600(
            &p,
            "# comment\nlabel = \"ns-0a0b0c0d\"\nkey = \"000102030405060708090a0b0c0d0e0f\"\n",
        )
        .unwrap();
        let k = read_labeled_kek(&p).unwrap();
        assert_eq!(k.label, "ns-0a0b0c0d");
        assert_eq!(k.key.expose()[1], 1);
        assert!(!format!("{k:?}").contains("0e0f"));
        write600(
            &p,
            "label = \"\"\nkey = \"000102030405060708090a0b0c0d0e0f\"\n",
        )
        .unwrap();
        assert!(read_labeled_kek(&p)
            .unwrap_err()
            .to_string()
            .contains("label is empty"));
        write600(&p, "label = \"x\"\nkey = \"0001020304050607\"\n").unwrap();
        let e = read_labeled_kek(&p).unwrap_err().to_string();
        assert!(
            e.contains("32 hex digits") && !e.contains("0001020304050607"),
            "{e}"
        );
    }
}
