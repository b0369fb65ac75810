//! Starting and stopping a join server: secrets, store, devices, link threads, metrics.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use protocol::ids::{DevEui, NetId};
use protocol::link::PeerId;

use crate::atrest;
use crate::cache::AnswerCache;
use crate::config::{resolve, Config};
use crate::core::{self, DeviceMap, JoinContext, Refresh};
use crate::link::{self, Link, Peers};
use crate::metrics::{self, Metrics};
use crate::peers::{PeerBook, FIRST_PEER};
use crate::queue::Queued;
use crate::secrets::{self, Secrets};
use crate::store::pg_onboard::PgOnboard;
use crate::store::postgres::{is_postgres_url, PgStore};
use crate::store::{
    DeviceChanges, GroupCommit, Pacing, SqliteStore, Store, StoreError, StoredDevice,
};
use httpsec::serve::Transport;

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A secret file is missing or malformed.
    #[error("secrets: {0} (run `joinserver init --data-dir DIR` first)")]
    Secrets(#[from] secrets::SecretError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A device's root key does not unwrap.
    #[error("device {0}: {1}")]
    Device(DevEui, atrest::UnwrapError),
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A socket could not be bound.
    #[error("{what} {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running join server.
#[derive(Debug)]
pub struct Server {
    link_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    healthy: Arc<AtomicBool>,
    receiver: Option<JoinHandle<()>>,
    writer: Option<WriterHandle>,
    reloader: Option<JoinHandle<()>>,
    metrics_thread: Option<JoinHandle<()>>,
    metrics_stop: Option<tokio::sync::oneshot::Sender<()>>,
    // Onboarding: the management API, if enabled (see `start_api`).
    api: Option<crate::api::ApiHandle>,
    // Backend Interfaces (TS002) over HTTPS, if enabled (see `start_bi`).
    bi: Option<crate::bi::listener::BiHandle>,
    /// Metrics, for in-process tests and embedding.
    pub metrics: Metrics,
}

/// Loads every stored device into memory, unwrapping root keys under the master key.
fn load_devices(
    store: &mut dyn Store,
    master: &secrets::MasterKey,
    map: &DeviceMap,
) -> Result<usize, StartError> {
    let all = store.load_devices()?;
    let n = all.len();
    for d in all {
        core::put_stored(map, master, &d, Refresh::Replace)
            .map_err(|e| StartError::Device(d.dev_eui, e))?;
    }
    Ok(n)
}

/// Picks up devices imported, re-imported or removed by another process while running: those
/// that `changes` lists, or every device for [`DeviceChanges::All`]. A device whose provisioning
/// is unchanged keeps its in-memory nonce state, which is never behind the store's; a device
/// re-imported with other keys or settings is replaced by the stored one. Returns how many
/// devices were read from the store.
pub fn sync_devices(
    store: &mut dyn Store,
    master: &secrets::MasterKey,
    map: &DeviceMap,
    changes: &DeviceChanges,
) -> Result<usize, StoreError> {
    let DeviceChanges::Devices(changed) = changes else {
        let all = store.load_devices()?;
        let n = all.len();
        let present: std::collections::HashSet<DevEui> = all.iter().map(|d| d.dev_eui).collect();
        for d in all {
            apply_stored(master, map, &d);
        }
        map.retain(|k, _| present.contains(k));
        return Ok(n);
    };
    for &dev_eui in changed {
        match store.get_device(dev_eui)? {
            Some(d) => apply_stored(master, map, &d),
            None => {
                map.remove(&dev_eui);
            }
        }
    }
    Ok(changed.len())
}

/// Puts a stored device into the map unless the map holds it with the same provisioning.
fn apply_stored(master: &secrets::MasterKey, map: &DeviceMap, d: &StoredDevice) {
    if let Err(e) = core::put_stored(map, master, d, Refresh::UnlessUnchanged) {
        tracing::error!(dev_eui = %d.dev_eui, error = %e, "device not loaded");
    }
}

/// The network servers allowed on the link: `[[link.peers]]`, or with none listed, the first
/// peer that `joinserver init` creates: NetID 000000 with `secrets/link.key` (and
/// `[link] old_key_files`). A key that passes for several NetIDs exists only when peers listed
/// here share it, with a warning.
fn peers_from_config(
    data_dir: &Path,
    config: &Config,
    secrets: &Secrets,
) -> Result<Peers, StartError> {
    let read_all = |current: secrets::LinkKeyFile<'_>, old: &[PathBuf]| {
        let mut keys = vec![current.read()?];
        for f in old {
            keys.push(secrets::read_hex_key(&resolve(data_dir, f))?);
        }
        Ok::<_, StartError>(keys)
    };
    let mut peers = Peers::default();
    if config.link.peers.is_empty() {
        tracing::info!(
            "link peer NetID 000000 with secrets/link.key; a network server of another NetID \
             needs its own key (joinserver peers add --net-id N)"
        );
        peers.by_id.insert(
            PeerId::from_net_id(FIRST_PEER).0,
            read_all(
                secrets::LinkKeyFile::Loaded(&secrets.link),
                &config.link.old_key_files,
            )?,
        );
    }
    for p in &config.link.peers {
        let net_id: NetId = p
            .net_id
            .parse()
            .map_err(|e| StartError::Config(format!("link.peers: {e}")))?;
        let path = resolve(data_dir, &p.key_file);
        let keys = read_all(secrets::LinkKeyFile::Path(&path), &p.old_key_files)?;
        let shared = peers
            .by_id
            .iter()
            .find(|(_, other)| other.iter().any(|k| keys.contains(k)));
        if let Some((other, _)) = shared {
            tracing::warn!(
                net_id = %net_id,
                other = %PeerId(*other),
                "link.peers share a link key: either network server can claim the other's NetID"
            );
        }
        peers.by_id.insert(PeerId::from_net_id(net_id).0, keys);
    }
    Ok(peers)
}

