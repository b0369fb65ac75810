//! `simulator demo`: the whole system in one process, with nothing to set up.
//!
//! 1. Generates a fleet (mixed 1.0.3 / 1.0.4 / 1.1) and its manifest in a temporary directory.
//! 2. Creates a join server data directory with fresh secrets (`joinserver::secrets::init`),
//!    imports the manifest, and starts the join server (`joinserver::server::Server`) on
//!    127.0.0.1 with an ephemeral port.
//! 3. Starts the network server (`netserver::server::run`) on 127.0.0.1, ephemeral ports, with the
//!    link key and network KEK read from the join server's secret files, as an operator copies
//!    them.
//! 4. Runs a join storm followed by steady uplinks against it over real UDP sockets, with the
//!    network server's application events sent to the simulator, and prints the report. The
//!    temporary directories are removed afterwards.
//! 5. Then, unless switched off ([`DemoOptions::city`]), a city's power cut over the modelled
//!    radio ([`crate::radio`]): a second fleet of meters placed among gateways on a plane, every
//!    meter booting within the same second, gateways that transmit one downlink at a time within
//!    their duty cycle, uplinks that collide; a fresh pair of servers with the network server's
//!    downlink scheduler on. Its report shows how long the city took to come back against the
//!    airtime lower bound, and that no gateway refused a downlink.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use protocol::ids::NetId;

use crate::manifest::{self, Params, VersionMix};
use crate::net::EventListen;
use crate::radio::RadioPlan;
use crate::report::Report;
use crate::run::{self, RunOptions};
use crate::scenario::{Scenario, Traffic};

/// What `simulator demo` takes.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Fleet size.
    pub devices: u32,
    /// Seed of the fleet and of the traffic.
    pub seed: u64,
    /// The join storm's window.
    pub join_window: Duration,
    /// How long devices report after the join window.
    pub steady: Duration,
    /// Mean interval between two uplinks of a device.
    pub uplink_interval: Duration,
    /// Virtual gateways.
    pub gateways: u16,
    /// Each transmission is heard by 1..=K gateways.
    pub heard_by: u16,
    /// The region and boot channels of devices and gateways.
    pub radio: RadioPlan,
    /// JSON report path.
    pub report_json: Option<PathBuf>,
    /// Progress lines.
    pub progress: bool,
    /// The power cut over the modelled radio that follows (`None`: none).
    pub city: Option<CityDemo>,
}

/// The demo's second part: a city's meters rejoin at once after a power cut, over the modelled
/// radio, through a network server whose downlink scheduler books every Join-accept where a
/// gateway can transmit it.
#[derive(Clone, Copy, Debug)]
pub struct CityDemo {
    /// Meters in the city.
    pub meters: u32,
    /// Gateways in the city.
    pub gateways: u16,
    /// The part ends when every meter has joined, or after this long.
    pub limit: Duration,
}

/// What `simulator demo` reports: its two parts.
#[derive(Debug)]
pub struct DemoReport {
    /// The join storm and steady uplinks over the ideal radio.
    pub fleet: Report,
    /// The power cut over the modelled radio, if it ran.
    pub city: Option<Report>,
}

/// How [`Servers::start_full`] sets the network server up.
#[derive(Default)]
struct ServerOptions {
    /// `[data] events`: the event sink (empty: none).
    events: String,
    /// `[integration]`: MQTT, webhooks.
    integration: netserver::integration::config::IntegrationConfig,
    /// The region and sub-bands.
    radio: RadioPlan,
    /// The HTTP downlink input on a loopback port (forced rejoins).
    rejoin_api: bool,
    /// `[scheduler] enabled`: off unless asked (the simulator's ideal gateways refuse nothing).
    scheduler: bool,
}

/// The UDP event sink sending to `events`. Loopback: many events per datagram spare both
/// processes a datagram each.
fn udp_events(events: Option<SocketAddr>) -> String {
    events.map_or_else(String::new, |a| format!("udp://{a}?pack=8192"))
}

