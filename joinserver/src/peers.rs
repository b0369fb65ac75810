//! The network servers on the link (peers) as the data directory lists them: adding one gives it
//! its own link key and network KEK (`joinserver peers add`), so no key passes for another NetID.

use std::io::Write;
use std::path::{Path, PathBuf};

use protocol::ids::NetId;

use crate::config::Config;
use crate::secrets::{self, Created, SecretError};

/// The first peer, which `joinserver init` creates: the network server of NetID 000000, with
/// `secrets/link.key` and `secrets/ns.kek`. It is the only peer while `[[link.peers]]` is empty.
pub const FIRST_PEER: NetId = match NetId::new(0) {
    Some(n) => n,
    None => unreachable!(),
};

/// The configuration file that [`add`] extends, in the data directory.
pub const CONFIG_FILE: &str = "joinserver.toml";

/// Why a peer could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The NetID is a peer already.
    #[error("NetID {net_id} is already a peer in {}", path.display())]
    Exists {
        /// The NetID.
        net_id: NetId,
        /// The configuration file.
        path: PathBuf,
    },
    /// The configuration file could not be read, parsed or written.
    #[error("{}: {what}", path.display())]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// Its secrets could not be created.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// A peer [`add`] added.
#[derive(Debug)]
pub struct Added {
    /// Its link key and network KEK files, created or kept.
    pub created: [Created; 2],
    /// Its link key file (copy it to its network server: `netserver serve --link-key`).
    pub link_key_file: PathBuf,
    /// Its network KEK file (`netserver serve --ns-kek`).
    pub ns_kek_file: PathBuf,
    /// This was the first peer listed: [`FIRST_PEER`] was listed with it, keeping
    /// `secrets/link.key` and `secrets/ns.kek`.
    pub listed_first_peer: bool,
    /// The configuration file the peer was added to.
    pub config_file: PathBuf,
}

/// Adds the network server of `net_id` as a peer: creates its link key and network KEK (0600)
/// unless they exist, and appends it to `DATA_DIR/joinserver.toml` (with [`FIRST_PEER`] first
/// when the file lists no peer yet, so that the network server of NetID 000000 keeps working).
/// A running join server applies it at its next start.
pub fn add(data_dir: &Path, net_id: NetId) -> Result<Added, AddError> {
    let path = data_dir.join(CONFIG_FILE);
    let config_err = |what: String| AddError::Config {
        path: path.clone(),
        what,
    };
    let before = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(config_err(e.to_string())),
    };
    let config = Config::from_toml(&before).map_err(|e| config_err(e.to_string()))?;
    let listed = |n: NetId| config.link.peers.iter().any(|p| p.net_id.parse() == Ok(n));
    let listed_first_peer = config.link.peers.is_empty();
    if listed(net_id) || (listed_first_peer && net_id == FIRST_PEER) {
        return Err(AddError::Exists { net_id, path });
    }
    let created = secrets::init_peer(data_dir, net_id)?;
    let (link_key_file, ns_kek_file) = secrets::peer_files(data_dir, net_id);
    let mut block = String::new();
    if listed_first_peer {
        block.push_str(&format!(
            "\n# The network server of NetID {FIRST_PEER} (joinserver init).\n\
             [[link.peers]]\nnet_id = \"{FIRST_PEER}\"\nkey_file = \"secrets/{}\"\n\
             ns_kek_file = \"secrets/{}\"\n",
            secrets::LINK_KEY,
            secrets::NS_KEK
        ));
    }
    block.push_str(&format!(
        "\n[[link.peers]]\nnet_id = \"{net_id}\"\nkey_file = \"secrets/link-{net_id}.key\"\n\
         ns_kek_file = \"secrets/ns-{net_id}.kek\"\n"
    ));
    // Parsed with the block before it is written: a configuration it would break stays as is.
    Config::from_toml(&format!("{before}{block}")).map_err(|e| config_err(e.to_string()))?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(block.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(|e| config_err(e.to_string()))?;
    Ok(Added {
        created,
        link_key_file,
        ns_kek_file,
        listed_first_peer,
        config_file: path,
    })
}
