//! The start sequence's first step: the durable state back in memory. The stored sessions are
//! loaded, their frame counters brought forward from the counter log and from the event file
//! (uplinks it shows delivered), their network keys opened, and they are indexed; a replaced
//! session is kept only while its successor is unused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use protocol::ids::DevEui;

use crate::core::devaddr::{AddrAllocator, AddrBlock};
use crate::integration::recover::{apply_delivered, recover_delivered};
use crate::integration::sink::{ConfiguredSink, EventSink};
use crate::keys::NetworkKeys;
use crate::ops::config::Config;
use crate::ops::metrics::Metrics;
use crate::state::Secrets;
use crate::store::backend::SessionBackend;
use crate::store::commit::{SessionStore, StoreThread};
use crate::store::counters::{restore_counters, CounterBackend, CounterRecord};
use crate::store::journal::CounterJournal;
use crate::store::pg::PgStore;
use crate::store::session::Session;
use crate::store::session_journal::SessionJournal;
use crate::store::stored::StoredSession;
use crate::store::table::Sessions;
use crate::store::url::StoreKind;

/// What the start sequence restored.
#[derive(Debug)]
pub struct Restored {
    /// The session store, running.
    pub store: SessionStore,
    /// Its commit thread.
    pub store_thread: StoreThread,
    /// The live sessions.
    pub sessions: Arc<Sessions>,
    /// The DevAddr allocator, with the restored sessions' addresses taken.
    pub allocator: AddrAllocator,
    /// The counter store, for the emitter.
    pub counter_log: Box<dyn CounterBackend>,
    /// The PostgreSQL store, when `[store] url` names one (for the session listener).
    pub shared: Option<PgStore>,
}

/// Counters and keys applied to one stored session on its way back to memory.
pub(crate) struct Reviver<'a> {
    pub(crate) records: HashMap<DevEui, CounterRecord>,
    pub(crate) delivered: HashMap<DevEui, (protocol::ids::DevAddr, u32)>,
    pub(crate) secrets: &'a Secrets,
    pub(crate) sessions: &'a Sessions,
}

impl Reviver<'_> {
    /// The live session of `stored`, its counters brought forward.
    pub(crate) fn revive(&self, mut stored: StoredSession) -> anyhow::Result<Session> {
        let (rekey_confirmed, pending) = restore_counters(&self.records, &mut stored);
        apply_delivered(&self.delivered, &mut stored);
        let keys =
            NetworkKeys::open(&stored.network_keys, &self.secrets.ns_kek).with_context(|| {
                format!(
                    "session of {} cannot be opened with the configured ns.kek",
                    stored.dev_eui
                )
            })?;
        let as_kek = self.secrets.as_kek.as_ref();
        let session = Session::new(&stored, keys, self.sessions.labels(), as_kek)
            .with_context(|| format!("session of {}", stored.dev_eui))?;
        {
            let mut st = session.live.lock();
            st.rekey_confirmed = rekey_confirmed;
            st.pending_confirmed = pending;
        }
        Ok(session)
    }
}

/// The uplinks the event file (when events go to a file) and the event log (when delivered
/// sinks keep one) show delivered: both are written before the counters are committed.
fn delivered(config: &Config) -> anyhow::Result<HashMap<DevEui, (protocol::ids::DevAddr, u32)>> {
    let tail = (config.data.max_batch as u64).max(64) * 8 * 1024;
    let events = &config.data.events;
    let sink = ConfiguredSink::open(events)
        .with_context(|| format!("opening the event sink {events:?}"))?;
    let mut out = if sink.readable_back() {
        recover_delivered(Path::new(events.trim()), tail)
            .with_context(|| format!("reading the event file {events}"))?
    } else {
        HashMap::new()
    };
    let log = config.data_dir.join(crate::integration::log::LOG_DIR);
    if let (true, Some(p)) = (
        config.integration.enabled(),
        crate::integration::log::newest_segment(&log)?,
    ) {
        let from_log = recover_delivered(&p, tail)
            .with_context(|| format!("reading the event log {}", p.display()))?;
        for (dev, (addr, fcnt)) in from_log {
            let e = out.entry(dev).or_insert((addr, fcnt));
            if e.0 != addr || fcnt > e.1 {
                // The log is written first: where the two differ, it is the later.
                *e = (addr, fcnt);
            }
        }
    }
    Ok(out)
}

/// Loads, revives and indexes every stored session; starts the store's commit thread.
pub fn restore(
    config: &Config,
    secrets: &Secrets,
    block: AddrBlock,
    metrics: &Metrics,
) -> anyhow::Result<Restored> {
    let (backend, counter_log, shared) = open_backends(config)?;
    let (store, restored, store_thread) =
        SessionStore::start_all(backend, config.storage.group_commit(), metrics.clone())?;
    let sessions = Arc::new(Sessions::new());
    let allocator = AddrAllocator::new(block);
    let reviver = Reviver {
        records: counter_log.load()?,
        delivered: delivered(config)?,
        secrets,
        sessions: &sessions,
    };
    // Replaced sessions (few: devices between a rejoin and their next uplink), by device.
    let mut previous: HashMap<DevEui, StoredSession> = restored
        .previous
        .into_iter()
        .map(|s| (s.dev_eui, s))
        .collect();
    let mut kept_previous = Vec::new();
    for stored in restored.current {
        let replaced = previous.remove(&stored.dev_eui);
        allocator.restore(stored.dev_addr, stored.dev_eui);
        let session = reviver.revive(stored)?;
        // A replaced session is kept only while its successor is unused (no uplink accepted,
        // 1.1: no RekeyInd); its removal may not have reached the store before a crash.
        let unused = {
            let st = session.live.lock();
            st.counters.f_cnt_up == 0 && !st.rekey_confirmed
        };
        sessions.insert(session);
        match replaced {
            Some(old) if unused => kept_previous.push(reviver.revive(old)?),
            Some(old) => store.forget_previous(old.dev_eui),
            None => {}
        }
    }
    for (dev_eui, _) in previous {
        store.forget_previous(dev_eui);
    }
    drop(reviver);
    let replaced = kept_previous.len();
    for s in kept_previous {
        sessions.insert_previous(s);
    }
    tracing::info!(sessions = sessions.len(), replaced, "sessions restored");
    Ok(Restored {
        store,
        store_thread,
        sessions,
        allocator,
        counter_log,
        shared,
    })
}

/// A store's session and counter backends, and the PostgreSQL store when it is one.
pub type Backends = (
    Box<dyn SessionBackend>,
    Box<dyn CounterBackend>,
    Option<PgStore>,
);

/// The session and counter backends `[store] url` names (PostgreSQL migrated), and the
/// PostgreSQL store itself when it is one.
pub fn open_backends(config: &Config) -> anyhow::Result<Backends> {
    let dir = &config.data_dir;
    Ok(
        match StoreKind::of(&config.store.url).map_err(anyhow::Error::msg)? {
            StoreKind::Embedded => {
                (
                    Box::new(SessionJournal::open(dir).with_context(|| {
                        format!("opening the session store in {}", dir.display())
                    })?),
                    Box::new(CounterJournal::open(dir).with_context(|| {
                        format!("opening the counter journal in {}", dir.display())
                    })?),
                    None,
                )
            }
            StoreKind::Postgres => {
                let pg = PgStore::open(&config.store)?;
                (Box::new(pg.clone()), Box::new(pg.clone()), Some(pg))
            }
        },
    )
}
