//! `simulator run`: load a manifest and its fleet state (merging the DevNonce log a killed run
//! left), run a scenario against a network server with every DevNonce logged before it is sent,
//! save the fleet state, and report (also after SIGINT/SIGTERM).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::{Engine, EngineConfig};
use crate::fleet::Fleet;
use crate::manifest;
use crate::net::{self, EventListen, NetConfig};
use crate::nonce_log::{self, NonceLog};
use crate::report::{Report, RunInfo};
use crate::scenario::Traffic;

/// Everything `simulator run` takes.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The manifest (its fleet state file is `<manifest>.state`).
    pub manifest: PathBuf,
    /// Network server GWMP address.
    pub netserver: SocketAddr,
    /// Further network-server instances ([`NetConfig::more_netservers`]).
    pub more_netservers: Vec<SocketAddr>,
    /// Local address for the gateway sockets.
    pub bind: IpAddr,
    /// Virtual gateways.
    pub gateways: u16,
    /// Traffic.
    pub traffic: Traffic,
    /// Whether `--duration` was given.
    pub duration_given: bool,
    /// Traffic seed.
    pub seed: u64,
    /// Where the network server's application events arrive.
    pub event_listen: Option<EventListen>,
    /// JSON report path.
    pub report_json: Option<PathBuf>,
    /// Time series path.
    pub timeseries_csv: Option<PathBuf>,
    /// Progress lines on stderr.
    pub progress: bool,
    /// Print the human table on stdout.
    pub print_table: bool,
    /// `rekey`: how to ask the network server for the forced rejoins.
    pub rekey: Option<net::Rekey>,
    /// The radio model (`--radio realistic`, `--city`); `None`: ideal.
    pub radio_model: Option<crate::radio::RadioModel>,
    /// How the gateways' packet forwarders batch what they receive into PUSH_DATAs.
    pub forwarder: crate::gateway::Forwarder,
}

/// Runs a scenario; returns the report (also written where asked).
pub fn run(o: &RunOptions) -> anyhow::Result<Report> {
    let entries = manifest::read(&o.manifest)?;
    if entries.is_empty() {
        anyhow::bail!("manifest {} has no devices", o.manifest.display());
    }
    let state_path = manifest::state_path(&o.manifest);
    // The state, with what a run that did not finish left in the DevNonce log merged in.
    let (states, log) = NonceLog::open(&state_path, &entries)?;
    let devices = entries.len() as u64;
    let fleet = Fleet::new(entries.clone(), &states, o.seed, o.gateways);
    let mut engine = Engine::new(
        EngineConfig {
            seed: o.seed,
            traffic: o.traffic.clone(),
            gateways: o.gateways,
            event_sink: o.event_listen.is_some(),
            duration_given: o.duration_given,
            forwarder: o.forwarder,
        },
        fleet,
    );
    if let Some(m) = o.radio_model {
        engine.enable_radio(m);
    }
    let result = net::run_logged(
        engine,
        &NetConfig {
            netserver: o.netserver,
            more_netservers: o.more_netservers.clone(),
            bind: o.bind,
            event_listen: o.event_listen.clone(),
            progress: o.progress,
            sink_grace: Duration::from_secs(3),
            rekey: o.rekey.clone(),
        },
        Some(log),
    );
    // On an error the log still holds every DevNonce sent: the next run merges it.
    let (engine, elapsed) = result?;
    // Fold the run's DevNonces into the state file and empty the log.
    nonce_log::compact(&state_path, &entries, &engine.fleet.nonce_states())?;
    if o.progress {
        let s = &engine.stats;
        eprintln!(
            "DevNonce log: {} records, {} fdatasync, {:.3} s waited",
            s.nonce_log_records, s.nonce_log_syncs, s.nonce_log_s
        );
    }
    let report = Report::new(
        &RunInfo {
            scenario: o.traffic.scenario.to_string(),
            region: o.traffic.radio.region().to_string(),
            radio: if o.radio_model.is_some() {
                crate::report::REALISTIC_RADIO
            } else {
                crate::report::IDEAL_RADIO
            }
            .to_owned(),
            devices,
            gateways: u64::from(o.gateways),
            seed: o.seed,
            duration_s: elapsed,
            event_sink: o.event_listen.is_some(),
            joined_at_end: engine.joined(),
            netserver: o.netserver,
        },
        &engine.stats,
    );
    if let Some(p) = &o.report_json {
        report.write_json(p)?;
    }
    if let Some(p) = &o.timeseries_csv {
        engine.series.write_csv(p)?;
    }
    if o.print_table {
        print!("{}", report.table());
    }
    Ok(report)
}
