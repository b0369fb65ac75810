//! Several instances on one PostgreSQL store: the sessions the other instances make, brought
//! into this one's table as they are committed, and the local counters caught up with what
//! the others committed.
//!
//! The same thread reloads the downlink queues of the devices named on
//! [`QUEUE_CHANNEL`] ([`crate::store::shared_queue`]).
//!
//! Each session batch ends with a `NOTIFY` naming its devices ([`crate::store::pg`]). A thread
//! of each instance `LISTEN`s on its own connection and loads the named sessions with their
//! counters, unless its table already holds that very session (its own writes come back too).
//! A session made through one instance is so in every other's table within milliseconds: long
//! before the device's first uplink, which follows its Join-accept. If the connection breaks,
//! the thread reconnects and loads every session changed since a little before the break.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::ids::DevEui;
use r2d2_postgres::postgres;

use crate::integration::emitter::CatchUp;
use crate::integration::emitter::Requeue;
use crate::state::State;
use crate::store::backend::StoreError;
use crate::store::counters::CounterRecord;
use crate::store::embedded::backend_err;
use crate::store::pg::{PgStore, SESSIONS_CHANNEL};
use crate::store::queue::{DownlinkQueue, QueuedDownlink};
use crate::store::restore::Reviver;
use crate::store::shared_queue::QUEUE_CHANNEL;
use crate::store::stored::StoredSession;
use crate::store::table::Sessions;

/// The hook the emitter calls with each committed record a shared store preferred to the
/// local one: the device's live session catches up.
pub fn catch_up(sessions: Arc<Sessions>) -> CatchUp {
    Box::new(move |dev_eui: DevEui, committed: &CounterRecord| {
        if let Some(s) = sessions.get(dev_eui) {
            if s.dev_addr == committed.dev_addr
                && s.dev_nonce.0 == committed.dev_nonce
                && s.created_at_ms == committed.created_at_ms
            {
                s.live.catch_up(
                    committed.counters,
                    committed.rekey_confirmed,
                    committed.pending,
                );
            }
        }
    })
}

/// The emitter's hook for queued downlinks that did not leave (several instances): their
/// devices' queues are reloaded from the shared queue (an item another instance sent is gone,
/// one nobody sent is back at the front); if it cannot be read, the items go back to the front
/// as they were.
pub fn requeue(pg: PgStore, queue: Arc<DownlinkQueue>) -> Requeue {
    Box::new(move |items: Vec<(DevEui, QueuedDownlink)>| {
        let devices: Vec<DevEui> = items.iter().map(|(d, _)| *d).collect();
        if let Err(e) = pg.reload_queue(&queue, Some(&devices)) {
            tracing::warn!(error = %e, "downlink queue not reloaded; items put back as they were");
            for (d, item) in items.into_iter().rev() {
                queue.push_front(d, item);
            }
        }
    })
}

/// Parses a notification's payload, `WRITER:DEVEUI,DEVEUI,...` (16 hex digits each): the
/// writer, and the DevEUIs. Anything malformed is skipped (the channel is written by this
/// program only, but a database user could `NOTIFY` it by hand).
pub fn parse_payload(payload: &str) -> (Option<u64>, Vec<DevEui>) {
    let (writer, list) = payload.split_once(':').unwrap_or(("", payload));
    let devices = list
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    (u64::from_str_radix(writer, 16).ok(), devices)
}

/// The devices of a notification, unless this process wrote it (the session is in its table,
/// or about to be: the join that wrote it installs it).
fn foreign(pg: &PgStore, payload: &str) -> Vec<DevEui> {
    match parse_payload(payload) {
        (Some(w), _) if w == pg.writer() => Vec::new(),
        (_, devices) => devices,
    }
}

/// Installs `stored` (with its committed `records`) unless the table already holds that
/// session or a newer one of the device; whether it was installed.
pub fn install(
    state: &State,
    stored: StoredSession,
    records: &HashMap<DevEui, CounterRecord>,
) -> anyhow::Result<bool> {
    if let Some(local) = state.sessions.get(stored.dev_eui) {
        let same = local.dev_addr == stored.dev_addr
            && local.dev_nonce == stored.dev_nonce
            && local.created_at_ms == stored.created_at_ms;
        if same {
            // Its counters moved at another instance, which sent it a confirmed downlink: the
            // acknowledging uplink may come here.
            if let Some(r) = records.get(&stored.dev_eui) {
                if r.belongs_to(&stored) {
                    local
                        .live
                        .catch_up(r.counters, r.rekey_confirmed, r.pending);
                }
            }
            return Ok(false);
        }
        if local.created_at_ms > stored.created_at_ms {
            return Ok(false);
        }
    }
    let (dev_eui, addr) = (stored.dev_eui, stored.dev_addr);
    let reviver = Reviver {
        records: records
            .get(&dev_eui)
            .map(|r| HashMap::from([(dev_eui, *r)]))
            .unwrap_or_default(),
        delivered: HashMap::new(),
        secrets: &state.secrets,
        sessions: &state.sessions,
    };
    let session = reviver.revive(stored)?;
    state.allocator.restore(addr, dev_eui);
    if let Some(old) = state.sessions.insert(session) {
        if old.dev_addr != addr {
            state.allocator.release(old.dev_addr, dev_eui);
        }
    }
    Ok(true)
}

