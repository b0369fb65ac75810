//! `netserver`: the LoRaWAN network server binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use netserver::keys::{read_labeled_kek, read_secret};
use netserver::ops::config::{Config, DEFAULT_TOML};
use netserver::state::Secrets;
use protocol::ids::NetId;
use protocol::keys::LinkKey;

#[derive(Parser, Debug)]
#[command(
    name = "netserver",
    version,
    about = "LoRaWAN network server (GWMP, OTAA joins via the join server link)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve gateways until SIGINT/SIGTERM.
    Serve(Box<Serve>),
    /// Print the default configuration file (every field documented).
    Config,
}

#[derive(clap::Args, Debug)]
struct Serve {
    /// Configuration file (TOML); flags override it.
    #[arg(long, env = "NETSERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the session store.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The join server's link address, HOST:PORT.
    #[arg(long)]
    join_server: Option<String>,
    /// The link key file (32 hex digits; the join server's secrets/link.key).
    #[arg(long)]
    link_key: PathBuf,
    /// The network server KEK file (the join server's secrets/ns.kek).
    #[arg(long)]
    ns_kek: PathBuf,
    /// The application server KEK file, if this server may open AppSKey envelopes.
    #[arg(long)]
    as_kek: Option<PathBuf>,
    /// This network's NetID (6 hex digits; default 000000).
    #[arg(long)]
    net_id: Option<NetId>,
    /// GWMP listen address (default 0.0.0.0:1700).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Metrics/health HTTP listen address (disabled by default).
    #[arg(long)]
    metrics: Option<String>,
    /// Application events: a file (JSON lines, appended), `-` for stdout, udp://HOST:PORT (one
    /// event per datagram) or udp://HOST:PORT?pack=BYTES (JSON lines packed into datagrams of
    /// at most BYTES), or an MQTT broker, mqtt://HOST:PORT or mqtts://HOST:PORT[?qos=0|1]
    /// (ChirpStack's topics and JSON; [integration.mqtt]). Give it twice for both kinds.
    #[arg(long)]
    events: Vec<String>,
    /// UDP address of the application downlink input (JSON requests).
    #[arg(long)]
    downlink_listen: Option<String>,
    /// HTTP address of the application downlink input (POST /downlink).
    #[arg(long)]
    downlink_http: Option<String>,
    /// File holding the downlink inputs' bearer token (mode 0600).
    #[arg(long)]
    downlink_token_file: Option<String>,
    /// TLS certificate (PEM) of the HTTP listeners ([http] tls_cert).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the HTTP listeners ([http] tls_key).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address ([http] insecure_http), e.g. behind a
    /// TLS-terminating proxy.
    #[arg(long)]
    insecure_http: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Command::Serve(args) => {
            init_tracing();
            match serve(*args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("netserver: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NETSERVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn serve(args: Serve) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(a) = args.join_server {
        config.join_server.address = a;
    }
    if let Some(n) = args.net_id {
        config.network.net_id = n;
    }
    if let Some(l) = args.listen {
        config.gwmp.listen = l;
    }
    if let Some(m) = args.metrics {
        config.metrics.listen = m;
    }
    let mut sinks = 0;
    for e in args.events {
        if netserver::integration::mqtt::Broker::parse(e.trim()).is_ok() {
            config.integration.mqtt.url = e;
        } else {
            sinks += 1;
            anyhow::ensure!(
                sinks == 1,
                "--events: one file, stdout or UDP sink at most (and one MQTT broker)"
            );
            config.data.events = e;
        }
    }
    if let Some(d) = args.downlink_listen {
        config.data.downlink_listen = d;
    }
    if let Some(d) = args.downlink_http {
        config.data.downlink_http = d;
    }
    if let Some(d) = args.downlink_token_file {
        config.data.downlink_token_file = d;
    }
    if let Some(c) = args.tls_cert {
        config.http.tls_cert = c;
    }
    if let Some(k) = args.tls_key {
        config.http.tls_key = k;
    }
    config.http.insecure_http |= args.insecure_http;
    let secrets = Secrets {
        link_key: read_secret(&args.link_key, str::parse::<LinkKey>)?,
        ns_kek: read_labeled_kek(&args.ns_kek)?,
        as_kek: args.as_kek.as_deref().map(read_labeled_kek).transpose()?,
    };
    netserver::server::run(config, secrets, None, |a| {
        // One machine-readable line on stdout, for supervisors and tests.
        let metrics = a.metrics.map_or_else(|| "-".to_owned(), |m| m.to_string());
        println!(
            "netserver listening gwmp={} link={} metrics={}",
            a.gwmp, a.link, metrics
        );
    })
    .context("netserver stopped with an error")
}