/// A join server and a network server running in this process on 127.0.0.1, with their data
/// directories under a temporary directory that is removed when this is dropped.
pub struct Servers {
    js: Option<joinserver::server::Server>,
    ns: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
    gwmp: SocketAddr,
    downlink_http: Option<SocketAddr>,
    _dirs: tempfile::TempDir,
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Servers")
            .field("gwmp", &self.gwmp)
            .finish_non_exhaustive()
    }
}

impl Servers {
    /// Creates fresh secrets, imports `manifest` into a new join server, starts it, and starts a
    /// network server of NetID `net_id` linked to it, sending its application events as UDP
    /// datagrams to `events` if given.
    pub fn start(
        manifest: &Path,
        net_id: NetId,
        events: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        Self::start_in(manifest, net_id, events, &RadioPlan::default())
    }

    /// [`Self::start`] with the network server in `radio`'s region and sub-bands
    /// (`[network] region` and `enabled_sub_bands`), its downlink scheduler off: the simulator's
    /// gateways without the radio model transmit anything asked.
    pub fn start_in(
        manifest: &Path,
        net_id: NetId,
        events: Option<SocketAddr>,
        radio: &RadioPlan,
    ) -> anyhow::Result<Self> {
        Self::start_full(
            manifest,
            net_id,
            ServerOptions {
                events: udp_events(events),
                radio: *radio,
                ..ServerOptions::default()
            },
        )
    }

    /// [`Self::start_in`] with the network server's downlink scheduler on or off (`[scheduler]
    /// enabled`): on for gateways that refuse what they cannot transmit (`--radio realistic`).
    pub fn start_with(
        manifest: &Path,
        net_id: NetId,
        events: Option<SocketAddr>,
        radio: &RadioPlan,
        scheduler: bool,
    ) -> anyhow::Result<Self> {
        Self::start_full(
            manifest,
            net_id,
            ServerOptions {
                events: udp_events(events),
                radio: *radio,
                scheduler,
                ..ServerOptions::default()
            },
        )
    }

    /// [`Self::start`] with the network server's HTTP downlink input on a loopback port
    /// ([`Self::downlink_http`], no token), where the `rekey` scenario asks for forced rejoins.
    pub fn start_with_rejoin_api(
        manifest: &Path,
        net_id: NetId,
        events: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        Self::start_full(
            manifest,
            net_id,
            ServerOptions {
                events: udp_events(events),
                rejoin_api: true,
                ..ServerOptions::default()
            },
        )
    }

    /// [`Self::start`] with the network server's application integrations (`[integration]`:
    /// MQTT, webhooks) instead of a UDP event sink.
    pub fn start_integrated(
        manifest: &Path,
        net_id: NetId,
        integration: netserver::integration::config::IntegrationConfig,
    ) -> anyhow::Result<Self> {
        Self::start_full(
            manifest,
            net_id,
            ServerOptions {
                integration,
                ..ServerOptions::default()
            },
        )
    }