/// Loads the current sessions of `devices` from `pg` and installs them; how many were new here.
pub fn load(state: &State, pg: &PgStore, devices: &[DevEui]) -> anyhow::Result<usize> {
    if devices.is_empty() {
        return Ok(0);
    }
    let sessions = pg.sessions_of(devices)?;
    let records = pg.counters_of(devices)?;
    let mut installed = 0;
    for s in sessions {
        let dev_eui = s.dev_eui;
        match install(state, s, &records) {
            Ok(true) => installed += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(%dev_eui, error = %e, "session from the shared store not loaded")
            }
        }
    }
    state
        .metrics
        .data
        .shared
        .with_label_values(&["session_loaded"])
        .inc_by(installed as u64);
    Ok(installed)
}

/// The listener thread; [`Listener::join`] waits for it after the server began shutting down.
#[derive(Debug)]
pub struct Listener(std::thread::JoinHandle<()>);

impl Listener {
    /// Starts listening for `state`'s shared store.
    pub fn start(state: Arc<State>, pg: PgStore) -> std::io::Result<Self> {
        let h = std::thread::Builder::new()
            .name("netserver-sync".into())
            .spawn(move || listen_loop(&state, &pg))?;
        Ok(Self(h))
    }

    /// Waits for the thread (it stops within a second of the shutdown).
    pub fn join(self) {
        let _ = self.0.join();
    }
}

/// Listens until shutdown, reconnecting (and catching up) after a broken connection.
fn listen_loop(state: &State, pg: &PgStore) {
    // Catch-up bound after a reconnection: sessions changed since this (database clock).
    let mut since: Option<f64> = None;
    while !state.is_shutting_down() {
        match listen(state, pg, &mut since) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "shared store listener disconnected; reconnecting");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// One connection's life: `LISTEN`, catch up since `since`, then apply notifications until
/// shutdown (`Ok`) or a broken connection (`Err`).
fn listen(state: &State, pg: &PgStore, since: &mut Option<f64>) -> Result<(), StoreError> {
    let mut client = pg.dedicated()?;
    client
        .batch_execute(&format!(
            "LISTEN {SESSIONS_CHANNEL}; LISTEN {QUEUE_CHANNEL}"
        ))
        .map_err(backend_err)?;
    let now: f64 = client
        .query_one("SELECT extract(epoch FROM now())::float8", &[])
        .map_err(backend_err)?
        .get(0);
    if let Some(t) = since.replace(now - 5.0) {
        let rows = client
            .query(
                "SELECT dev_eui FROM ns_sessions WHERE updated_at >= to_timestamp($1)",
                &[&(t - 5.0)],
            )
            .map_err(backend_err)?;
        let devices: Vec<DevEui> = rows
            .iter()
            .map(|r| DevEui::new(r.get::<_, i64>(0) as u64))
            .collect();
        let n = load(state, pg, &devices).map_err(backend_err)?;
        pg.reload_queue(&state.data.queue, None)?;
        tracing::info!(loaded = n, "shared store listener caught up");
    }
    while !state.is_shutting_down() {
        let (mut pending, mut queues) = (Vec::new(), Vec::new());
        {
            use postgres::fallible_iterator::FallibleIterator;
            // Wait for one notification, then take those already arrived without waiting.
            let mut notes = client.notifications();
            let first = notes
                .timeout_iter(Duration::from_millis(500))
                .next()
                .map_err(backend_err)?;
            let mut sort = |n: postgres::Notification| {
                let devices = foreign(pg, n.payload());
                if n.channel() == QUEUE_CHANNEL {
                    queues.extend(devices);
                } else {
                    pending.extend(devices);
                }
                pending.len() + queues.len()
            };
            if let Some(n) = first {
                sort(n);
                let mut more = notes.iter();
                while let Some(n) = more.next().map_err(backend_err)? {
                    if sort(n) >= 4096 {
                        break;
                    }
                }
            }
        }
        if client.is_closed() {
            return Err(StoreError::Backend("listener connection closed".into()));
        }
        if let Err(e) = load(state, pg, &pending) {
            tracing::error!(error = %e, "loading sessions from the shared store failed");
        }
        if !queues.is_empty() {
            queues.sort_unstable();
            queues.dedup();
            if let Err(e) = pg.reload_queue(&state.data.queue, Some(&queues)) {
                tracing::error!(error = %e, "loading downlink queues from the shared store failed");
            }
        }
        if let Ok(row) = client.query_one("SELECT extract(epoch FROM now())::float8", &[]) {
            *since = Some(row.get::<_, f64>(0));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_devices() {
        assert_eq!(
            parse_payload("00000000000000AB:0000000000000001,70B3D57ED0000002"),
            (
                Some(0xAB),
                vec![DevEui::new(1), DevEui::new(0x70B3_D57E_D000_0002)]
            )
        );
        assert_eq!(
            parse_payload("junk,,0000000000000003"),
            (None, vec![DevEui::new(3)])
        );
        assert_eq!(parse_payload(""), (None, vec![]));
    }
}
