//! `simulator`: manifests, load runs and the all-in-one demo. See `docs/simulator.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use protocol::ids::{JoinEui, NetId};
use protocol::region::{Region, RegionError};
use simulator::manifest::{self, Params, VersionMix};
use simulator::radio::RadioPlan;
use simulator::run::{self, RunOptions};
use simulator::scenario::{Dur, Scenario, Traffic};

/// mimalloc rather than glibc malloc: see the workspace Cargo.toml.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "simulator",
    version,
    about = "Virtual LoRaWAN meters and gateways for load-testing the join server and network server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write a device manifest (the CSV `joinserver devices import` reads) and its fleet state file.
    Manifest(ManifestArgs),
    /// Run a scenario against a network server.
    Run(Box<RunArgs>),
    /// Run the whole system in one process: a join server and a network server on loopback with
    /// temporary data directories and fresh secrets, the fleet provisioned, a join storm, then
    /// steady uplinks; prints the report.
    Demo(DemoArgs),
    /// Measure the simulator alone: fleet memory and datagrams generated per second, sent to a
    /// local sink that only counts (no servers; no device joins).
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// Fleet size.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    devices: u32,
    /// Seed of the fleet and the traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The join storm: every device joins within this window.
    #[arg(long, default_value = "10s")]
    join_window: Dur,
    /// Steady reporting after the join window.
    #[arg(long, default_value = "20s")]
    steady: Dur,
    /// Mean interval between two uplinks of a device (held to the sub-band's 1 % duty cycle).
    #[arg(long, default_value = "10s")]
    uplink_interval: Dur,
    /// Virtual gateways.
    #[arg(long, default_value_t = 2)]
    gateways: u16,
    /// Each transmission is heard by 1..=K gateways.
    #[arg(long, default_value_t = 2)]
    heard_by: u16,
    #[command(flatten)]
    radio: RadioArgs,
    /// Write the JSON report here (the city's beside it, `-city` before the extension).
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Meters in the second part, a city's power cut over the modelled radio (airtime, duty
    /// cycle, collisions; the network server's downlink scheduler on); 0 skips it.
    #[arg(long, default_value_t = 300)]
    city_meters: u32,
    /// Gateways of that city (a grid 3 km apart, the meters over the same area).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    city_gateways: u16,
    /// The city's part ends when every meter has joined, or after this long.
    #[arg(long, default_value = "240s")]
    city_limit: Dur,
}

/// `--radio`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RadioMode {
    /// Every transmission heard as `--heard-by` and `--loss` say; gateways send anything.
    Ideal,
    /// Airtime, duty cycle, collisions ([`simulator::radio::RadioModel`]).
    Realistic,
}

/// `--region` and `--sub-bands`.
#[derive(clap::Args, Debug)]
struct RadioArgs {
    /// Region (RP002 common name): EU868, US915, AU915, AS923-1 (or AS923), AS923-2, AS923-3,
    /// AS923-4, KR920, IN865.
    #[arg(long, default_value = "EU868")]
    region: Region,
    /// US915 / AU915: the sub-bands (1..=8) devices start on and gateways listen on, e.g.
    /// `2` or `1,2`; default 2.
    #[arg(long, value_delimiter = ',')]
    sub_bands: Vec<u8>,
}