/// The network KEKs of the peers that have their own (`ns_kek_file`). Peers sharing one (or
/// `secrets/ns.kek`, by leaving `ns_kek_file` out) get a warning.
fn peer_ns_keks(
    data_dir: &Path,
    config: &Config,
) -> Result<std::collections::HashMap<NetId, secrets::LabeledKek>, StartError> {
    let mut out = std::collections::HashMap::new();
    let mut kek_files: std::collections::HashMap<PathBuf, &str> = Default::default();
    for p in &config.link.peers {
        let file = p.ns_kek_file.as_deref().map_or_else(
            || secrets::dir(data_dir).join(secrets::NS_KEK),
            |f| resolve(data_dir, f),
        );
        if let Some(other) = kek_files.insert(file, &p.net_id) {
            tracing::warn!(
                net_id = %p.net_id,
                other,
                "link.peers share a network KEK: either network server can open the other's \
                 session keys"
            );
        }
        if let Some(f) = &p.ns_kek_file {
            let net_id: NetId = p
                .net_id
                .parse()
                .map_err(|e| StartError::Config(format!("link.peers: {e}")))?;
            out.insert(net_id, secrets::read_kek(&resolve(data_dir, f))?);
        }
    }
    Ok(out)
}

/// The per-tenant application KEKs of `[join] app_kek_files`.
fn app_keks(
    data_dir: &Path,
    config: &Config,
) -> Result<std::collections::HashMap<String, secrets::LabeledKek>, StartError> {
    config
        .join
        .app_kek_files
        .iter()
        .map(|(tenant, f)| Ok((tenant.clone(), secrets::read_kek(&resolve(data_dir, f))?)))
        .collect()
}

/// The store writer thread, which returns the store when it ends.
type WriterHandle = JoinHandle<Box<dyn Store>>;

/// The two handles on the store a server uses: the writer's (group commit) and the reload
/// thread's.
type StorePair = (Box<dyn Store>, Box<dyn Store>);

