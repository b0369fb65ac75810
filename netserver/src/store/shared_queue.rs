//! The application downlink queue shared by every instance on one PostgreSQL store (table
//! `ns_downlink_queue`): a downlink queued through any instance's input is sent by whichever
//! instance handles the device's next uplink, in the order queued, exactly once.
//!
//! - The input inserts the item (its id, from the table's sequence, is the one the application
//!   gets) and `NOTIFY`s [`QUEUE_CHANNEL`] naming the device, in one transaction.
//! - Every instance keeps the queue in memory ([`crate::store::queue::DownlinkQueue`], which the
//!   uplink core reads without waiting), loaded at start and reloaded for the devices each
//!   notification names ([`crate::store::sync`]).
//! - A downlink carrying an item leaves only if the emitter's counter transaction deletes the
//!   item's row ([`take`], in [`crate::store::counters::CounterBackend::commit_taking`]): when
//!   two instances answer the same uplink, or one answers from a queue not yet reloaded, the
//!   row is deleted once and one downlink leaves. The FCntDown the other took is committed and
//!   skipped (a device accepts any higher FCntDown). The transaction notifies the devices, so
//!   the other instances drop the item.

use std::collections::HashMap;

use protocol::ids::DevEui;
use r2d2_postgres::postgres;

use crate::store::backend::StoreError;
use crate::store::embedded::backend_err;
use crate::store::queue::{DownlinkQueue, QueueFull, QueuedDownlink};

/// The channel a change of a device's queue notifies: `WRITER:DEVEUI,DEVEUI,...` as
/// [`crate::store::pg::SESSIONS_CHANNEL`].
pub const QUEUE_CHANNEL: &str = "netserver_queue";

/// DevEUIs per notification (a payload is at most 8,000 bytes).
const NOTIFY_CHUNK: usize = 400;

fn eui_sql(d: DevEui) -> i64 {
    d.as_u64() as i64
}

fn notify(
    tx: &mut postgres::Transaction<'_>,
    devices: &[DevEui],
    writer: u64,
) -> Result<(), StoreError> {
    let mut devices = devices.to_vec();
    devices.sort_unstable();
    devices.dedup();
    for chunk in devices.chunks(NOTIFY_CHUNK) {
        let list: Vec<String> = chunk.iter().map(ToString::to_string).collect();
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&QUEUE_CHANNEL, &format!("{writer:016X}:{}", list.join(","))],
        )
        .map_err(backend_err)?;
    }
    Ok(())
}

/// Queues `item` (its id is ignored: the table gives one) for `dev_eui` unless `per_device`
/// items already wait, notifying as `writer`; the id given and how many items now wait.
pub fn push(
    c: &mut postgres::Client,
    writer: u64,
    dev_eui: DevEui,
    item: &QueuedDownlink,
    per_device: usize,
) -> Result<Result<(u64, usize), QueueFull>, StoreError> {
    let mut tx = c.transaction().map_err(backend_err)?;
    // One writer at a time per device, so that the bound holds across instances.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&eui_sql(dev_eui)])
        .map_err(backend_err)?;
    let waiting: i64 = tx
        .query_one(
            "SELECT count(*) FROM ns_downlink_queue WHERE dev_eui = $1",
            &[&eui_sql(dev_eui)],
        )
        .map_err(backend_err)?
        .get(0);
    if waiting >= per_device as i64 {
        return Ok(Err(QueueFull(per_device)));
    }
    let id: i64 = tx
        .query_one(
            "INSERT INTO ns_downlink_queue (dev_eui, f_port, payload, confirmed) \
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[
                &eui_sql(dev_eui),
                &i32::from(item.f_port),
                &item.payload,
                &item.confirmed,
            ],
        )
        .map_err(backend_err)?
        .get(0);
    notify(&mut tx, &[dev_eui], writer)?;
    tx.commit().map_err(backend_err)?;
    Ok(Ok((id as u64, waiting as usize + 1)))
}

/// The items waiting for `devices` (every device named has an entry, empty if none waits), in
/// the order queued; `None`: every device's.
pub fn load(
    c: &mut postgres::Client,
    devices: Option<&[DevEui]>,
) -> Result<HashMap<DevEui, Vec<QueuedDownlink>>, StoreError> {
    let cols = "SELECT dev_eui, id, f_port, payload, confirmed FROM ns_downlink_queue";
    let rows = match devices {
        Some(d) => {
            let keys: Vec<i64> = d.iter().map(|d| eui_sql(*d)).collect();
            c.query(
                &format!("{cols} WHERE dev_eui = ANY($1) ORDER BY id"),
                &[&keys],
            )
        }
        None => c.query(&format!("{cols} ORDER BY id"), &[]),
    }
    .map_err(backend_err)?;
    let mut out: HashMap<DevEui, Vec<QueuedDownlink>> = devices
        .unwrap_or_default()
        .iter()
        .map(|d| (*d, Vec::new()))
        .collect();
    for r in rows {
        let f_port = u8::try_from(r.get::<_, i32>(2)).unwrap_or(0);
        out.entry(DevEui::new(r.get::<_, i64>(0) as u64))
            .or_default()
            .push(QueuedDownlink {
                id: r.get::<_, i64>(1) as u64,
                f_port,
                payload: r.get(3),
                confirmed: r.get(4),
            });
    }
    Ok(out)
}

/// Loads the queues of `devices` (`None`: all) into `queue`, replacing what it held for them.
pub fn reload(
    c: &mut postgres::Client,
    queue: &DownlinkQueue,
    devices: Option<&[DevEui]>,
) -> Result<usize, StoreError> {
    let loaded = load(c, devices)?;
    let n = loaded.len();
    for (d, items) in loaded {
        queue.replace(d, items);
    }
    Ok(n)
}

/// Deletes the rows of `items` inside the counters' transaction `tx` and notifies their
/// devices; the ids deleted (those still queued).
pub fn take(
    tx: &mut postgres::Transaction<'_>,
    items: &[(DevEui, u64)],
    writer: u64,
) -> Result<Vec<u64>, StoreError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = items.iter().map(|(_, id)| *id as i64).collect();
    let taken: Vec<u64> = tx
        .query(
            "DELETE FROM ns_downlink_queue WHERE id = ANY($1) RETURNING id",
            &[&ids],
        )
        .map_err(backend_err)?
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect();
    let devices: Vec<DevEui> = items.iter().map(|(d, _)| *d).collect();
    notify(tx, &devices, writer)?;
    Ok(taken)
}
