//! `joinserver`: the LoRaWAN join server's command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use httpsec::tls::SelfSigned;
use joinserver::atrest;
use joinserver::bi::tokens::PeerTokens;
use joinserver::config::{self, Config};
use joinserver::devices::Format;
use joinserver::onboarding::backend::OnboardBackend;
use joinserver::onboarding::db::{Actor, OnboardStore, Role};
use joinserver::onboarding::import::ReadSource;
use joinserver::onboarding::manifest_sig::TrustedKeys;
use joinserver::onboarding::service::{OnbError, Onboarding};
use joinserver::secrets::{self, Created, Secrets};
use joinserver::server::Server;
use joinserver::store::onboard_copy::OnboardRows;
use joinserver::store::pg_onboard::PgOnboard;
use joinserver::store::postgres::PgStore;
use joinserver::store::{SqliteStore, Store, StoredDevice};
use protocol::ids::DevEui;

#[derive(Parser)]
#[command(name = "joinserver", version, about = "LoRaWAN join server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct DataDir {
    /// The data directory: the store and secrets/.
    #[arg(long, env = "JOINSERVER_DATA_DIR")]
    data_dir: PathBuf,
    /// A PostgreSQL store shared by several join servers (postgres://user@host:port/db),
    /// instead of DATA_DIR/joinserver.db (overrides [store] url of DATA_DIR/joinserver.toml).
    #[arg(long, env = "JOINSERVER_STORE_URL")]
    store_url: Option<String>,
}

impl DataDir {
    /// The store URL in force: the flag (or its variable), else `[store] url` of `config`; a
    /// PostgreSQL URL, or `None` for the embedded store.
    fn postgres_url(&self, config: &Config) -> Option<String> {
        let url = self.store_url.as_deref().unwrap_or(&config.store.url);
        joinserver::store::postgres::is_postgres_url(url).then(|| url.to_owned())
    }