/// Opens the store: PostgreSQL when `[store] url` names it (migrations applied), else the
/// embedded SQLite file, with the master key checked. SQLite's writer connection has automatic
/// checkpoints off (the reload thread checkpoints) and `synchronous` as configured.
/// What every join needs besides the device: the KEKs, the DevNonce rules, the join server's id.
fn join_context(
    data_dir: &Path,
    config: &Config,
    secrets: &Secrets,
    peers: &PeerBook,
    js_id: PeerId,
) -> Result<JoinContext, StartError> {
    Ok(JoinContext {
        ns_kek: secrets.ns_kek.clone(),
        as_kek: secrets.as_kek.clone(),
        app_keks: app_keks(data_dir, config)?,
        peer_ns_keks: peers.ns_keks.clone(),
        dev_nonce_history: config.join.dev_nonce_history,
        session_lifetime_s: config.join.session_lifetime_s,
        js_id: js_id.0,
    })
}

fn open_stores(
    data_dir: &Path,
    config: &Config,
    secrets: &Secrets,
) -> Result<StorePair, StartError> {
    let check = atrest::check_value(&secrets.master);
    if is_postgres_url(&config.store.url) {
        let mut store = PgStore::connect(&config.store.url, config.store.pool_size)?;
        store.set_answer_ttl_ms(config.link.answer_cache_ttl_ms);
        store.check_master(&check)?;
        let reload = store.handle();
        tracing::info!(pool_size = config.store.pool_size, "store: PostgreSQL");
        return Ok((Box::new(store), Box::new(reload)));
    }
    if !config.store.url.is_empty() {
        return Err(StartError::Config(
            "store.url: not a postgres:// URL (leave it empty for the embedded store)".into(),
        ));
    }
    let mut store = SqliteStore::open(data_dir)?;
    store.check_master(&check)?;
    // Checkpoints run on the reload thread's connection, off the commit path.
    store.disable_autocheckpoint()?;
    store.set_synchronous(config.store.synchronous)?;
    if config.store.synchronous != crate::config::Synchronous::Full {
        tracing::warn!("store.synchronous = \"normal\": answered joins survive a crash of the join server but not a power loss");
    }
    Ok((Box::new(store), Box::new(SqliteStore::open(data_dir)?)))
}

/// What the reload thread needs.
struct Reload {
    /// The generation of the store the map was loaded from.
    seen: u64,
    master: secrets::MasterKey,
    devices: Arc<DeviceMap>,
    /// Held while a batch of devices goes from the store into the map.
    map_sync: Arc<Mutex<()>>,
    /// The link's peers, with those the store lists.
    peers: PeerBook,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
}

/// Starts the thread that picks up provisioning by other processes and instances (`joinserver
/// devices import/remove`, another instance's API) and runs the store's housekeeping (WAL
/// checkpoints; expired shared answers). It waits for a change signal (PostgreSQL `NOTIFY`) or
/// half a second, then reads only what changed.
fn spawn_reloader(
    mut reload_store: Box<dyn Store>,
    mut r: Reload,
) -> Result<JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name("js-reload".into())
        .spawn(move || {
            let mut seen = r.seen;
            while !r.stop.load(Ordering::Relaxed) {
                if let Err(e) = reload_store.wait_for_change(Duration::from_millis(500)) {
                    tracing::warn!(error = %e, "waiting for device changes");
                }
                if let Err(e) = reload_store.maintain() {
                    tracing::warn!(error = %e, "store housekeeping");
                }
                match reload_store.link_peers() {
                    Ok(stored) => {
                        let n = stored.len();
                        if r.peers.apply(stored, &r.master) {
                            tracing::info!(stored = n, "link peers reloaded");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the link peers failed"),
                }
                let (g, changes) = match reload_store.changes_since(seen) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "reading the device changes failed");
                        continue;
                    }
                };
                if g == seen {
                    continue;
                }
                let _sync = r.map_sync.lock().unwrap_or_else(|e| e.into_inner());
                match sync_devices(&mut *reload_store, &r.master, &r.devices, &changes) {
                    Ok(read) => {
                        seen = g;
                        r.metrics.devices.set(r.devices.len() as i64);
                        tracing::info!(
                            devices = r.devices.len(),
                            read,
                            full = changes == DeviceChanges::All,
                            "devices reloaded"
                        );
                    }
                    Err(e) => tracing::error!(error = %e, "device reload failed"),
                }
            }
        })
        .map_err(|source| StartError::Bind {
            what: "reload thread",
            addr: String::new(),
            source,
        })
}

