//! `qr`: TR005 device-identification QR codes for installers.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use qr::labels::{self, LabelFormat};
use qr::{ChecksumMode, DevEui, DeviceCode, JoinEui, Parsed, ProfileId, QrError};

#[derive(Parser)]
#[command(
    name = "qr",
    version,
    about = "LoRa Alliance TR005 device-identification QR codes: parse, encode, render, decode, labels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a scanned code and show its fields (exit status 1 if invalid).
    Parse {
        /// The code's text, or `-` to read it from standard input (one trailing newline removed).
        text: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the canonical code for a device (with a CheckSum unless --no-checksum).
    Encode {
        /// JoinEUI, 16 hex digits.
        #[arg(long)]
        join_eui: JoinEui,
        /// DevEUI, 16 hex digits.
        #[arg(long)]
        dev_eui: DevEui,
        /// ProfileID, 8 hex digits (VendorID + VendorProfileID).
        #[arg(long, value_parser = parse_profile_id)]
        profile_id: ProfileId,
        /// OwnerToken (O).
        #[arg(long)]
        owner_token: Option<String>,
        /// Serial number (S).
        #[arg(long)]
        serial: Option<String>,
        /// Proprietary field (P).
        #[arg(long)]
        proprietary: Option<String>,
        /// Leave out the CheckSum.
        #[arg(long)]
        no_checksum: bool,
    },
    /// Draw a code (validated first) as PNG, SVG or in the terminal.
    Render {
        /// The code's text, or `-` to read it from standard input.
        text: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = RenderFormat::Ansi)]
        format: RenderFormat,
        /// Output file (required for PNG unless standard output is not a terminal).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Image size in pixels (PNG: largest whole module size that fits; SVG: width and height).
        #[arg(long)]
        size: Option<u32>,
    },
    /// Find, read and validate the QR codes in PNG or JPEG images.
    Decode {
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Print one JSON object per code (JSON Lines) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make one label per device of a join-server manifest, and an A4 index.html sheet.
    Labels {
        /// Manifest CSV (as for `joinserver devices import`).
        manifest: PathBuf,
        /// Output directory (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Label format.
        #[arg(long, value_enum, default_value_t = LabelFormatArg::Svg)]
        format: LabelFormatArg,
        /// ProfileID put in every code.
        #[arg(long, value_parser = parse_profile_id, default_value = "00000000")]
        profile_id: ProfileId,
        /// Worker threads (default: the number of CPUs).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Claim a device on a join server from its code: decode (image) or take the text, validate,
    /// claim for a home NetID, and print what happened.
    Claim {
        /// A PNG/JPEG image of the code, or the code's text.
        input: String,
        /// The join server's management API, e.g. https://js.example.com:8443 (plain http:// only
        /// to a loopback address).
        #[arg(long)]
        join_server: String,
        /// PEM file of the certificates the join server must chain to (a private CA, or the join
        /// server's self-signed DATA_DIR/tls/api.crt); default: the system's roots.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// File holding the owner's API key (from `joinserver api-keys create --role owner`).
        #[arg(long)]
        api_key_file: PathBuf,
        /// The home network's NetID (6 hex digits): only its network server may activate the device.
        #[arg(long)]
        home_net_id: protocol::ids::NetId,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RenderFormat {
    Png,
    Svg,
    Ansi,
}

#[derive(Clone, Copy, ValueEnum)]
enum LabelFormatArg {
    Svg,
    Png,
}

fn parse_profile_id(s: &str) -> Result<ProfileId, String> {
    s.parse::<ProfileId>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Parse { text, json } => {
            let text = read_text(&text)?;
            Ok(parse_cmd(&text, json))
        }
        Command::Encode {
            join_eui,
            dev_eui,
            profile_id,
            owner_token,
            serial,
            proprietary,
            no_checksum,
        } => encode_cmd(
            DeviceCode::new(join_eui, dev_eui, profile_id),
            owner_token,
            serial,
            proprietary,
            no_checksum,
        ),
        Command::Render {
            text,
            format,
            out,
            size,
        } => render_cmd(&text, format, out, size),
        Command::Decode { images, json } => Ok(decode_cmd(&images, json)),
        Command::Claim {
            input,
            join_server,
            api_key_file,
            ca_file,
            home_net_id,
        } => {
            let trust = ca_file.map_or(qr::claim::Trust::System, qr::claim::Trust::CaFile);
            Ok(claim_cmd(
                &input,
                &join_server,
                &api_key_file,
                home_net_id,
                &trust,
            ))
        }
        Command::Labels {
            manifest,
            out,
            format,
            profile_id,
            threads,
        } => labels_cmd(&manifest, &out, format, profile_id, threads),
    }
}

/// `qr encode`: `code` with the optional fields, printed.
fn encode_cmd(
    mut code: DeviceCode,
    owner_token: Option<String>,
    serial: Option<String>,
    proprietary: Option<String>,
    no_checksum: bool,
) -> Result<ExitCode> {
    if let Some(t) = owner_token {
        code = code.with_owner_token(&t)?;
    }
    if let Some(s) = serial {
        code = code.with_serial_number(&s)?;
    }
    if let Some(p) = proprietary {
        code = code.with_proprietary(&p)?;
    }
    let mode = if no_checksum {
        ChecksumMode::Omit
    } else {
        ChecksumMode::Include
    };
    println!("{}", code.encode(mode));
    Ok(ExitCode::SUCCESS)
}

/// `qr render`: the code as a PNG, SVG or terminal image, after checking it parses.
fn render_cmd(
    text: &str,
    format: RenderFormat,
    out: Option<PathBuf>,
    size: Option<u32>,
) -> Result<ExitCode> {
    let text = read_text(text)?;
    if let Err(e) = qr::parse(&text) {
        report_error(&text, &e);
        return Ok(ExitCode::FAILURE);
    }
    let bytes = match format {
        RenderFormat::Png => {
            if out.is_none() && std::io::stdout().is_terminal() {
                bail!("refusing to write PNG to a terminal: use --out FILE or redirect standard output");
            }
            qr::render::png(&text, size)?
        }
        RenderFormat::Svg => qr::render::svg(&text, size)?.into_bytes(),
        RenderFormat::Ansi => qr::render::ansi(&text)?.into_bytes(),
    };
    match out {
        Some(path) => std::fs::write(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout()
            .write_all(&bytes)
            .context("cannot write to standard output")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `qr labels`: one printable label per device of the manifest, and an index.
fn labels_cmd(
    manifest: &Path,
    out: &Path,
    format: LabelFormatArg,
    profile_id: ProfileId,
    threads: Option<usize>,
) -> Result<ExitCode> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read manifest {}", manifest.display()))?;
    let devices = labels::read_manifest(&text)?;
    let format = match format {
        LabelFormatArg::Svg => LabelFormat::Svg,
        LabelFormatArg::Png => LabelFormat::Png,
    };
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let index = labels::write_labels(&devices, profile_id, format, out, threads)?;
    eprintln!(
        "wrote {} {} labels and {}",
        devices.len(),
        format.extension(),
        index.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The argument itself, or standard input for `-` (one trailing newline removed).
fn read_text(arg: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.to_owned());
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("cannot read standard input")?;
    if buf.ends_with(b"\n") {
        buf.pop();
        if buf.ends_with(b"\r") {
            buf.pop();
        }
    }
    match String::from_utf8(buf) {
        Ok(s) => Ok(s),
        Err(e) => {
            let position = e.utf8_error().valid_up_to();
            Err(QrError::NotUtf8 { position }.into())
        }
    }
}

fn parse_cmd(text: &str, json: bool) -> ExitCode {
    match qr::parse(text) {
        Ok(p) => {
            if json {
                println!("{}", qr::report::parsed_json(&p));
            } else {
                print!("{}", parsed_human(&p));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                println!("{}", qr::report::error_json(text, &e));
            }
            report_error(text, &e);
            ExitCode::FAILURE
        }
    }
}

fn parsed_human(p: &Parsed) -> String {
    let c = &p.code;
    let mut s = String::new();
    let schema = match p.schema {
        qr::Schema::D0 => "TR005 D0".to_owned(),
        other => format!("deprecated TR005 {other}, converted to D0"),
    };
    s.push_str(&format!("valid code ({schema})\n"));
    s.push_str(&format!("  JoinEUI          {}\n", c.join_eui));
    s.push_str(&format!("  DevEUI           {}\n", c.dev_eui));
    s.push_str(&format!(
        "  ProfileID        {} (VendorID {:04X}, VendorProfileID {:04X})\n",
        c.profile_id, c.profile_id.vendor_id, c.profile_id.vendor_profile_id
    ));
    for (name, v) in [
        ("OwnerToken", &c.owner_token),
        ("SerNum", &c.serial_number),
        ("Proprietary", &c.proprietary),
    ] {
        if let Some(v) = v {
            s.push_str(&format!("  {name:<16} {v}\n"));
        }
    }
    match p.checksum {
        Some(v) => s.push_str(&format!("  CheckSum         {v:04X} (valid)\n")),
        None => {
            s.push_str("  CheckSum         none (the code cannot prove it was read correctly)\n")
        }
    }
    for u in c.unknown_extensions() {
        s.push_str(&format!(
            "  warning: unknown extension {} = {} (kept)\n",
            u.tag, u.value
        ));
    }
    s.push_str(&format!("  canonical        {c}\n"));
    s
}

/// Prints the error, the text and a caret under the position, on standard error.
fn report_error(text: &str, e: &QrError) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: invalid code: {e}");
    if let Some(other) = qr::report::other_format(text) {
        let _ = writeln!(err, "  this is a {other}, not a LoRaWAN (TR005) code");
    }
    if matches!(e, QrError::NotUtf8 { .. } | QrError::Empty) {
        return;
    }
    if let Some(pos) = e.position() {
        let shown: String = text
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let _ = writeln!(err, "  {shown}");
        let _ = writeln!(err, "  {}^", " ".repeat(pos));
    }
}

fn decode_cmd(images: &[PathBuf], json: bool) -> ExitCode {
    let mut ok = true;
    for path in images {
        let decoded = match qr::decode::decode_file(path) {
            Ok(d) => d,
            Err(e) => {
                ok = false;
                if json {
                    println!(
                        "{}",
                        json!({"file": path.display().to_string(), "valid": false, "error": e.to_string(), "kind": e.kind()})
                    );
                }
                eprintln!("error: {e}");
                continue;
            }
        };
        if decoded.unreadable > 0 {
            ok = false;
            eprintln!(
                "error: {}: {} more QR code(s) found but unreadable ({}): the image may be blurred, cut or damaged",
                path.display(),
                decoded.unreadable,
                decoded.first_failure.as_deref().unwrap_or("unknown reason")
            );
        }
        let texts = decoded.texts;
        let n = texts.len();
        for (i, text) in texts.iter().enumerate() {
            let parsed = qr::parse(text);
            if json {
                let mut v = match &parsed {
                    Ok(p) => qr::report::parsed_json(p),
                    Err(e) => qr::report::error_json(text, e),
                };
                v["file"] = Value::from(path.display().to_string());
                v["text"] = Value::from(text.as_str());
                println!("{v}");
            } else {
                println!("{} code {} of {}: {}", path.display(), i + 1, n, text);
                if let Ok(p) = &parsed {
                    print!("{}", parsed_human(p));
                }
            }
            if let Err(e) = &parsed {
                ok = false;
                eprintln!("{}: code {} of {}:", path.display(), i + 1, n);
                report_error(text, e);
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `qr claim`: each failure names its step and reason; exit status 1.
fn claim_cmd(
    input: &str,
    join_server: &str,
    api_key_file: &Path,
    home: protocol::ids::NetId,
    trust: &qr::claim::Trust,
) -> ExitCode {
    use qr::claim::{self, ClaimError};
    let result = claim::read_api_key(api_key_file)
        .and_then(|key| claim::claim_with(input, join_server, &key, home, trust));
    match result {
        Ok(c) => {
            println!(
                "claimed {} (JoinEUI {}, from {}) for owner {:?}, home NetID {}",
                c.dev_eui, c.join_eui, c.source, c.owner, c.home_net_id
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let step = match &e {
                ClaimError::ApiKeyFile { .. } => "reading the API key",
                _ => e.step().describe(),
            };
            eprintln!("qr claim: {step} failed: {e}");
            ExitCode::FAILURE
        }
    }
}
