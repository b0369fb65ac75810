//! The secret files under `DATA_DIR/secrets/`, each created with mode 0600 and never overwritten.
//!
//! | file | content | who needs it |
//! |---|---|---|
//! | `master.key` | 32 hex digits: encrypts the devices' root keys at rest | join server only |
//! | `link.key` | 32 hex digits: authenticates the JS↔NS link | join server and network server |
//! | `ns.kek` | TOML `label = "…"`, `key = "<32 hex>"`: wraps network session keys | join server and network server |
//! | `as.kek` | same format: wraps the AppSKey | join server and application server |

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use protocol::keys::{Kek, LinkKey};
pub use protocol::keywrap::LabeledKek;
use rand::RngCore;
use zeroize::Zeroizing;

/// The master key file name.
pub const MASTER_KEY: &str = "master.key";
/// The link key file name.
pub const LINK_KEY: &str = "link.key";
/// The network server KEK file name.
pub const NS_KEK: &str = "ns.kek";
/// The application server KEK file name.
pub const AS_KEK: &str = "as.kek";

/// Why a secret could not be created or read. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file's content is not in the expected format.
    #[error("{path}: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong (without the content).
        what: String,
    },
}

/// The master key that encrypts root keys at rest (RFC 3394 key wrap).
#[derive(Clone)]
pub struct MasterKey(pub Kek);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// All the join server's secrets, loaded.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Encrypts root keys at rest.
    pub master: MasterKey,
    /// The default link key (`link.key`).
    pub link: LinkKey,
    /// Wraps network session keys for the network server.
    pub ns_kek: LabeledKek,
    /// Wraps the AppSKey for the application server.
    pub as_kek: LabeledKek,
}

/// A link key, loaded or in a file.
#[derive(Debug, Clone, Copy)]
pub enum LinkKeyFile<'a> {
    /// Already loaded (`secrets/link.key`).
    Loaded(&'a LinkKey),
    /// A key file (32 hex digits, 0600).
    Path(&'a Path),
}

impl LinkKeyFile<'_> {
    /// The key.
    pub fn read(self) -> Result<LinkKey, SecretError> {
        match self {
            Self::Loaded(k) => Ok(k.clone()),
            Self::Path(p) => read_hex_key(p),
        }
    }
}

/// The secrets directory of a data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets")
}

/// What `init` did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The file was created.
    New(PathBuf),
    /// The file existed and was left alone.
    Kept(PathBuf),
}

fn random_key() -> Zeroizing<[u8; 16]> {
    let mut k = Zeroizing::new([0u8; 16]);
    rand::rngs::OsRng.fill_bytes(&mut k[..]);
    k
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `path` with mode 0600 and `content`, unless it exists. Never overwrites.
fn create_secret(path: &Path, content: &[u8]) -> Result<Created, SecretError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(content)
                .and_then(|()| f.sync_all())
                .map_err(io_err(path))?;
            Ok(Created::New(path.to_owned()))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Created::Kept(path.to_owned())),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Creates the secrets directory (0700) and the four secret files that do not exist yet.
pub fn init(data_dir: &Path) -> Result<Vec<Created>, SecretError> {
    let d = secrets_dir(data_dir)?;
    let mut out = Vec::new();
    for name in [MASTER_KEY, LINK_KEY] {
        out.push(create_hex_key(&d.join(name))?);
    }
    for (name, prefix) in [(NS_KEK, "ns"), (AS_KEK, "as")] {
        out.push(create_kek(&d.join(name), prefix)?);
    }
    sync_dir(&d)?;
    Ok(out)
}

/// The secret files of the network server of one NetID: its link key and its network KEK.
pub fn peer_files(data_dir: &Path, net_id: protocol::ids::NetId) -> (PathBuf, PathBuf) {
    let d = dir(data_dir);
    (
        d.join(format!("link-{net_id}.key")),
        d.join(format!("ns-{net_id}.kek")),
    )
}

/// Creates the link key and network KEK of the network server of `net_id`
/// ([`peer_files`]), those that do not exist yet (0600).
pub fn init_peer(
    data_dir: &Path,
    net_id: protocol::ids::NetId,
) -> Result<[Created; 2], SecretError> {
    let d = secrets_dir(data_dir)?;
    let (link, kek) = peer_files(data_dir, net_id);
    let out = [
        create_hex_key(&link)?,
        create_kek(&kek, &format!("ns-{net_id}"))?,
    ];
    sync_dir(&d)?;
    Ok(out)
}