    fn start_full(manifest: &Path, net_id: NetId, opts: ServerOptions) -> anyhow::Result<Self> {
        // A free loopback port for the HTTP downlink input (the server binds it at once).
        let downlink_http = if opts.rejoin_api {
            Some(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?)
        } else {
            None
        };
        let dirs = tempfile::Builder::new()
            .prefix("lorawan-servers-")
            .tempdir()?;
        let js_dir = dirs.path().join("joinserver");
        let ns_dir = dirs.path().join("netserver");
        std::fs::create_dir_all(&js_dir)?;
        std::fs::create_dir_all(&ns_dir)?;

        let js = start_join_server(&js_dir, manifest)?;

        // The network server, with the link key and network KEK read from the join server's
        // secret files, as an operator copies them.
        let ns_secrets = netserver_secrets(&js_dir)?;
        let ns_config = netserver_config(ns_dir, net_id, js.link_addr(), downlink_http, opts);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (addr_tx, addr_rx) = mpsc::channel();
        let ns = std::thread::Builder::new()
            .name("netserver".into())
            .spawn(move || {
                netserver::server::run(ns_config, ns_secrets, Some(stop_rx), |a| {
                    let _ = addr_tx.send(a.gwmp);
                })
            })?;
        let gwmp = match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                js.shutdown();
                let r = ns
                    .join()
                    .map_err(|_| anyhow!("the network server panicked"))?;
                r.context("the network server did not start")?;
                return Err(anyhow!("the network server did not start within 60 s"));
            }
        };
        Ok(Self {
            js: Some(js),
            ns: Some(ns),
            stop,
            gwmp,
            downlink_http,
            _dirs: dirs,
        })
    }

    /// The network server's HTTP downlink input ([`Self::start_with_rejoin_api`]).
    pub fn downlink_http(&self) -> Option<SocketAddr> {
        self.downlink_http
    }

    /// The network server's GWMP address.
    pub fn gwmp(&self) -> SocketAddr {
        self.gwmp
    }

    /// The join server's link address.
    pub fn join_server_link(&self) -> Option<SocketAddr> {
        self.js.as_ref().map(|j| j.link_addr())
    }

    /// The join server's `joinserver_joins_total{result}` counter, e.g. for `dev_nonce_replayed`.
    pub fn join_server_joins(&self, result: &str) -> u64 {
        self.js
            .as_ref()
            .map_or(0, |j| j.metrics.joins.with_label_values(&[result]).get())
    }

    /// Stops both servers (network server first) and reports how the network server ended.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    /// Stops both servers after a run against them: the run's result, or the first error of
    /// the run and the stop.
    fn stop_after<T>(self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        let stopped = self.stop();
        let value = result?;
        stopped?;
        Ok(value)
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let r = match self.ns.take() {
            Some(ns) => ns
                .join()
                .map_err(|_| anyhow!("the network server panicked"))
                .and_then(|r| r.context("the network server stopped with an error")),
            None => Ok(()),
        };
        if let Some(js) = self.js.take() {
            js.shutdown();
        }
        r
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Runs the demo; returns its reports (also printed).
pub fn run(o: &DemoOptions) -> anyhow::Result<DemoReport> {
    let fleet = run_fleet(o)?;
    let city = match o.city {
        Some(c) => {
            eprintln!();
            Some(run_city(o, &c)?)
        }
        None => None,
    };
    Ok(DemoReport { fleet, city })
}

/// Writes a fleet of `devices` (1.0.3, 1.0.4 and 1.1) into `dir`; its manifest path.
fn write_fleet(dir: &Path, devices: u32, seed: u64, net_id: NetId) -> anyhow::Result<PathBuf> {
    let manifest_path = dir.join("fleet.csv");
    let entries = manifest::generate(&Params {
        devices,
        seed,
        versions: VersionMix::Mix,
        join_eui: manifest::DEFAULT_JOIN_EUI,
        home_net_id: net_id,
    });
    manifest::write(&manifest_path, &entries)?;
    eprintln!(
        "demo: {} devices (1.0.3, 1.0.4 and 1.1) in {}",
        entries.len(),
        manifest_path.display()
    );
    Ok(manifest_path)
}

/// Logs where the servers listen.
fn announce(servers: &Servers) {
    eprintln!(
        "demo: join server link on {}, network server GWMP on {}",
        servers
            .join_server_link()
            .map_or_else(|| "-".into(), |a| a.to_string()),
        servers.gwmp()
    );
}

/// The demo's first part: a join storm and steady uplinks over the ideal radio.
fn run_fleet(o: &DemoOptions) -> anyhow::Result<Report> {
    let tmp = tempfile::Builder::new().prefix("lorawan-demo-").tempdir()?;
    let net_id = NetId::new(0).expect("NetID 000000");

    // 1. The fleet.
    let manifest_path = write_fleet(tmp.path(), o.devices, o.seed, net_id)?;

    // 2, 3. The servers, the fleet provisioned; the network server's application events come to
    // the simulator, which counts what was delivered.
    // The event socket is bound now and stays bound until the run reads from it.
    let events = EventListen::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let servers = Servers::start_in(&manifest_path, net_id, Some(events.local_addr()?), &o.radio)?;
    announce(&servers);

    // 4. Join storm, then steady uplinks.
    let join_window_us = o.join_window.as_micros() as u64;
    let result = run::run(&RunOptions {
        event_listen: Some(events),
        report_json: o.report_json.clone(),
        ..demo_run(
            &servers,
            manifest_path,
            o,
            o.gateways,
            Traffic {
                scenario: Scenario::Steady,
                join_window_us,
                duration_us: join_window_us + o.steady.as_micros() as u64,
                heard_by: o.heard_by,
                ..demo_traffic(o)
            },
        )
    });
    servers.stop_after(result)
}

/// The demo's second part ([`CityDemo`]): a power cut over the modelled radio, with a fleet and
/// servers of its own.
fn run_city(o: &DemoOptions, c: &CityDemo) -> anyhow::Result<Report> {
    eprintln!(
        "demo: a power cut in a city of {} meters and {} gateways, over the modelled radio \
         (airtime, duty cycle, collisions); the network server's downlink scheduler on",
        c.meters, c.gateways
    );
    let tmp = tempfile::Builder::new()
        .prefix("lorawan-demo-city-")
        .tempdir()?;
    let net_id = NetId::new(0).expect("NetID 000000");
    let seed = o.seed.wrapping_add(1);
    let manifest_path = write_fleet(tmp.path(), c.meters, seed, net_id)?;
    let servers = Servers::start_with(&manifest_path, net_id, None, &o.radio, true)?;
    announce(&servers);
    let result = run::run(&RunOptions {
        seed,
        report_json: o.report_json.as_deref().map(city_report_path),
        radio_model: Some(crate::radio::RadioModel {
            city: true,
            ..Default::default()
        }),
        ..demo_run(
            &servers,
            manifest_path,
            o,
            c.gateways,
            Traffic {
                // Every meter boots within the same second, as when the power comes back.
                scenario: Scenario::Storm,
                join_window_us: 1_000_000,
                duration_us: c.limit.as_micros() as u64,
                ..demo_traffic(o)
            },
        )
    });
    servers.stop_after(result)
}

/// A run of the demo's against `servers`: `manifest` through `gateways` gateways with
/// `traffic`, the table printed, for exactly the traffic's duration (a storm ends sooner once
/// every device has joined).
fn demo_run(
    servers: &Servers,
    manifest: PathBuf,
    o: &DemoOptions,
    gateways: u16,
    traffic: Traffic,
) -> RunOptions {
    RunOptions {
        manifest,
        netserver: servers.gwmp(),
        more_netservers: Vec::new(),
        bind: std::net::IpAddr::from([127, 0, 0, 1]),
        gateways,
        traffic,
        duration_given: true,
        seed: o.seed,
        event_listen: None,
        report_json: None,
        timeseries_csv: None,
        progress: o.progress,
        print_table: true,
        rekey: None,
        radio_model: None,
        forwarder: crate::gateway::Forwarder::default(),
    }
}

/// The demo's traffic defaults: unconfirmed 12-byte uplinks at the region's default data rate,
/// every transmission heard by one gateway, nothing lost; the scenario and its times to be set.
fn demo_traffic(o: &DemoOptions) -> Traffic {
    Traffic {
        scenario: Scenario::Storm,
        join_window_us: 0,
        duration_us: 0,
        uplink_interval_us: o.uplink_interval.as_micros() as u64,
        confirmed_ratio: 0.0,
        payload_size: 12,
        loss: 0.0,
        heard_by: 1,
        data_rate: o.radio.default_data_rate(),
        radio: o.radio,
    }
}

/// Where the city part's JSON report goes beside `--report-json PATH`: `PATH` with `-city`
/// before its extension (`report.json` → `report-city.json`).
pub fn city_report_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "report".into(), |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(e) => format!("{stem}-city.{}", e.to_string_lossy()),
        None => format!("{stem}-city"),
    };
    path.with_file_name(name)
}

