//! The start sequence's first step: the durable state back in memory. The stored sessions are
//! loaded, their frame counters brought forward from the counter log and from the event file
//! (uplinks it shows delivered), their network keys opened, and they are indexed; a replaced
//! session is kept only while its successor is unused.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use protocol::ids::DevEui;

use crate::core::devaddr::{AddrAllocator, AddrBlock};
use crate::integration::recover::{apply_delivered, recover_delivered};
use crate::integration::sink::{ConfiguredSink, EventSink};
use crate::keys::NetworkKeys;
use crate::ops::config::Config;
use crate::ops::metrics::Metrics;
use crate::state::Secrets;
use crate::store::commit::{SessionStore, StoreThread};
use crate::store::counters::{restore_counters, CounterBackend, CounterLog, CounterRecord};
use crate::store::embedded::RedbBackend;
use crate::store::session::Session;
use crate::store::stored::StoredSession;
use crate::store::table::Sessions;

/// What the start sequence restored.
#[derive(Debug)]
pub struct Restored {
    /// The session store, running.
    pub store: SessionStore,
    /// Its commit thread.
    pub store_thread: StoreThread,
    /// The live sessions.
    pub sessions: Sessions,
    /// The DevAddr allocator, with the restored sessions' addresses taken.
    pub allocator: AddrAllocator,
    /// The counter log, for the emitter.
    pub counter_log: CounterLog,
}

/// Counters and keys applied to one stored session on its way back to memory.
struct Reviver<'a> {
    records: HashMap<DevEui, CounterRecord>,
    delivered: HashMap<DevEui, (protocol::ids::DevAddr, u32)>,
    secrets: &'a Secrets,
    sessions: &'a Sessions,
}

impl Reviver<'_> {
    fn revive(&self, mut stored: StoredSession) -> anyhow::Result<Session> {
        let rekey_confirmed = restore_counters(&self.records, &mut stored);
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
        session.live.lock().rekey_confirmed = rekey_confirmed;
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
    let dir = &config.data_dir;
    let backend = RedbBackend::open(dir)
        .with_context(|| format!("opening the session store in {}", dir.display()))?;
    let (store, restored, store_thread) =
        SessionStore::start_all(backend, config.storage.max_batch, metrics.clone())?;
    let sessions = Sessions::new();
    let allocator = AddrAllocator::new(block);
    // Data path: the write-ahead frame counters, applied over the stored sessions.
    let counter_log = CounterLog::open(dir)
        .with_context(|| format!("opening the counter log in {}", dir.display()))?;
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
    })
}