/// The secrets directory, created 0700 if needed.
fn secrets_dir(data_dir: &Path) -> Result<PathBuf, SecretError> {
    let d = dir(data_dir);
    fs::create_dir_all(&d).map_err(io_err(&d))?;
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).map_err(io_err(&d))?;
    Ok(d)
}

/// Makes the directory's entries durable.
fn sync_dir(d: &Path) -> Result<(), SecretError> {
    fs::File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(io_err(d))
}

/// A new random 128-bit key file (32 hex digits), unless it exists.
fn create_hex_key(path: &Path) -> Result<Created, SecretError> {
    let k = random_key();
    let text = Zeroizing::new(format!("{}\n", hex::encode(&k[..])));
    create_secret(path, text.as_bytes())
}

/// A new random KEK file labelled `<prefix>-<8 hex digits>`, unless it exists.
fn create_kek(path: &Path, prefix: &str) -> Result<Created, SecretError> {
    let k = random_key();
    let mut id = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let text = Zeroizing::new(format!(
        "# KEKLabel and key (RFC 3394 KEK) for TS002 KeyEnvelopes.\nlabel = \"{prefix}-{}\"\nkey = \"{}\"\n",
        hex::encode(id),
        hex::encode(&k[..])
    ));
    create_secret(path, text.as_bytes())
}

fn read_secret(path: &Path) -> Result<Zeroizing<String>, SecretError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "secret file is readable by group or others; chmod 600 it");
    }
    fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(io_err(path))
}

/// Reads a 32-hex-digit key file (`master.key`, `link.key`, or a peer's link key).
pub fn read_hex_key<K: std::str::FromStr<Err = protocol::keys::KeyParseError>>(
    path: &Path,
) -> Result<K, SecretError> {
    let text = read_secret(path)?;
    text.parse()
        .map_err(|e: protocol::keys::KeyParseError| SecretError::Format {
            path: path.to_owned(),
            what: e.to_string(),
        })
}

/// Reads a labelled KEK file (`ns.kek`, `as.kek`).
pub fn read_kek(path: &Path) -> Result<LabeledKek, SecretError> {
    let text = read_secret(path)?;
    LabeledKek::from_file_text(&text).map_err(|what| SecretError::Format {
        path: path.to_owned(),
        what,
    })
}

impl Secrets {
    /// Loads the four secrets of a data directory.
    pub fn load(data_dir: &Path) -> Result<Self, SecretError> {
        let d = dir(data_dir);
        Ok(Self {
            master: MasterKey(read_hex_key(&d.join(MASTER_KEY))?),
            link: read_hex_key(&d.join(LINK_KEY))?,
            ns_kek: read_kek(&d.join(NS_KEK))?,
            as_kek: read_kek(&d.join(AS_KEK))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_0600_files_once_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let first = init(tmp.path()).unwrap();
        assert!(first.iter().all(|c| matches!(c, Created::New(_))));
        for name in [MASTER_KEY, LINK_KEY, NS_KEK, AS_KEK] {
            let m = fs::metadata(dir(tmp.path()).join(name)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{name}");
        }
        let before = fs::read(dir(tmp.path()).join(LINK_KEY)).unwrap();
        let s1 = Secrets::load(tmp.path()).unwrap();
        let second = init(tmp.path()).unwrap();
        assert!(second.iter().all(|c| matches!(c, Created::Kept(_))));
        assert_eq!(fs::read(dir(tmp.path()).join(LINK_KEY)).unwrap(), before);
        let s2 = Secrets::load(tmp.path()).unwrap();
        assert_eq!(s1.link, s2.link);
        assert_eq!(s1.ns_kek.label, s2.ns_kek.label);
        assert!(s1.ns_kek.label.starts_with("ns-"));
        assert_ne!(s1.ns_kek.key, s1.as_kek.key);
        assert!(!format!("{s1:?}").contains(&hex::encode(s1.link.expose())));
    }

    #[test]
    fn format_errors_do_not_leak() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("bad.kek");
        fs::write(
            &p,
            "label = \"x\"\nkey = \"00112233445566778899aabbccddeeZZ\"\n",
        )
        .unwrap();
        let e = read_kek(&p).unwrap_err().to_string();
        assert!(e.contains("invalid hex digit at position 30"), "{e}");
        assert!(!e.contains("0011"), "{e}");
    }
}
