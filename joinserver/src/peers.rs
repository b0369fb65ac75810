//! The network servers on the link (peers): adding one gives it its own link key and network
//! KEK (`joinserver peers add`), so no key passes for another NetID; the peers the store lists
//! join those `[[link.peers]]` configures, and a running server picks up a new one within a
//! second ([`PeerBook`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use protocol::ids::NetId;
use protocol::keys::{Kek, LinkKey};
use protocol::keywrap::LabeledKek;

use crate::atrest;
use crate::config::Config;
use crate::link::Peers;
use crate::live::Live;
use crate::secrets::{self, Created, MasterKey, SecretError};
use crate::store::postgres::{is_postgres_url, PgStore};
use crate::store::{SqliteStore, Store, StoreError, StoredPeer};

/// The first peer, which `joinserver init` creates: the network server of NetID 000000, with
/// `secrets/link.key` and `secrets/ns.kek`. It is a peer while `[[link.peers]]` is empty.
pub const FIRST_PEER: NetId = match NetId::new(0) {
    Some(n) => n,
    None => unreachable!(),
};

/// The configuration file of a data directory, where `[[link.peers]]` may list peers by hand.
pub const CONFIG_FILE: &str = "joinserver.toml";

/// Why a peer could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The NetID is a peer already.
    #[error("NetID {net_id} is already a peer ({where_})")]
    Exists {
        /// The NetID.
        net_id: NetId,
        /// Where it is listed.
        where_: String,
    },
    /// Its secrets could not be created or read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The store failed (or was made with another `master.key`).
    #[error("store: {0}")]
    Store(#[from] StoreError),
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
}

/// Adds the network server of `net_id` as a peer in the store of the data directory's
/// configuration (`joinserver.toml`'s `[store] url`, else the embedded store); see [`add_to`].
pub fn add(data_dir: &Path, net_id: NetId) -> Result<Added, AddError> {
    let config = match std::fs::read_to_string(data_dir.join(CONFIG_FILE)) {
        Ok(text) => Config::from_toml(&text).map_err(|e| SecretError::Format {
            path: data_dir.join(CONFIG_FILE),
            what: e.to_string(),
        })?,
        Err(_) => Config::default(),
    };
    let master = secrets::Secrets::load(data_dir)?.master;
    let mut store: Box<dyn Store> = if is_postgres_url(&config.store.url) {
        Box::new(PgStore::connect(&config.store.url, 2)?)
    } else {
        Box::new(SqliteStore::open(data_dir)?)
    };
    add_to(data_dir, &config, &mut *store, &master, net_id)
}

/// Adds the network server of `net_id` as a peer: creates its link key and network KEK files
/// (0600, kept if they exist) for its network server, and records both in `store`, wrapped under
/// `master.key`. Every join server on that store (on PostgreSQL, every instance) applies it
/// within a second, without a restart. A NetID that `config` lists, or that the store holds,
/// is refused.
pub fn add_to(
    data_dir: &Path,
    config: &Config,
    store: &mut dyn Store,
    master: &MasterKey,
    net_id: NetId,
) -> Result<Added, AddError> {
    if configured(config, net_id) {
        return Err(AddError::Exists {
            net_id,
            where_: "in the configuration's [[link.peers]], or the first peer".into(),
        });
    }
    store.check_master(&atrest::check_value(master))?;
    if store
        .link_peers()?
        .iter()
        .any(|p| p.net_id == net_id.as_u32())
    {
        return Err(AddError::Exists {
            net_id,
            where_: "in the store".into(),
        });
    }
    let created = secrets::init_peer(data_dir, net_id)?;
    let (link_key_file, ns_kek_file) = secrets::peer_files(data_dir, net_id);
    let link: LinkKey = secrets::read_hex_key(&link_key_file)?;
    let kek = secrets::read_kek(&ns_kek_file)?;
    let peer = StoredPeer {
        net_id: net_id.as_u32(),
        link_key: atrest::seal_peer_key(master, &link),
        ns_kek: atrest::seal_peer_key(master, &kek.key),
        kek_label: kek.label.clone(),
        created_ms: crate::link::now_ms(),
    };
    if !store.add_link_peer(&peer)? {
        return Err(AddError::Exists {
            net_id,
            where_: "in the store (added at the same moment elsewhere)".into(),
        });
    }
    Ok(Added {
        created,
        link_key_file,
        ns_kek_file,
    })
}

/// Whether `net_id` is a peer: configured, the first peer, or in the store.
pub fn is_peer(config: &Config, stored: &[StoredPeer], net_id: NetId) -> bool {
    configured(config, net_id) || stored.iter().any(|p| p.net_id == net_id.as_u32())
}

/// Whether `config` makes `net_id` a peer: listed in `[[link.peers]]`, or the first peer while
/// none is listed.
fn configured(config: &Config, net_id: NetId) -> bool {
    let peers = &config.link.peers;
    peers.iter().any(|p| p.net_id.parse() == Ok(net_id))
        || (peers.is_empty() && net_id == FIRST_PEER)
}

/// The link's peers and the network KEKs of their JoinAns, as the running server reads them:
/// the configured ones, joined by those the store lists that the configuration does not name
/// (the configuration wins for a NetID in both). [`PeerBook::apply`] replaces both views at
/// once when the store's list changes.
#[derive(Debug)]
pub struct PeerBook {
    configured: Peers,
    configured_keks: HashMap<NetId, LabeledKek>,
    seen: Vec<StoredPeer>,
    /// What the link authenticates with.
    pub link: Live<Peers>,
    /// What join processing wraps network session keys with.
    pub ns_keks: Live<HashMap<NetId, LabeledKek>>,
}

impl PeerBook {
    /// The configured peers (and their KEKs), before any stored one.
    pub fn new(configured: Peers, configured_keks: HashMap<NetId, LabeledKek>) -> Self {
        Self {
            link: Live::new(configured.clone()),
            ns_keks: Live::new(configured_keks.clone()),
            configured,
            configured_keks,
            seen: Vec::new(),
        }
    }

    /// Applies the store's list of peers; `false` when it is what was applied last. A stored
    /// peer whose keys do not unwrap under `master` is left out, with an error logged.
    pub fn apply(&mut self, stored: Vec<StoredPeer>, master: &MasterKey) -> bool {
        if stored == self.seen {
            return false;
        }
        let mut link = self.configured.clone();
        let mut keks = self.configured_keks.clone();
        for p in &stored {
            let Some(net_id) = NetId::new(p.net_id) else {
                continue;
            };
            let id = protocol::link::PeerId::from_net_id(net_id).0;
            if link.by_id.contains_key(&id) {
                continue;
            }
            let opened = atrest::open_peer_key::<LinkKey>(master, &p.link_key)
                .and_then(|l| atrest::open_peer_key::<Kek>(master, &p.ns_kek).map(|k| (l, k)));
            match opened {
                Ok((link_key, kek)) => {
                    link.by_id.insert(id, vec![link_key]);
                    keks.insert(
                        net_id,
                        LabeledKek {
                            label: p.kek_label.clone(),
                            key: kek,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(net_id = %net_id, error = %e, "stored link peer not loaded")
                }
            }
        }
        self.link.replace(link);
        self.ns_keks.replace(keks);
        self.seen = stored;
        true
    }
}