impl RadioArgs {
    fn plan(&self) -> anyhow::Result<RadioPlan> {
        RadioPlan::new(self.region, &self.sub_bands).map_err(|e| match e {
            RegionError::SubBand(_) if !self.region.is_fixed_plan() => {
                anyhow::anyhow!("--sub-bands applies to US915 and AU915 only")
            }
            e => anyhow::anyhow!("--sub-bands: {e}"),
        })
    }
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Fleet size.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    devices: u32,
    /// Every device sends one Join-request within this window; shorter than the simulator can
    /// keep up with means it generates flat out.
    #[arg(long, default_value = "1s")]
    window: Dur,
    /// Virtual gateways.
    #[arg(long, default_value_t = 1)]
    gateways: u16,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Log every DevNonce durably before its Join-request is sent, as `simulator run` does (to a
    /// temporary directory), to measure what crash safety costs.
    #[arg(long)]
    nonce_log: bool,
    /// The radio model, as for `run` (what collision judging costs).
    #[arg(long = "radio", value_enum, default_value_t = RadioMode::Ideal)]
    radio_model: RadioMode,
    /// A city, as for `run` (implies `--radio realistic`).
    #[arg(long)]
    city: bool,
}

#[derive(clap::Args, Debug)]
struct ManifestArgs {
    /// Number of devices.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    devices: u32,
    /// Seed for DevEUIs, root keys and owner tokens.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MAC version of every device, or `mix` (1.0.3, 1.0.4 and 1.1 in equal parts).
    #[arg(long, default_value = "1.0.4")]
    mac_version: VersionMix,
    /// JoinEUI of every device (16 hex digits).
    #[arg(long, default_value_t = manifest::DEFAULT_JOIN_EUI)]
    join_eui: JoinEui,
    /// NetID of the home network server, written as `home_net_id`.
    #[arg(long, default_value = "000000")]
    home_net_id: NetId,
    /// Output CSV; the fleet state goes to `<out>.state`.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The manifest written by `simulator manifest` (its `<manifest>.state` is read and updated).
    #[arg(long)]
    manifest: PathBuf,
    /// The network server's GWMP (UDP) address, `HOST:PORT` (a name is resolved once, to an
    /// address of the `--bind` address's family). Several instances on one shared store:
    /// `HOST:PORT,HOST:PORT,...`, gateway i sending to the (i mod n)-th.
    #[arg(long)]
    netserver: String,
    /// Number of virtual gateways, each with its own UDP socket.
    #[arg(long, default_value_t = 1)]
    gateways: u16,
    /// Each transmission is heard by 1..=K gateways.
    #[arg(long, default_value_t = 1)]
    heard_by: u16,
    /// What the fleet does.
    #[arg(long, value_enum, default_value_t = Scenario::Storm)]
    scenario: Scenario,
    /// Devices without a session join at random moments within this window.
    #[arg(long, default_value = "10s")]
    join_window: Dur,
    /// Run length. steady: reporting stops then (default 60s). storm, power-restore: an upper
    /// bound (default: until every device has joined).
    #[arg(long)]
    duration: Option<Dur>,
    /// Mean time between two uplinks of a device (±10 % jitter); an uplink the EU868 sub-band's
    /// 1 % duty cycle does not allow yet waits for it (e.g. one per 6.17 s at SF7, 12 bytes).
    #[arg(long, default_value = "60s")]
    uplink_interval: Dur,
    /// Fraction of uplinks sent confirmed (0..=1).
    #[arg(long, default_value_t = 0.0)]
    confirmed_ratio: f64,
    /// Application payload bytes per uplink.
    #[arg(long, default_value_t = 12)]
    payload_size: usize,
    /// Probability that a transmission is heard by no gateway (0..=1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Data rate of joins and uplinks, until a LinkADRReq changes it: a LoRa uplink DR of the
    /// region (EU868 0 = SF12 … 5 = SF7; US915 0 = SF10 … 3 = SF7, 4 = SF8/500 kHz). Default:
    /// the region's SF7/125 kHz (EU868 5, US915 3).
    #[arg(long)]
    data_rate: Option<u8>,
    #[command(flatten)]
    radio: RadioArgs,
    /// How the radio is modelled: `ideal` (every transmission heard as --heard-by and --loss
    /// say, gateways send whatever they are asked) or `realistic` (gateways transmit one
    /// downlink at a time within their duty cycle and answer TX_ACK errors otherwise, uplinks
    /// collide, a transmitting gateway hears nothing).
    #[arg(long = "radio", value_enum, default_value_t = RadioMode::Ideal)]
    radio_model: RadioMode,
    /// Capture margin of `--radio realistic`: of two overlapping uplinks on one channel and
    /// spreading factor, the stronger survives if it is this many dB above the other.
    #[arg(long, default_value_t = simulator::radio::reception::DEFAULT_CAPTURE_DB)]
    capture_margin: f64,
    /// Place the gateways on a grid 3 km apart and the meters over the same area: each meter
    /// reaches the gateways its link budget allows and joins at the data rate its link allows
    /// (--heard-by, --loss and --data-rate no longer apply). Implies --radio realistic.
    #[arg(long)]
    city: bool,
    /// How often each gateway's packet forwarder reads what it received, as lora_pkt_fwd does
    /// (it sleeps 10 ms when its receive FIFO is empty): everything received since the last read
    /// goes upstream together, in PUSH_DATAs of at most --gateway-max-rxpk entries. 0: each
    /// reception at once, alone in its PUSH_DATA.
    #[arg(long, default_value = "10ms")]
    gateway_fetch_interval: Dur,
    /// Most `rxpk` entries in one PUSH_DATA (lora_pkt_fwd's NB_PKT_MAX: 8 for the SX1301
    /// forwarder, 255 for the SX1302 one; the network server drops a PUSH_DATA with more than its
    /// `gwmp.max_rxpk_per_datagram`, 64 by default).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..))]
    gateway_max_rxpk: u8,
    /// Traffic seed: same seed, same traffic in the same order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the JSON report here.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Write per-second rates here.
    #[arg(long)]
    timeseries_csv: Option<PathBuf>,
    /// Listen here for the network server's application events (JSON over UDP) and count what it
    /// delivered.
    #[arg(long, conflicts_with = "delivery")]
    event_listen: Option<SocketAddr>,
    /// Count delivered uplinks from ChirpStack's MQTT events instead:
    /// mqtt://[USER@]HOST:PORT[?topic=FILTER&qos=0|1&password_file=PATH&ca_file=PEM] (or
    /// mqtts://), subscribed to application/+/device/+/event/up at QoS 1 by default; works
    /// against any network server that publishes ChirpStack's MQTT integration events.
    #[arg(long)]
    delivery: Option<String>,
    /// Local address of the gateway sockets.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// rekey: the network server's HTTP downlink input (HOST:PORT, plain HTTP on loopback),
    /// asked to force the fleet's rejoins (`POST /rejoin`) once every device has joined.
    #[arg(long)]
    rekey_http: Option<SocketAddr>,
    /// rekey: the file holding that input's bearer token (--downlink-token-file), if any.
    #[arg(long)]
    rekey_token_file: Option<PathBuf>,
    /// rekey: the window the forced rejoins (type 0, a new DevAddr each) are spread over.
    #[arg(long, default_value = "60s")]
    rekey_window: Dur,
}

fn check_ratio(name: &str, v: f64) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&v) {
        anyhow::bail!("{name} must be between 0 and 1, got {v}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Manifest(a) => manifest_cmd(a),
        Cmd::Run(a) => run_cmd(*a),
        Cmd::Demo(a) => demo_cmd(a),
        Cmd::Bench(a) => bench_cmd(a),
    }
}