/// A `StartError::Bind` for `what` on `addr`.
fn bind_error(
    what: &'static str,
    addr: impl ToString,
) -> impl FnOnce(std::io::Error) -> StartError {
    let addr = addr.to_string();
    move |source| StartError::Bind { what, addr, source }
}

/// Binds the link socket: the receiving socket, a clone for sending, and the bound address.
fn bind_link(config: &Config) -> Result<(UdpSocket, UdpSocket, SocketAddr), StartError> {
    let listen = config.link.listen;
    let socket =
        link::bind(listen, config.link.recv_buffer_bytes).map_err(bind_error("link", listen))?;
    let link_addr = socket.local_addr().map_err(bind_error("link", listen))?;
    let send_socket = socket.try_clone().map_err(bind_error("link", link_addr))?;
    Ok((socket, send_socket, link_addr))
}

/// The link's receiving thread, the store writer thread, and a handle on the writer for the
/// Backend Interfaces listener.
type LinkThreads = (JoinHandle<()>, WriterHandle, GroupCommit<Queued>);

/// Starts the link's two threads: the store writer (group commit), which sends each batch's
/// answers once committed, and the receiver. Returns their handles.
fn spawn_link(
    link: &Arc<Link>,
    socket: UdpSocket,
    send_socket: UdpSocket,
    store: Box<dyn Store>,
    config: &Config,
    stop: &Arc<AtomicBool>,
    healthy: &Arc<AtomicBool>,
) -> Result<LinkThreads, StartError> {
    let link_addr = socket.local_addr().ok();
    let release_link = link.clone();
    let batch_sender = udpbatch::BatchSender::new(64);
    let (writer, writer_handle) = GroupCommit::<Queued>::spawn_paced(
        store,
        Pacing {
            max_batch: config.store.max_batch,
            interval: Duration::from_millis(config.store.commit_interval_ms),
            enough: config.store.commit_enough,
        },
        config.store.queue_depth,
        move |released| {
            crate::queue::release(&release_link, &send_socket, &batch_sender, released);
        },
    );
    let bi_writer = writer.clone();
    let recv_link = link.clone();
    let recv_stop = stop.clone();
    let recv_healthy = healthy.clone();
    let receiver = std::thread::Builder::new()
        .name("js-link".into())
        .spawn(move || {
            recv_link.run(&socket, &writer, &recv_stop);
            recv_healthy.store(false, Ordering::Relaxed);
            drop(writer);
        })
        .map_err(bind_error(
            "link thread",
            link_addr.map_or_else(String::new, |a| a.to_string()),
        ))?;
    Ok((receiver, writer_handle, bi_writer))
}

/// Metrics listener address, thread and stop signal, if `[metrics] listen` is set.
type MetricsParts = (
    Option<SocketAddr>,
    Option<JoinHandle<()>>,
    Option<tokio::sync::oneshot::Sender<()>>,
);

/// Starts the `/metrics` and `/health` listener on its own thread, unless disabled.
fn start_metrics(
    config: &Config,
    metrics: &Metrics,
    healthy: &Arc<AtomicBool>,
    link_inode: Option<u64>,
) -> Result<MetricsParts, StartError> {
    if config.metrics.listen.is_empty() {
        return Ok((None, None, None));
    }
    let addr: SocketAddr = config
        .metrics
        .listen
        .parse()
        .map_err(|e| StartError::Config(format!("metrics.listen: {e}")))?;
    let std_listener = std::net::TcpListener::bind(addr).map_err(|source| StartError::Bind {
        what: "metrics",
        addr: addr.to_string(),
        source,
    })?;
    let bound = std_listener.local_addr().ok();
    std_listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Bind {
            what: "metrics",
            addr: addr.to_string(),
            source,
        })?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let m = metrics.clone();
    let h = healthy.clone();
    let km = metrics.clone();
    let scrape: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        if let Some(d) = link_inode.and_then(|i| udpstat::receive_drops(&[i])) {
            km.kernel_drops.set(i64::try_from(d).unwrap_or(i64::MAX));
        }
    });
    let t = std::thread::Builder::new()
        .name("js-metrics".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "metrics runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    tracing::error!("metrics listener");
                    return;
                };
                tokio::select! {
                    () = metrics::serve(listener, m, h, scrape) => {}
                    _ = rx => {}
                }
            });
        })
        .map_err(|source| StartError::Bind {
            what: "metrics thread",
            addr: addr.to_string(),
            source,
        })?;
    Ok((bound, Some(t), Some(tx)))
}

