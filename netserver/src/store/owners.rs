//! The gateways' owner instances in the shared state (PostgreSQL, table `ns_gateway_owners`):
//! a thread of each instance records, in one statement per tick, the gateways whose PULL_DATA
//! it holds (instance id, hand-off address, expiry), and reads the records the other instances
//! wrote into the gateway registry ([`crate::gateway::owner`]), so that a downlink for a gateway
//! another instance holds is handed to it ([`crate::gateway::handoff`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::ids::GatewayEui;

use crate::gateway::owner::{due_records, RemoteOwner};
use crate::state::State;
use crate::store::backend::StoreError;
use crate::store::embedded::backend_err;
use crate::store::pg::PgStore;

/// How often the thread records and reads: the delay before the other instances hand a
/// gateway's downlinks to a new owner.
pub const TICK: Duration = Duration::from_millis(250);

/// One row of `ns_gateway_owners`, read with ages on the database's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerRow {
    /// The gateway.
    pub gateway: GatewayEui,
    /// The owner instance.
    pub instance: u64,
    /// Its hand-off address.
    pub handoff: SocketAddr,
    /// Seconds since the record was written.
    pub age_s: f64,
    /// Seconds until it expires (negative: expired).
    pub remaining_s: f64,
}

impl OwnerRow {
    /// The record as another instance's, read at `now`; `None` if it is `me`'s.
    pub fn remote(&self, me: u64, now: Instant) -> Option<RemoteOwner> {
        let secs = |s: f64| Duration::from_secs_f64(s.clamp(0.0, 1e9));
        (self.instance != me).then(|| RemoteOwner {
            instance: self.instance,
            handoff: self.handoff,
            pulled_at: now.checked_sub(secs(self.age_s)).unwrap_or(now),
            expires: now + secs(self.remaining_s),
        })
    }
}

/// Records `gateways` as held by `instance`, reachable at `handoff`, for `ttl`: one statement.
pub fn record(
    pg: &PgStore,
    gateways: &[GatewayEui],
    instance: u64,
    handoff: SocketAddr,
    ttl: Duration,
) -> Result<(), StoreError> {
    if gateways.is_empty() {
        return Ok(());
    }
    let keys: Vec<i64> = gateways.iter().map(|g| g.as_u64() as i64).collect();
    pg.conn()?
        .execute(
            "INSERT INTO ns_gateway_owners (gateway_eui, instance, handoff, pulled_at, expires_at) \
             SELECT g, $2, $3, now(), now() + make_interval(secs => $4) FROM unnest($1::int8[]) AS g \
             ON CONFLICT (gateway_eui) DO UPDATE SET instance = excluded.instance, \
             handoff = excluded.handoff, pulled_at = excluded.pulled_at, \
             expires_at = excluded.expires_at",
            &[
                &keys,
                &(instance as i64),
                &handoff.to_string(),
                &ttl.as_secs_f64(),
            ],
        )
        .map_err(backend_err)?;
    Ok(())
}

/// The records written within the last `within` (every unexpired one when `within` covers the
/// expiry). A row whose address does not parse is skipped (the table is written by this
/// program only).
pub fn read(pg: &PgStore, within: Duration) -> Result<Vec<OwnerRow>, StoreError> {
    let rows = pg
        .conn()?
        .query(
            "SELECT gateway_eui, instance, handoff, \
             extract(epoch FROM now() - pulled_at)::float8, \
             extract(epoch FROM expires_at - now())::float8 \
             FROM ns_gateway_owners WHERE pulled_at >= now() - make_interval(secs => $1)",
            &[&within.as_secs_f64()],
        )
        .map_err(backend_err)?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(OwnerRow {
                gateway: GatewayEui::new(r.get::<_, i64>(0) as u64),
                instance: r.get::<_, i64>(1) as u64,
                handoff: r.get::<_, &str>(2).parse().ok()?,
                age_s: r.get(3),
                remaining_s: r.get(4),
            })
        })
        .collect())
}

/// Where this instance takes hand-offs and how long its records last.
#[derive(Debug, Clone, Copy)]
pub struct Ownership {
    /// This instance's id (the store's writer id).
    pub instance: u64,
    /// Its hand-off address, as the other instances reach it.
    pub handoff: SocketAddr,
    /// How long a record lasts without a new PULL_DATA.
    pub ttl: Duration,
}

/// The owner thread; [`OwnerThread::join`] waits for it after the server began shutting down.
#[derive(Debug)]
pub struct OwnerThread(std::thread::JoinHandle<()>);

impl OwnerThread {
    /// Starts recording and reading owners for `state`.
    pub fn start(state: Arc<State>, pg: PgStore, me: Ownership) -> std::io::Result<Self> {
        let h = std::thread::Builder::new()
            .name("netserver-owners".into())
            .spawn(move || owner_loop(&state, &pg, me))?;
        Ok(Self(h))
    }

    /// Waits for the thread (it stops within a tick of the shutdown).
    pub fn join(self) {
        let _ = self.0.join();
    }
}

fn owner_loop(state: &State, pg: &PgStore, me: Ownership) {
    let mut written: HashMap<GatewayEui, Instant> = HashMap::new();
    let mut last_read: Option<Instant> = None;
    let count = |event: &str, n: usize| {
        let m = &state.metrics.data.shared;
        m.with_label_values(&[event]).inc_by(n as u64);
    };
    while !state.is_shutting_down() {
        std::thread::sleep(TICK);
        let now = Instant::now();
        let g = &state.gateways;
        let held = g.held();
        written.retain(|gw, _| held.iter().any(|(h, _)| h == gw));
        let contested = |gw, pulled| {
            g.remote_owner(gw)
                .is_some_and(|r| r.pulled_at < pulled && r.expires > now)
        };
        let due = due_records(held, &written, contested, now, me.ttl / 3);
        match record(pg, &due, me.instance, me.handoff, me.ttl) {
            Ok(()) => {
                for gw in &due {
                    written.insert(*gw, now);
                    g.set_remote_owner(*gw, None);
                }
                count("gateway_owner_recorded", due.len());
            }
            Err(e) => tracing::warn!(error = %e, "gateway owners not recorded"),
        }
        // Everything at the first read (and after a failed one), then what changed since.
        let within = last_read.map_or(me.ttl, |t| now.duration_since(t)) + Duration::from_secs(2);
        match read(pg, within) {
            Ok(rows) => {
                let now = Instant::now();
                for r in rows {
                    g.set_remote_owner(r.gateway, r.remote(me.instance, now));
                }
                last_read = Some(now);
            }
            Err(e) => {
                last_read = None;
                tracing::warn!(error = %e, "gateway owners not read");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_another_instances_record_with_local_times() {
        let row = OwnerRow {
            gateway: GatewayEui::new(1),
            instance: 9,
            handoff: "127.0.0.1:4000".parse().unwrap(),
            age_s: 1.5,
            remaining_s: 58.5,
        };
        let now = Instant::now() + Duration::from_secs(10);
        assert_eq!(row.remote(1, now).map(|r| r.instance), Some(9));
        let r = row.remote(1, now).unwrap();
        assert_eq!(now - r.pulled_at, Duration::from_millis(1500));
        assert_eq!(r.expires - now, Duration::from_millis(58_500));
        assert_eq!(row.remote(9, now), None, "this instance's own record");
        let expired = OwnerRow {
            remaining_s: -3.0,
            ..row
        };
        assert_eq!(expired.remote(1, now).unwrap().expires, now);
    }
}