/// `simulator manifest`.
fn manifest_cmd(a: ManifestArgs) -> anyhow::Result<()> {
    let entries = manifest::generate(&Params {
        devices: a.devices,
        seed: a.seed,
        versions: a.mac_version,
        join_eui: a.join_eui,
        home_net_id: a.home_net_id,
    });
    manifest::write(&a.out, &entries)?;
    let state = manifest::state_path(&a.out);
    // A fresh fleet: fresh counters, and no DevNonce log of an earlier fleet to merge.
    simulator::nonce_log::compact(&state, &entries, &vec![Default::default(); entries.len()])?;
    eprintln!(
        "wrote {} devices to {} and their fleet state to {}",
        entries.len(),
        a.out.display(),
        state.display()
    );
    Ok(())
}

/// `simulator run`.
fn run_cmd(a: RunArgs) -> anyhow::Result<()> {
    check_run_args(&a)?;
    let radio = a.radio.plan()?;
    let data_rate = a.data_rate.unwrap_or_else(|| radio.default_data_rate());
    radio
        .check(data_rate, a.payload_size)
        .map_err(anyhow::Error::msg)?;
    let rekey = rekey_request(&a)?;
    let default_duration = match a.scenario {
        Scenario::Steady | Scenario::Rekey => "60s".parse::<Dur>().context("default duration")?,
        _ => Dur(std::time::Duration::from_secs(3600)),
    };
    let (netserver, more_netservers) = simulator::net::resolve_list(&a.netserver, a.bind)?;
    let opts = RunOptions {
        manifest: a.manifest,
        netserver,
        more_netservers,
        bind: a.bind,
        gateways: a.gateways,
        traffic: Traffic {
            scenario: a.scenario,
            join_window_us: a.join_window.as_micros(),
            duration_us: a.duration.unwrap_or(default_duration).as_micros(),
            uplink_interval_us: a.uplink_interval.as_micros().max(1),
            confirmed_ratio: a.confirmed_ratio,
            payload_size: a.payload_size,
            loss: a.loss,
            heard_by: a.heard_by,
            data_rate,
            radio,
        },
        duration_given: a.duration.is_some(),
        seed: a.seed,
        event_listen: match a.delivery {
            Some(url) => Some(simulator::net::EventListen::Mqtt(
                simulator::delivery::MqttDelivery::parse(&url)?,
            )),
            None => a.event_listen.map(simulator::net::EventListen::Addr),
        },
        report_json: a.report_json,
        timeseries_csv: a.timeseries_csv,
        progress: !a.quiet,
        print_table: true,
        rekey,
        radio_model: (a.city || a.radio_model == RadioMode::Realistic).then_some(
            simulator::radio::RadioModel {
                capture_db: a.capture_margin,
                city: a.city,
                ..Default::default()
            },
        ),
        forwarder: simulator::gateway::Forwarder {
            fetch_interval_us: a.gateway_fetch_interval.as_micros(),
            max_rxpk: usize::from(a.gateway_max_rxpk),
        },
    };
    run::run(&opts)?;
    Ok(())
}