impl Server {
    /// Starts a join server on `data_dir` with `config`. Returns once the sockets are bound and
    /// the devices are loaded.
    pub fn start(data_dir: &Path, config: &Config) -> Result<Self, StartError> {
        let secrets = Secrets::load(data_dir)?;
        let js_id = PeerId(config.js_id().map_err(StartError::Config)?);
        let mut peers = PeerBook::new(
            peers_from_config(data_dir, config, &secrets)?,
            peer_ns_keks(data_dir, config)?,
        );

        let (mut store, reload_store) = open_stores(data_dir, config, &secrets)?;
        peers.apply(store.link_peers()?, &secrets.master);
        let devices: Arc<DeviceMap> = Arc::new(DeviceMap::default());
        // Read before the load: a change in between is picked up (again) by the reload thread.
        let loaded_generation = store.generation()?;
        let n = load_devices(&mut *store, &secrets.master, &devices)?;
        let metrics = Metrics::new();
        metrics.devices.set(n as i64);
        tracing::info!(devices = n, "devices loaded");
        // Held by whoever writes a batch of devices into the map from the store (the reload
        // thread, an API import), so an import's devices are not prepared twice.
        let map_sync = Arc::new(Mutex::new(()));
        let rekey = rekey_trail(data_dir, config)?;
        let api = start_api(
            data_dir,
            config,
            (&devices, &map_sync),
            &secrets.master,
            &rekey,
        )?;

        let (socket, send_socket, link_addr) = bind_link(config)?;
        let link_inode = udpstat::socket_inode(&socket);

        let ctx = join_context(data_dir, config, &secrets, &peers, js_id)?;
        let link = new_link(ctx, (&devices, &peers), js_id, config, &metrics, rekey);

        let stop = Arc::new(AtomicBool::new(false));
        let healthy = Arc::new(AtomicBool::new(true));
        let (receiver, writer_handle, bi_writer) =
            spawn_link(&link, socket, send_socket, store, config, &stop, &healthy)?;

        // Provisioning by other processes (`joinserver devices import/remove`), and WAL
        // checkpoints.
        let reloader = spawn_reloader(
            reload_store,
            Reload {
                seen: loaded_generation,
                master: secrets.master.clone(),
                devices,
                map_sync,
                peers,
                metrics: metrics.clone(),
                stop: stop.clone(),
            },
        )?;

        let (metrics_addr, metrics_thread, metrics_stop) =
            start_metrics(config, &metrics, &healthy, link_inode)?;

        Ok(Self {
            link_addr,
            metrics_addr,
            stop,
            healthy,
            receiver: Some(receiver),
            writer: Some(writer_handle),
            reloader: Some(reloader),
            metrics_thread,
            metrics_stop,
            api,
            bi: start_bi(data_dir, config, &link, bi_writer)?,
            metrics,
        })
    }

    /// The bound Backend Interfaces address, if enabled.
    pub fn bi_addr(&self) -> Option<SocketAddr> {
        self.bi.as_ref().map(crate::bi::listener::BiHandle::addr)
    }

