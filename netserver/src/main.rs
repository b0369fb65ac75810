//! `netserver`: the LoRaWAN network server binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use netserver::keys::{read_labeled_kek, read_secret};
use netserver::ops::config::{Config, DEFAULT_TOML};
use netserver::state::Secrets;
use netserver::store::pg::PgStore;
use netserver::store::restore::open_backends;
use netserver::store::url::StoreKind;
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
    /// Apply the PostgreSQL store's migrations not yet applied (`serve` applies them too).
    Migrate(StoreArgs),
    /// Store tools.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Force LoRaWAN 1.1 devices to rejoin (ForceRejoinReq at their next uplinks, spread over a
    /// window), or set their periodic rejoins (RejoinParamSetupReq): `POST /rejoin` to a running
    /// server's HTTP downlink input.
    ForceRejoin(ForceRejoinArgs),
}

/// The store a command opens: the configuration file's `[store]`, overridden by the flag and
/// the environment.
#[derive(clap::Args, Debug)]
struct StoreArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "NETSERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the embedded store.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The store ([store] url): empty for the embedded files, postgres://USER@HOST:PORT/DB for
    /// PostgreSQL.
    #[arg(long, env = "NETSERVER_STORE_URL")]
    store_url: Option<String>,
}

impl StoreArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(d) = &self.data_dir {
            config.data_dir.clone_from(d);
        }
        if let Some(u) = &self.store_url {
            config.store.url.clone_from(u);
        }
        Ok(config)
    }
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Copy the embedded store (the data directory) into an empty PostgreSQL database, then
    /// read it back and compare counts and checksums.
    Copy {
        #[command(flatten)]
        from: StoreArgs,
        /// The PostgreSQL store to copy into (its password from [store] password_file).
        #[arg(long)]
        to: String,
    },
    /// Print the store's counts and checksum (as `copy` verifies them).
    Inventory(StoreArgs),
}

#[derive(clap::Args, Debug)]
struct ForceRejoinArgs {
    /// The server's HTTP downlink input, HOST:PORT, over plain HTTP (on the server's host).
    #[arg(
        long,
        required_unless_present = "downlink_url",
        conflicts_with = "downlink_url"
    )]
    downlink_http: Option<SocketAddr>,
    /// The server's HTTP downlink input as a URL, `https://HOST:PORT` (its [http] tls_cert) or
    /// `http://HOST:PORT`.
    #[arg(long)]
    downlink_url: Option<String>,
    /// For `https://`: the CA certificates (PEM) the server's certificate must chain to (its
    /// self-signed certificate itself will do); without it, the public roots.
    #[arg(long, requires = "downlink_url")]
    ca_file: Option<PathBuf>,
    /// The downlink token file (the server's --downlink-token-file), if it has one.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A device (repeatable).
    #[arg(long = "dev-eui")]
    dev_euis: Vec<protocol::ids::DevEui>,
    /// Every device of this JoinEUI.
    #[arg(long)]
    join_eui: Option<protocol::ids::JoinEui>,
    /// Every device.
    #[arg(long)]
    all: bool,
    /// Spread the devices over this many seconds.
    #[arg(long, default_value_t = 0)]
    window_s: u64,
    /// Rejoin type to ask for: 0 (new session and radio parameters) or 2 (re-key).
    #[arg(long = "type", default_value_t = 2)]
    rejoin_type: u8,
    /// Data rate of the Rejoin-requests.
    #[arg(long, default_value_t = 0)]
    data_rate: u8,
    /// Max_Retries of ForceRejoinReq (0..=7).
    #[arg(long, default_value_t = 1)]
    max_retries: u8,
    /// Period of ForceRejoinReq (0..=7: 32 s × 2^Period between retries).
    #[arg(long, default_value_t = 0)]
    period: u8,
    /// Instead of forcing a rejoin, set periodic type 0 rejoins: MaxTimeN,MaxCountN (0..=15 each).
    #[arg(long, value_parser = parse_pair)]
    rejoin_param_setup: Option<(u8, u8)>,
}

fn parse_pair(s: &str) -> Result<(u8, u8), String> {
    let (a, b) = s.split_once(',').ok_or("expected MaxTimeN,MaxCountN")?;
    let n = |v: &str| v.trim().parse::<u8>().map_err(|e| format!("{v}: {e}"));
    Ok((n(a)?, n(b)?))
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
    /// The store ([store] url): postgres://USER@HOST:PORT/DB to share sessions and counters
    /// with other instances; empty for the embedded files in the data directory.
    #[arg(long, env = "NETSERVER_STORE_URL")]
    store_url: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Command::ForceRejoin(args) => match force_rejoin(&args) {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("netserver force-rejoin: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            init_tracing();
            report(serve(*args))
        }
        Command::Migrate(args) => report(migrate(&args)),
        Command::Store(StoreCommand::Copy { from, to }) => report(copy(&from, &to)),
        Command::Store(StoreCommand::Inventory(args)) => report(inventory(&args)),
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("netserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(args: &StoreArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    if StoreKind::of(&config.store.url).map_err(anyhow::Error::msg)? != StoreKind::Postgres {
        anyhow::bail!("migrate needs a PostgreSQL store: give --store-url postgres://...");
    }
    let pg = PgStore::connect_config(&config.store)?;
    let applied = pg.migrate()?;
    println!(
        "migrations applied: {applied:?} (schema at version {})",
        netserver::store::pg::MIGRATIONS.last().map_or(0, |m| m.0)
    );
    Ok(())
}

fn copy(from: &StoreArgs, to: &str) -> anyhow::Result<()> {
    let config = from.load()?;
    if StoreKind::of(to).map_err(anyhow::Error::msg)? != StoreKind::Postgres {
        anyhow::bail!("--to must be a postgres:// URL");
    }
    let (mut sessions, counters, _) = open_backends(&config)?;
    let mut target_config = config.store.clone();
    target_config.url = to.to_owned();
    let target = PgStore::open(&target_config)?;
    let inv = netserver::store::copy::copy(sessions.as_mut(), counters.as_ref(), &target)?;
    println!("copied and verified: {inv}");
    Ok(())
}

fn inventory(args: &StoreArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    let (mut sessions, counters, _) = open_backends(&config)?;
    let inv = netserver::store::copy::inventory(sessions.as_mut(), counters.as_ref())?;
    println!("{inv}");
    Ok(())
}

/// Sends the force-rejoin request and returns the server's answer (JSON).
fn force_rejoin(a: &ForceRejoinArgs) -> anyhow::Result<String> {
    use netserver::integration::rejoin::{post_to, ForceRejoinRequest, RejoinParamSetup};
    let req = ForceRejoinRequest {
        dev_euis: a.dev_euis.clone(),
        join_eui: a.join_eui,
        all: a.all,
        window_s: a.window_s,
        rejoin_type: a.rejoin_type,
        data_rate: a.data_rate,
        max_retries: a.max_retries,
        period: a.period,
        rejoin_param_setup: a.rejoin_param_setup.map(|(max_time_n, max_count_n)| {
            RejoinParamSetup {
                max_time_n,
                max_count_n,
            }
        }),
    };
    let token = match &a.token_file {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let base = match (&a.downlink_url, a.downlink_http) {
        (Some(url), _) => url.clone(),
        (None, Some(addr)) => format!("http://{addr}"),
        (None, None) => anyhow::bail!("--downlink-http or --downlink-url is required"),
    };
    post_to(&base, a.ca_file.as_deref(), token.as_deref(), &req).map_err(anyhow::Error::msg)
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
    if let Some(u) = args.store_url {
        config.store.url = u;
    }
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