/// The demo's join server: fresh secrets in `js_dir`, the fleet of `manifest` imported,
/// listening on loopback.
fn start_join_server(js_dir: &Path, manifest: &Path) -> anyhow::Result<joinserver::server::Server> {
    joinserver::secrets::init(js_dir).context("creating the join server's secrets")?;
    let js_secrets = joinserver::secrets::Secrets::load(js_dir)?;
    {
        use joinserver::store::Store as _;
        let mut store = joinserver::store::SqliteStore::open(js_dir)?;
        store.check_master(&joinserver::atrest::check_value(&js_secrets.master))?;
        let text = std::fs::read_to_string(manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        joinserver::devices::import(
            &mut store,
            &js_secrets.master,
            &text,
            joinserver::devices::Format::Csv,
        )
        .map_err(|e| anyhow!("importing the manifest into the join server: {e:?}"))?;
    }
    let mut js_config = joinserver::config::Config::default();
    js_config.link.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    js_config.metrics.listen = String::new();
    joinserver::server::Server::start(js_dir, &js_config).context("starting the join server")
}

/// The network server's secrets, read from the join server's secret files in `js_dir`.
fn netserver_secrets(js_dir: &Path) -> anyhow::Result<netserver::state::Secrets> {
    let secrets_dir = joinserver::secrets::dir(js_dir);
    Ok(netserver::state::Secrets {
        link_key: netserver::keys::read_secret(
            &secrets_dir.join(joinserver::secrets::LINK_KEY),
            str::parse::<protocol::keys::LinkKey>,
        )?,
        ns_kek: netserver::keys::read_labeled_kek(&secrets_dir.join(joinserver::secrets::NS_KEK))?,
        as_kek: None,
    })
}

/// The demo network server's configuration: loopback listeners, the join server at
/// `js_link`, the HTTP downlink input at `downlink_http` if any, and `opts`.
fn netserver_config(
    ns_dir: PathBuf,
    net_id: NetId,
    js_link: SocketAddr,
    downlink_http: Option<SocketAddr>,
    opts: ServerOptions,
) -> netserver::ops::config::Config {
    let ServerOptions {
        events,
        integration,
        radio,
        scheduler,
        ..
    } = opts;
    let defaults = netserver::ops::config::Config::default();
    netserver::ops::config::Config {
        data_dir: ns_dir,
        network: netserver::ops::config::NetworkConfig {
            net_id,
            region: radio.region(),
            enabled_sub_bands: radio.sub_bands(),
            ..defaults.network
        },
        gwmp: netserver::ops::config::GwmpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..defaults.gwmp
        },
        join_server: netserver::ops::config::JoinServerConfig {
            address: js_link.to_string(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..defaults.join_server
        },
        metrics: netserver::ops::config::MetricsConfig {
            listen: String::new(),
        },
        scheduler: netserver::ops::config::SchedulerConfig {
            enabled: scheduler,
            ..defaults.scheduler
        },
        data: netserver::ops::config::DataConfig {
            events,
            downlink_http: downlink_http.map_or_else(String::new, |a| a.to_string()),
            ..defaults.data
        },
        integration,
        ..defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_city_report_goes_beside_the_fleet_report() {
        assert_eq!(
            city_report_path(Path::new("/tmp/r/report.json")),
            Path::new("/tmp/r/report-city.json")
        );
        assert_eq!(city_report_path(Path::new("out")), Path::new("out-city"));
        assert_eq!(
            city_report_path(Path::new("a.b/r.tar.json")),
            Path::new("a.b/r.tar-city.json")
        );
    }
}