    /// The Backend Interfaces listener's URL scheme (`https` or `http`), if enabled.
    pub fn bi_scheme(&self) -> Option<&'static str> {
        self.bi.as_ref().map(crate::bi::listener::BiHandle::scheme)
    }

    /// The management API's URL scheme (`https` or `http`), if enabled.
    pub fn api_scheme(&self) -> Option<&'static str> {
        self.api.as_ref().map(crate::api::ApiHandle::scheme)
    }

    /// What the management API's accept loop counted, if enabled.
    pub fn api_counters(&self) -> Option<&httpsec::serve::Counters> {
        self.api.as_ref().map(crate::api::ApiHandle::counters)
    }

    /// The bound management API address, if enabled.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(crate::api::ApiHandle::addr)
    }

    /// The bound link address.
    pub fn link_addr(&self) -> SocketAddr {
        self.link_addr
    }

    /// The bound metrics address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Whether the link and writer threads are running.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Stops accepting datagrams, lets the writer commit and send what is queued, and waits for
    /// every thread.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        if let Some(mut a) = self.api.take() {
            a.shutdown();
        }
        // Before the link: its requests hold the store writer open.
        if let Some(mut b) = self.bi.take() {
            b.shutdown();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.receiver.take() {
            let _ = h.join();
        }
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        if let Some(h) = self.reloader.take() {
            let _ = h.join();
        }
        if let Some(tx) = self.metrics_stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.metrics_thread.take() {
            let _ = h.join();
        }
    }
}

/// The root-key rotation trail: in the embedded store's audit log (none on PostgreSQL).
/// The link's state: the join context, the devices and the peers it authenticates, its
/// answer cache and metrics.
fn new_link(
    ctx: JoinContext,
    (devices, peers): (&Arc<DeviceMap>, &PeerBook),
    js_id: PeerId,
    config: &Config,
    metrics: &Metrics,
    rekey: Option<Arc<crate::rekey::RekeyTrail>>,
) -> Arc<Link> {
    Arc::new(Link {
        ctx,
        devices: devices.clone(),
        peers: peers.link.clone(),
        js_id,
        window_ms: config.link.window_ms,
        cache: Mutex::new(AnswerCache::new(
            config.link.answer_cache_ttl_ms,
            config.link.answer_cache_max_entries,
        )),
        metrics: metrics.clone(),
        skew_warned_ms: Default::default(),
        not_sender_warned_ms: Default::default(),
        rekey,
    })
}

fn rekey_trail(
    data_dir: &Path,
    config: &Config,
) -> Result<Option<Arc<crate::rekey::RekeyTrail>>, StartError> {
    if is_postgres_url(&config.store.url) {
        return Ok(None);
    }
    Ok(Some(Arc::new(crate::rekey::RekeyTrail::open(data_dir)?)))
}

/// Onboarding: opens the onboarding tables and starts the management API on `config.api.listen`
/// (if not empty), acting on the running server's device map.
fn start_api(
    data_dir: &Path,
    config: &Config,
    (devices, map_sync): (&Arc<DeviceMap>, &Arc<Mutex<()>>),
    master: &secrets::MasterKey,
    rekey: &Option<Arc<crate::rekey::RekeyTrail>>,
) -> Result<Option<crate::api::ApiHandle>, StartError> {
    use crate::onboarding::{db::OnboardStore, manifest_sig::TrustedKeys, service::Onboarding};
    let db: Box<dyn crate::onboarding::backend::OnboardBackend> =
        if is_postgres_url(&config.store.url) {
            if config.api.listen.is_empty() {
                return Ok(None);
            }
            // The onboarding tables on the database every instance shares: one connection for
            // the API's operations, one per running import.
            let imports = u32::try_from(config.api.max_concurrent_imports).unwrap_or(u32::MAX);
            let store = PgStore::connect(&config.store.url, imports.saturating_add(1))?;
            Box::new(PgOnboard::new(store))
        } else {
            // Opening the onboarding store also moves any owner token stored in clear to a hash.
            Box::new(OnboardStore::open(data_dir)?)
        };
    if config.api.listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = config
        .api
        .listen
        .parse()
        .map_err(|e| StartError::Config(format!("api.listen: {e}")))?;
    let trusted = TrustedKeys::parse_with(
        &config.api.trusted_manifest_keys,
        &config.api.manufacturer_keys,
    )
    .map_err(|e| StartError::Config(format!("api.{e}")))?;
    let http = config.api.http_limits();
    let transport = api_transport(data_dir, config, addr)?;
    let svc = Onboarding::new(
        db,
        Some(devices.clone()),
        master.clone(),
        trusted,
        config.api.claim_limits(),
    )
    .with_map_sync(map_sync.clone())
    .with_rekey_trail(rekey.clone())
    .with_auth_limits(http.auth_failures_per_addr, http.auth_failure_window)
    .with_min_owner_token_len(config.api.min_owner_token_len);
    let api = crate::api::start(
        addr,
        Arc::new(svc),
        config.api.import_limits(),
        http,
        transport,
    )
    .map_err(bind_error("api", addr))?;
    Ok(Some(api))
}