    /// [`Self::postgres_url`] with the configuration of the data directory.
    fn postgres_url_default(&self) -> Result<Option<String>> {
        Ok(self.postgres_url(&load_config(&self.data_dir, None)?))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Creates the store, the secrets (0600) and the API's self-signed TLS certificate and key
    /// (0600) if they do not exist; never overwrites. Prints the certificate's fingerprint.
    Init {
        #[command(flatten)]
        dir: DataDir,
        /// A DNS name or IP address clients use to reach the API, added to the self-signed
        /// certificate beside localhost, 127.0.0.1 and ::1 (repeatable).
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
    },
    /// Provisioned devices.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Runs the join server until SIGINT or SIGTERM.
    Serve {
        #[command(flatten)]
        dir: DataDir,
        /// Configuration file (default: DATA_DIR/joinserver.toml if it exists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// UDP address for the JS↔NS link (overrides link.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// TCP address for /metrics and /health (overrides metrics.listen; "" disables).
        #[arg(long)]
        metrics: Option<String>,
        /// TCP address for the HTTP management API (overrides api.listen; "" disables).
        #[arg(long)]
        api_listen: Option<String>,
        /// Serve the API in plain HTTP on a non-loopback address (sets api.insecure_http), e.g.
        /// behind a TLS-terminating proxy. Without it, plain HTTP is refused there.
        #[arg(long)]
        insecure_http: bool,
        /// TCP address for LoRaWAN Backend Interfaces (TS002) over HTTPS (overrides
        /// backend_interfaces.listen; "" disables).
        #[arg(long)]
        bi_listen: Option<String>,
    },
    /// Management API keys.
    ApiKeys {
        #[command(subcommand)]
        command: ApiKeysCommand,
    },
    /// Network servers on the link (peers), each with its own link key and network KEK.
    Peers {
        #[command(subcommand)]
        command: PeersCommand,
    },
    /// Applies the PostgreSQL store's schema migrations it lacks (`serve` does too, at start)
    /// and prints the schema version.
    Migrate {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Moving the state between stores.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Prints the default configuration file.
    Config,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copies the embedded store of DATA_DIR (devices with root keys wrapped under master.key,
    /// nonce states, last joins, ownership, retired JoinNonces; tenants, API key hashes, the
    /// audit log, peer token hashes) into an empty PostgreSQL store, then verifies it: row
    /// counts and a SHA-256 over every row must match.
    Copy {
        #[command(flatten)]
        dir: DataDir,
        /// The PostgreSQL store (postgres://user@host:port/db).
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum PeersCommand {
    /// Adds the network server of a NetID: creates its link key and network KEK (0600) under
    /// DATA_DIR/secrets/, records both in the store wrapped under master.key, and prints the
    /// paths of its secrets (copy them to that network server). Running join servers on the
    /// store (on PostgreSQL: every instance) apply it within a second. The first peer, NetID
    /// 000000 with secrets/link.key and secrets/ns.kek, exists from `init` on while
    /// `[[link.peers]]` lists none.
    Add {
        #[command(flatten)]
        dir: DataDir,
        /// The network server's NetID (6 hex digits).
        #[arg(long)]
        net_id: protocol::ids::NetId,
    },
    /// Creates a bearer token for a peer's LoRaWAN Backend Interfaces requests and prints it, and
    /// nothing else, on stdout (only its hash is stored). The network server sends it as
    /// `Authorization: Bearer <token>`.
    Token {
        #[command(flatten)]
        dir: DataDir,
        /// The network server's NetID (6 hex digits): a peer of the join server.
        #[arg(long)]
        net_id: protocol::ids::NetId,
        /// Configuration file (default: DATA_DIR/joinserver.toml if it exists).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ApiKeysCommand {
    /// Creates an API key and prints it, and nothing else, on stdout. Only its hash is stored.
    Create {
        #[command(flatten)]
        dir: DataDir,
        /// The key's role.
        #[arg(long, value_enum)]
        role: Role,
        /// The key's tenant (created if new): owner keys of one tenant act for the same tenant.
        #[arg(long)]
        name: String,
        /// The key expires after this many days (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Sets the tenant's home NetID (6 hex digits): the network its installers claim for,
        /// shown to its keys by `GET /api/v1/me` (default: the tenant's is kept, or none).
        #[arg(long)]
        home_net_id: Option<protocol::ids::NetId>,
    },
    /// Lists the API keys (id, tenant, role, creation, expiry, revocation; never a key).
    List {
        #[command(flatten)]
        dir: DataDir,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revokes an API key by id: it authenticates nothing from now on (a running server too).
    Revoke {
        #[command(flatten)]
        dir: DataDir,
        /// The key's id (16 hex digits, from `api-keys list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Imports devices from CSV or JSON lines, all or nothing.
    Import {
        #[command(flatten)]
        dir: DataDir,
        /// Input format (default: guessed from the content).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Detached Ed25519 signature of the manifest (hex, base64 or raw); it must verify under
        /// one of the configuration's `api.trusted_manifest_keys`.
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Configuration file (default: DATA_DIR/joinserver.toml if it exists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Writes the owner tokens generated for rows without one to this new file (CSV,
        /// 0600) instead of stdout.
        #[arg(long)]
        owner_tokens: Option<PathBuf>,
        /// The manifest file.
        file: PathBuf,
    },
    /// Lists devices (never their keys).
    List {
        #[command(flatten)]
        dir: DataDir,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows one device (never its keys).
    Show {
        #[command(flatten)]
        dir: DataDir,
        /// DevEUI (16 hex digits).
        dev_eui: DevEui,
    },
    /// Removes a device.
    Remove {
        #[command(flatten)]
        dir: DataDir,
        /// DevEUI (16 hex digits).
        dev_eui: DevEui,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("joinserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init { dir, tls_names } => init(&dir, &tls_names),
        Command::Config => {
            print!("{}", config::default_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            dir,
            config,
            listen,
            metrics,
            api_listen,
            insecure_http,
            bi_listen,
        } => serve(
            &dir.data_dir,
            config,
            Overrides {
                listen,
                metrics,
                api_listen,
                insecure_http,
                store_url: dir.store_url,
                bi_listen,
            },
        ),
        Command::ApiKeys { command } => api_keys(command),
        Command::Migrate { dir } => migrate(&dir),
        Command::Store {
            command: StoreCommand::Copy { dir, to },
        } => store_copy(&dir.data_dir, &to),
        Command::Peers {
            command: PeersCommand::Add { dir, net_id },
        } => peers_add(&dir, net_id),
        Command::Peers {
            command:
                PeersCommand::Token {
                    dir,
                    net_id,
                    config,
                },
        } => peers_token(&dir, net_id, config),
        Command::Devices { command } => match command {
            DevicesCommand::Import {
                dir,
                format,
                signature,
                config,
                owner_tokens,
                file,
            } => import(
                &dir,
                format,
                &file,
                signature.as_deref(),
                config,
                owner_tokens.as_deref(),
            ),
            DevicesCommand::List { dir, json } => list(&dir, json),
            DevicesCommand::Show { dir, dev_eui } => show(&dir, dev_eui),
            DevicesCommand::Remove { dir, dev_eui } => {
                let mut store = open_any_store(&dir)?;
                if store.remove_device(dev_eui)? {
                    println!("removed {dev_eui}");
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("joinserver: no device {dev_eui}");
                    Ok(ExitCode::FAILURE)
                }
            }
        },
    }
}

fn peers_add(dir: &DataDir, net_id: protocol::ids::NetId) -> Result<ExitCode> {
    let data_dir = dir.data_dir.as_path();
    let config = load_config(data_dir, None)?;
    let master = Secrets::load(data_dir)?.master;
    let mut store: Box<dyn Store> = match dir.postgres_url(&config) {
        Some(url) => Box::new(PgStore::connect(&url, 2)?),
        None => Box::new(open_store(data_dir)?),
    };
    let added = joinserver::peers::add_to(data_dir, &config, &mut *store, &master, net_id)?;
    for c in &added.created {
        match c {
            Created::New(p) => println!("created {}", p.display()),
            Created::Kept(p) => println!("kept    {} (exists)", p.display()),
        }
    }
    println!("added   NetID {net_id} to the store");
    println!();
    println!("The network server of NetID {net_id} needs (copy them with mode 0600):");
    println!("  {}  link key", added.link_key_file.display());
    println!("  {}  network KEK", added.ns_kek_file.display());
    println!("Running join servers on this store apply it within a second.");
    Ok(ExitCode::SUCCESS)
}

fn peers_token(
    dir: &DataDir,
    net_id: protocol::ids::NetId,
    config_file: Option<PathBuf>,
) -> Result<ExitCode> {
    let data_dir = dir.data_dir.as_path();
    let config = load_config(data_dir, config_file)?;
    let stored = match dir.postgres_url(&config) {
        Some(url) => PgStore::connect(&url, 2)?.link_peers()?,
        None => open_store(data_dir)?.link_peers()?,
    };
    if !joinserver::peers::is_peer(&config, &stored, net_id) {
        anyhow::bail!(
            "NetID {net_id} is not a peer of the join server (add it first: joinserver peers add \
             --net-id {net_id})"
        );
    }
    // On PostgreSQL, the token works at every join server on the database.
    let mut store: Box<dyn PeerTokens> = match dir.postgres_url(&config) {
        Some(url) => Box::new(PgStore::connect(&url, 2)?),
        None => Box::new(open_store(data_dir)?),
    };
    let token = joinserver::bi::tokens::create(&mut *store, net_id, joinserver::link::now_ms())?;
    println!("{}", token.expose());
    Ok(ExitCode::SUCCESS)
}

fn api_keys(command: ApiKeysCommand) -> Result<ExitCode> {
    match command {
        ApiKeysCommand::Create {
            dir,
            role,
            name,
            expires_in_days,
            home_net_id,
        } => {
            let svc = onboarding_cli(&dir, None)?;
            let expires_ms = expires_in_days
                .map(|d| joinserver::onboarding::db::now_ms() + i64::from(d) * 86_400_000);
            let (key, _id) = svc.create_api_key_until(&Actor::cli(), role, &name, expires_ms)?;
            if let Some(n) = home_net_id {
                svc.set_tenant_home_net_id(&Actor::cli(), &name, Some(n))?;
            }
            println!("{}", key.expose());
        }
        ApiKeysCommand::List { dir, json } => {
            let svc = onboarding_cli(&dir, None)?;
            let keys = svc.list_api_keys(&Actor::cli())?;
            if json {
                for k in &keys {
                    println!("{}", serde_json::to_string(k)?);
                }
            } else {
                println!(
                    "{:<16}  {:<12}  {:<24}  {:<15}  {:<15}  {:<15}",
                    "ID", "ROLE", "TENANT", "CREATED_MS", "EXPIRES_MS", "REVOKED_MS"
                );
                let opt = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
                for k in &keys {
                    println!(
                        "{:<16}  {:<12}  {:<24}  {:<15}  {:<15}  {:<15}",
                        k.id,
                        k.role.as_str(),
                        k.name,
                        k.created_ms,
                        opt(k.expires_ms),
                        opt(k.revoked_ms)
                    );
                }
                eprintln!("{} key(s)", keys.len());
            }
        }
        ApiKeysCommand::Revoke { dir, id } => {
            let svc = onboarding_cli(&dir, None)?;
            match svc.revoke_api_key(&Actor::cli(), &id) {
                Ok(()) => println!("revoked {id}"),
                Err(OnbError::NotFound) => {
                    eprintln!("joinserver: no valid API key {id}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init(dir: &DataDir, tls_names: &[String]) -> Result<ExitCode> {
    use std::os::unix::fs::PermissionsExt;
    let data_dir = dir.data_dir.as_path();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    // The store and the secrets live here: owner-only.
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} owner-only", data_dir.display()))?;
    let created = secrets::init(data_dir)?;
    let secrets = Secrets::load(data_dir)?;
    let pg_url = dir.postgres_url_default()?;
    let mut store: Box<dyn Store> = match &pg_url {
        Some(url) => Box::new(PgStore::connect(url, 2)?),
        None => Box::new(SqliteStore::open(data_dir)?),
    };
    store.check_master(&atrest::check_value(&secrets.master))?;
    for c in &created {
        match c {
            Created::New(p) => println!("created {}", p.display()),
            Created::Kept(p) => println!("kept    {} (exists)", p.display()),
        }
    }
    match &pg_url {
        Some(url) => println!("store   {} (PostgreSQL)", display_url(url)),
        None => println!(
            "store   {}",
            data_dir.join(joinserver::store::DB_FILE).display()
        ),
    }
    println!(
        "peer    NetID {} (secrets/link.key, secrets/ns.kek); another NetID needs \
         `joinserver peers add --net-id N`",
        joinserver::peers::FIRST_PEER
    );
    let config = load_config(data_dir, None)?;
    if !config.api.tls_cert.as_os_str().is_empty() {
        let (cert, key) = (
            config::resolve(data_dir, &config.api.tls_cert),
            config::resolve(data_dir, &config.api.tls_key),
        );
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
        names.extend(tls_names.iter().cloned());
        match httpsec::tls::ensure_self_signed(&cert, &key, &names)? {
            SelfSigned::Created(fp) => {
                println!("created {} (self-signed, API HTTPS)", cert.display());
                println!("created {}", key.display());
                println!("api certificate sha256 {fp}");
            }
            SelfSigned::Kept(fp) => {
                println!("kept    {} (exists)", cert.display());
                println!("api certificate sha256 {fp}");
            }
        }
    }
    let s = secrets::dir(data_dir);
    println!();
    println!("The network server needs (copy them with mode 0600):");
    println!(
        "  {}  link key (authenticates the JS<->NS link)",
        s.join(secrets::LINK_KEY).display()
    );
    println!(
        "  {}  network KEK, label {:?} (unwraps NwkSKey / FNwkSIntKey, SNwkSIntKey, NwkSEncKey)",
        s.join(secrets::NS_KEK).display(),
        secrets.ns_kek.label
    );
    println!("The application server needs:");
    println!(
        "  {}  application KEK, label {:?} (unwraps the AppSKey)",
        s.join(secrets::AS_KEK).display(),
        secrets.as_kek.label
    );
    println!(
        "{} stays here: it encrypts the root keys at rest.",
        s.join(secrets::MASTER_KEY).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The store `dir` names: PostgreSQL (migrated) or the embedded file, which must exist.
fn open_any_store(dir: &DataDir) -> Result<Box<dyn Store>> {
    Ok(match dir.postgres_url_default()? {
        Some(url) => Box::new(PgStore::connect(&url, 2)?),
        None => Box::new(open_store(&dir.data_dir)?),
    })
}

fn migrate(dir: &DataDir) -> Result<ExitCode> {
    let Some(url) = dir.postgres_url_default()? else {
        bail!("migrate: no PostgreSQL store (--store-url, JOINSERVER_STORE_URL or [store] url); the embedded store migrates itself when opened");
    };
    let mut store = PgStore::connect_unmigrated(&url, 2)?;
    let applied = store.migrate()?;
    for v in &applied {
        println!("applied migration {v}");
    }
    println!(
        "schema version {} at {}",
        store.schema_version()?,
        display_url(&url)
    );
    Ok(ExitCode::SUCCESS)
}

fn store_copy(data_dir: &Path, to: &str) -> Result<ExitCode> {
    if !joinserver::store::postgres::is_postgres_url(to) {
        bail!("--to: not a postgres:// URL");
    }
    let secrets = Secrets::load(data_dir)?;
    let check = atrest::check_value(&secrets.master);
    let mut from = open_store(data_dir)?;
    from.check_master(&check)?;
    let mut target = PgStore::connect(to, 2)?;
    target.check_master(&check)?;
    let started = std::time::Instant::now();
    let devices = from.load_devices()?;
    let ownership = from.ownership_rows()?;
    let retired = from.retired_join_nonces()?;
    target.import_copy(&devices, &ownership, &retired)?;
    let (a, b) = (from.fingerprint()?, target.fingerprint()?);
    println!(
        "copied {} devices, {} ownership rows, {} retired JoinNonces in {:.2} s",
        b.devices,
        b.ownership,
        b.retired,
        started.elapsed().as_secs_f64()
    );
    println!("source sha256 {}", hex::encode(a.sha256));
    println!("target sha256 {}", hex::encode(b.sha256));
    if a != b {
        bail!("verification failed: the copy differs from the source (counts or checksum)");
    }
    println!("verified: counts and checksum match");
    // The onboarding state: tenants, API key hashes, the audit log, peer token hashes.
    drop(OnboardStore::open(data_dir)?); // brings older onboarding tables up to date
    let onboarding = OnboardRows::read_sqlite(&mut from)?;
    onboarding.write_postgres(&mut target)?;
    let (a, b) = (
        onboarding.fingerprint(),
        OnboardRows::read_postgres(&mut target)?.fingerprint(),
    );
    let counts: Vec<String> = b.counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!("copied {}", counts.join(", "));
    println!("source sha256 {}", hex::encode(a.sha256));
    println!("target sha256 {}", hex::encode(b.sha256));
    if a != b {
        bail!("verification failed: the onboarding copy differs from the source");
    }
    println!("verified: counts and checksum match");
    // The link peers `peers add` recorded (wrapped under the same master key, checked above).
    let peers = from.link_peers()?;
    for p in &peers {
        target.add_link_peer(p)?;
    }
    let copied = target.link_peers()?;
    println!("copied {} link peers", peers.len());
    if peers.iter().any(|p| !copied.contains(p)) {
        bail!("verification failed: a link peer differs in the copy");
    }
    Ok(ExitCode::SUCCESS)
}

/// A store URL without its password, for printing.
fn display_url(url: &str) -> String {
    joinserver::store::postgres::display_url(url)
}

fn open_store(data_dir: &Path) -> Result<SqliteStore> {
    if !data_dir.join(joinserver::store::DB_FILE).exists() {
        bail!(
            "no store in {} (run `joinserver init --data-dir {}` first)",
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(SqliteStore::open(data_dir)?)
}

fn load_config(data_dir: &Path, config_file: Option<PathBuf>) -> Result<Config> {
    let path = config_file.or_else(|| {
        let p = data_dir.join("joinserver.toml");
        p.exists().then_some(p)
    });
    Ok(match &path {
        Some(p) => Config::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => Config::default(),
    })
}

/// The onboarding service on the command line, on the store `dir` names (no running server to
/// update: a running server picks up imports through the store's generation counter, and, on
/// PostgreSQL, its notification).
fn onboarding_cli(dir: &DataDir, config: Option<&Config>) -> Result<Onboarding> {
    let data_dir = dir.data_dir.as_path();
    let secrets = Secrets::load(data_dir)?;
    let check = atrest::check_value(&secrets.master);
    let default = load_config(data_dir, None)?;
    let config = config.unwrap_or(&default);
    let db: Box<dyn OnboardBackend> = match dir.postgres_url(config) {
        Some(url) => {
            let mut store = PgStore::connect(&url, 2)?;
            store.check_master(&check)?;
            Box::new(PgOnboard::new(store))
        }
        None => {
            open_store(data_dir)?.check_master(&check)?;
            Box::new(OnboardStore::open(data_dir)?)
        }
    };
    let trusted = TrustedKeys::parse_with(
        &config.api.trusted_manifest_keys,
        &config.api.manufacturer_keys,
    )
    .map_err(|e| anyhow::anyhow!("api.{e}"))?;
    Ok(
        Onboarding::new(db, None, secrets.master, trusted, config.api.claim_limits())
            .with_min_owner_token_len(config.api.min_owner_token_len),
    )
}

fn import(
    dir: &DataDir,
    format: Option<Format>,
    file: &Path,
    signature: Option<&Path>,
    config_file: Option<PathBuf>,
    owner_tokens: Option<&Path>,
) -> Result<ExitCode> {
    let data_dir = dir.data_dir.as_path();
    let config = load_config(data_dir, config_file)?;
    let svc = onboarding_cli(dir, Some(&config))?;
    // Streamed from the file, like an API upload: the file is never held whole in memory.
    let manifest =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut source = ReadSource::new(manifest);
    let sig = signature
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let require = config.api.require_signed_cli_imports;
    let started = std::time::Instant::now();
    match svc.import_stream(&Actor::cli(), &mut source, format, sig.as_deref(), require) {
        Ok(r) => {
            use std::io::Write;
            writeln!(
                std::io::stdout(),
                "imported {} devices in {:.2} s{}",
                r.imported,
                started.elapsed().as_secs_f64(),
                r.signed_by
                    .as_deref()
                    .map_or_else(String::new, |k| format!(" (signed by trusted key {k})"))
            )
            .context("writing to stdout")?;
            let tokens: Vec<(String, String)> = r
                .generated_owner_tokens
                .iter()
                .map(|t| (t.dev_eui.clone(), t.owner_token.clone()))
                .collect();
            write_owner_tokens(&tokens, owner_tokens)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(OnbError::Manifest(errors, total)) => Ok(bad_rows(file, &errors, total)),
        Err(e @ OnbError::Signature(_)) => {
            eprintln!("joinserver: {}: {e}", file.display());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// Reports a manifest's bad rows (`total` of them, `errors` listed); nothing was imported.
fn bad_rows(file: &Path, errors: &[joinserver::devices::RowError], total: usize) -> ExitCode {
    for e in errors {
        eprintln!("{}: {e}", file.display());
    }
    if total > errors.len() {
        eprintln!("{}: … and {} more", file.display(), total - errors.len());
    }
    eprintln!(
        "joinserver: {total} bad row(s) in {}; nothing imported",
        file.display()
    );
    ExitCode::FAILURE
}

/// Writes the owner tokens generated by an import (DevEUI, token) as CSV to a new 0600 file, or
/// to stdout.
fn write_owner_tokens(tokens: &[(String, String)], file: Option<&Path>) -> Result<()> {
    use std::io::Write;
    if tokens.is_empty() {
        return Ok(());
    }
    let mut csv = String::from("dev_eui,owner_token\n");
    for (dev_eui, token) in tokens {
        csv.push_str(&format!("{dev_eui},{token}\n"));
    }
    match file {
        Some(p) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)
                .with_context(|| format!("creating {}", p.display()))?;
            f.write_all(csv.as_bytes())?;
            eprintln!(
                "{} generated owner token(s) written to {}",
                tokens.len(),
                p.display()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(csv.as_bytes())
                .and_then(|()| out.flush())
                .context("writing the generated owner tokens to stdout")?;
        }
    }
    Ok(())
}

fn device_json(d: &StoredDevice) -> serde_json::Value {
    serde_json::json!({
        "dev_eui": d.dev_eui.to_string(),
        "join_eui": d.join_eui.to_string(),
        "mac_version": d.mac_version.as_str(),
        "has_nwk_key": d.nwk_key_wrapped.is_some(),
        "home_net_id": d.home_net_id.map(|n| n.to_string()),
        "owner_token": d.owner_token,
        "last_dev_nonce": d.nonces.last_dev_nonce,
        "last_join_nonce": d.nonces.last_join_nonce,
        "used_dev_nonces": d.nonces.used_dev_nonces.len(),
    })
}

fn list(dir: &DataDir, json: bool) -> Result<ExitCode> {
    let mut store = open_any_store(dir)?;
    let all = store.load_devices()?;
    if json {
        for d in &all {
            println!("{}", device_json(d));
        }
    } else {
        println!(
            "{:<16}  {:<16}  {:<7}  {:<6}  {:<14}  {:>6}",
            "DEV_EUI", "JOIN_EUI", "VERSION", "HOME", "LAST_DEVNONCE", "JOINNONCE"
        );
        for d in &all {
            println!(
                "{:<16}  {:<16}  {:<7}  {:<6}  {:<14}  {:>6}",
                d.dev_eui.to_string(),
                d.join_eui.to_string(),
                d.mac_version.as_str(),
                d.home_net_id.map_or("-".into(), |n| n.to_string()),
                d.nonces
                    .last_dev_nonce
                    .map_or("-".into(), |n| n.to_string()),
                d.nonces.last_join_nonce
            );
        }
        eprintln!("{} device(s)", all.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn show(dir: &DataDir, dev_eui: DevEui) -> Result<ExitCode> {
    let mut store = open_any_store(dir)?;
    match store.get_device(dev_eui)? {
        Some(d) => {
            println!("{}", serde_json::to_string_pretty(&device_json(&d))?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("joinserver: no device {dev_eui}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `serve`'s flags that override the configuration.
struct Overrides {
    listen: Option<SocketAddr>,
    metrics: Option<String>,
    api_listen: Option<String>,
    insecure_http: bool,
    store_url: Option<String>,
    bi_listen: Option<String>,
}

fn serve(data_dir: &Path, config_file: Option<PathBuf>, o: Overrides) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let path = config_file.or_else(|| {
        let p = data_dir.join("joinserver.toml");
        p.exists().then_some(p)
    });
    let mut config = match &path {
        Some(p) => Config::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => Config::default(),
    };
    if let Some(l) = o.listen {
        config.link.listen = l;
    }
    if let Some(m) = o.metrics {
        config.metrics.listen = m;
    }
    if let Some(a) = o.api_listen {
        config.api.listen = a;
    }
    config.api.insecure_http |= o.insecure_http;
    if let Some(u) = o.store_url {
        config.store.url = u;
    }
    if let Some(b) = o.bi_listen {
        config.backend_interfaces.listen = b;
    }
    let server = Server::start(data_dir, &config)?;
    // One line on stdout that scripts and tests can read.
    println!(
        "joinserver listening link={} metrics={} api={} api_scheme={} bi={} bi_scheme={}",
        server.link_addr(),
        server
            .metrics_addr()
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        server
            .api_addr()
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        server.api_scheme().unwrap_or("-"),
        server
            .bi_addr()
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        server.bi_scheme().unwrap_or("-")
    );
    tracing::info!(link = %server.link_addr(), metrics = ?server.metrics_addr(), "serving");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!("shutting down: draining and flushing");
    server.shutdown();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