/// `simulator run`'s checks of its options against each other.
fn check_run_args(a: &RunArgs) -> anyhow::Result<()> {
    check_ratio("--confirmed-ratio", a.confirmed_ratio)?;
    check_ratio("--loss", a.loss)?;
    if !(0.0..=60.0).contains(&a.capture_margin) {
        anyhow::bail!("--capture-margin must be between 0 and 60 dB");
    }
    if a.gateways == 0 {
        anyhow::bail!("--gateways must be at least 1");
    }
    if a.heard_by == 0 || a.heard_by > a.gateways {
        anyhow::bail!(
            "--heard-by must be between 1 and --gateways ({})",
            a.gateways
        );
    }
    Ok(())
}

/// The forced rejoins `--scenario rekey` asks the network server for.
fn rekey_request(a: &RunArgs) -> anyhow::Result<Option<simulator::net::Rekey>> {
    Ok(match (a.scenario, a.rekey_http) {
        (Scenario::Rekey, None) => {
            anyhow::bail!(
                "--scenario rekey needs --rekey-http (the network server's --downlink-http)"
            )
        }
        (Scenario::Rekey, Some(http)) => Some(simulator::net::Rekey {
            http,
            token: a
                .rekey_token_file
                .as_deref()
                .map(std::fs::read_to_string)
                .transpose()
                .context("reading --rekey-token-file")?,
            request: netserver::integration::rejoin::ForceRejoinRequest::all(
                0,
                a.rekey_window.0.as_secs(),
            ),
        }),
        _ => None,
    })
}

/// `simulator demo`.
fn demo_cmd(a: DemoArgs) -> anyhow::Result<()> {
    if a.gateways == 0 || a.heard_by == 0 || a.heard_by > a.gateways {
        anyhow::bail!("--heard-by must be between 1 and --gateways");
    }
    simulator::demo::run(&simulator::demo::DemoOptions {
        devices: a.devices,
        seed: a.seed,
        join_window: a.join_window.0,
        steady: a.steady.0,
        uplink_interval: a.uplink_interval.0,
        gateways: a.gateways,
        heard_by: a.heard_by,
        radio: a.radio.plan()?,
        report_json: a.report_json,
        progress: !a.quiet,
        city: (a.city_meters > 0).then_some(simulator::demo::CityDemo {
            meters: a.city_meters,
            gateways: a.city_gateways,
            limit: a.city_limit.0,
        }),
    })?;
    Ok(())
}

/// `simulator bench`.
fn bench_cmd(a: BenchArgs) -> anyhow::Result<()> {
    let r = simulator::bench::run(
        a.devices,
        a.window.0,
        a.gateways.max(1),
        a.seed,
        a.nonce_log,
        (a.city || a.radio_model == RadioMode::Realistic).then_some(simulator::radio::RadioModel {
            city: a.city,
            ..Default::default()
        }),
    )?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