/// What the API speaks on `addr`: HTTPS with `[api] tls_cert` and `tls_key` when the certificate
/// exists (plain HTTP beside it on a loopback address); plain HTTP without one, only on a
/// loopback address or with `insecure_http`. A configured certificate that is missing is an
/// error on any other address.
fn api_transport(
    data_dir: &Path,
    config: &Config,
    addr: SocketAddr,
) -> Result<Transport, StartError> {
    let api = &config.api;
    let tls = HttpsListener {
        what: "api",
        hint: "[api] tls_cert and tls_key; `joinserver init` writes a self-signed pair",
        cert: &api.tls_cert,
        key: &api.tls_key,
        insecure_http: api.insecure_http,
        client_cas: &[],
    };
    tls.transport(data_dir, addr)
}

/// What an HTTPS listener of the configuration says about its TLS.
struct HttpsListener<'a> {
    /// Its section, for messages (`api`).
    what: &'static str,
    /// How to configure a certificate.
    hint: &'static str,
    cert: &'a Path,
    key: &'a Path,
    insecure_http: bool,
    /// CAs of the client certificates it accepts (optional client authentication).
    client_cas: &'a [PathBuf],
}

impl HttpsListener<'_> {
    /// What the listener speaks on `addr`: HTTPS when the certificate exists (plain HTTP beside
    /// it on a loopback address); plain HTTP without one, only on a loopback address or with
    /// `insecure_http`. A configured certificate that is missing is an error on any other
    /// address.
    fn transport(&self, data_dir: &Path, addr: SocketAddr) -> Result<Transport, StartError> {
        let what = self.what;
        let tls = if self.cert.as_os_str().is_empty() {
            None
        } else {
            let (cert, key) = (resolve(data_dir, self.cert), resolve(data_dir, self.key));
            if cert.exists() {
                let cas: Vec<PathBuf> = self
                    .client_cas
                    .iter()
                    .map(|c| resolve(data_dir, c))
                    .collect();
                let tls = httpsec::tls::server_config_optional_client_auth(&cert, &key, &cas)
                    .map_err(|e| StartError::Config(format!("{what}: {e}")))?;
                if let Ok(fp) = httpsec::tls::file_fingerprint(&cert) {
                    tracing::info!(cert = %cert.display(), sha256 = %fp, "{what}: HTTPS");
                }
                Some(tls)
            } else if addr.ip().is_loopback() || self.insecure_http {
                tracing::warn!(cert = %cert.display(), "{what}: no certificate, plain HTTP (run `joinserver init` to create one)");
                None
            } else {
                return Err(StartError::Config(format!(
                    "{what}.tls_cert: {} does not exist ({})",
                    cert.display(),
                    self.hint
                )));
            }
        };
        Transport::for_listener(addr, tls, self.insecure_http, self.hint)
            .map_err(|e| StartError::Config(format!("{what}: {e}")))
    }
}

/// Starts the Backend Interfaces listener on `[backend_interfaces] listen` (if not empty): the
/// link's peers, join context and devices, the same store writer.
/// The Backend Interfaces options of the link's peers (`[[backend_interfaces.peers]]`): per
/// NetID, its options and client CA, and the CA files the listener trusts.
struct BiPeers {
    options: std::collections::HashMap<NetId, crate::bi::auth::PeerOptions>,
    cas: Vec<(NetId, httpsec::tls::ClientCa)>,
    ca_files: Vec<PathBuf>,
}

/// [`BiPeers`] from the configuration: every link peer, with the options the configuration
/// gives it; a configured NetID that is not a link peer is a configuration error.
fn bi_peers(data_dir: &Path, config: &Config, link: &Link) -> Result<BiPeers, StartError> {
    let bad = |e: String| StartError::Config(format!("backend_interfaces: {e}"));
    let mut options: std::collections::HashMap<NetId, crate::bi::auth::PeerOptions> = link
        .peers
        .load()
        .by_id
        .keys()
        .filter_map(|id| PeerId(*id).net_id())
        .map(|n| (n, crate::bi::auth::PeerOptions::default()))
        .collect();
    let (mut cas, mut ca_files) = (Vec::new(), Vec::new());
    for p in &config.backend_interfaces.peers {
        let net_id: NetId = p.net_id.parse().map_err(|e| bad(format!("peers: {e}")))?;
        let o = options.get_mut(&net_id).ok_or_else(|| {
            bad(format!(
                "peers: NetID {net_id} is not a peer of the join server (joinserver peers add)"
            ))
        })?;
        o.as_id.clone_from(&p.as_id);
        o.clear_app_s_key_owners = p.clear_app_s_key_owners.iter().cloned().collect();
        if let Some(f) = &p.ca_file {
            let path = resolve(data_dir, f);
            let ca = httpsec::tls::ClientCa::from_file(&path).map_err(|e| bad(e.to_string()))?;
            cas.push((net_id, ca));
            ca_files.push(path);
        }
    }
    Ok(BiPeers {
        options,
        cas,
        ca_files,
    })
}

fn start_bi(
    data_dir: &Path,
    config: &Config,
    link: &Arc<Link>,
    writer: GroupCommit<Queued>,
) -> Result<Option<crate::bi::listener::BiHandle>, StartError> {
    use crate::bi::{auth, handle, listener, tokens};
    let c = &config.backend_interfaces;
    if c.listen.is_empty() {
        return Ok(None);
    }
    let bad = |e: String| StartError::Config(format!("backend_interfaces: {e}"));
    let addr: SocketAddr = c.listen.parse().map_err(|e| bad(format!("listen: {e}")))?;
    let BiPeers {
        options,
        cas,
        ca_files,
    } = bi_peers(data_dir, config, link)?;
    let transport = HttpsListener {
        what: "backend_interfaces",
        hint: "[backend_interfaces] tls_cert and tls_key; `joinserver init` writes a self-signed pair",
        cert: &c.tls_cert,
        key: &c.tls_key,
        insecure_http: c.insecure_http,
        client_cas: &ca_files,
    }
    .transport(data_dir, addr)?;
    let bi = handle::Bi {
        ctx: link.ctx.clone(),
        devices: link.devices.clone(),
        writer,
        peers: auth::Peers {
            link: link.peers.clone(),
            options,
            cas,
            tokens: Mutex::new(if is_postgres_url(&config.store.url) {
                // Tokens created by `joinserver peers token --store-url` work at every instance.
                tokens::TokenStore::new(Box::new(PgStore::connect(&config.store.url, 2)?))
            } else {
                tokens::TokenStore::open(data_dir)?
            }),
        },
        metrics: link.metrics.clone(),
        rekey: link.rekey.clone(),
    };
    let handle = listener::start(
        addr,
        Arc::new(bi),
        listener::ListenerConfig {
            transport,
            limits: c.limits(),
            max_body: c.max_request_bytes,
            auth_failures: (
                c.auth_failures_per_addr,
                Duration::from_secs(c.auth_failure_window_s),
            ),
        },
    )
    .map_err(bind_error("backend_interfaces", addr))?;
    tracing::info!(addr = %handle.addr(), scheme = handle.scheme(), "backend interfaces listening");
    Ok(Some(handle))
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_all();
    }
}
