//! `qr claim`: claim a device on a join server from its TR005 code, in four steps, each of which
//! says what failed and why:
//!
//! 1. **decode**: read the code from an image (or take the text as given);
//! 2. **validate**: parse it, verify the CheckSum, require an OwnerToken;
//! 3. **claim**: `PUT /api/v1/devices/{dev_eui}/claim` on the join server's management API with
//!    the owner token and the home NetID, authenticated by an API key (`owner` role), over HTTPS
//!    verified against the system's roots or a private CA ([`Trust`]); plain `http://` only to a
//!    loopback address, so the key and the token never cross a network in clear;
//! 4. **report** what happened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::ids::NetId;

use crate::decode::{self, DecodeError};
use crate::{parse, DevEui, JoinEui, QrError};

/// The step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Step 1: reading the code from the image.
    Decode,
    /// Step 2: validating the code.
    Validate,
    /// Step 3: claiming on the join server.
    Claim,
}

impl Step {
    /// `1 (decode)`, `2 (validate)`, `3 (claim)`.
    pub fn describe(self) -> &'static str {
        match self {
            Step::Decode => "step 1 (decode)",
            Step::Validate => "step 2 (validate)",
            Step::Claim => "step 3 (claim)",
        }
    }
}

/// Why a claim failed. Messages never contain the owner token or the API key.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The image could not be read, or holds no readable code.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The image holds several codes: which one to claim is ambiguous.
    #[error("{0} QR codes found in the image; crop it to the one device to claim")]
    SeveralCodes(usize),
    /// The argument is neither an existing image file nor TR005 text. (Not echoed: it may be a
    /// code holding an owner token.)
    #[error("the argument is neither an existing image file nor a TR005 code (LW:D0:…)")]
    NotCodeOrFile,
    /// The code is not a valid TR005 code (bad checksum, bad field, …).
    #[error("invalid code: {0}")]
    Invalid(#[from] QrError),
    /// The code carries no OwnerToken.
    #[error("the code has no owner token (O field): this device cannot be claimed with it")]
    NoOwnerToken,
    /// The API key file cannot be read.
    #[error("cannot read the API key file {path}: {reason}")]
    ApiKeyFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A plain `http://` URL to a host that is not a loopback address.
    #[error(
        "refusing plain HTTP to {0}: the API key and the owner token would cross the network in \
         clear; use https://"
    )]
    InsecureUrl(String),
    /// The join server could not be reached.
    #[error("join server unreachable at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The transport's reason.
        reason: String,
    },
    /// The owner token is wrong.
    #[error("wrong owner token: the join server refused it")]
    WrongToken,
    /// The device is already claimed.
    #[error("device {0} is already claimed (its owner must release it first)")]
    AlreadyClaimed(DevEui),
    /// The device is locked.
    #[error("device {0} is locked by an administrator")]
    Locked(DevEui),
    /// Too many failed attempts.
    #[error("too many failed claim attempts; retry in {0} s")]
    RateLimited(u64),
    /// The join server does not know the device.
    #[error("device {0} is unknown to the join server")]
    UnknownDevice(DevEui),
    /// The API key is not accepted.
    #[error("the API key is not accepted (HTTP {0}): check --api-key-file and its role (owner)")]
    Unauthorized(u16),
    /// Any other answer.
    #[error("the join server answered HTTP {status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
}

impl ClaimError {
    /// The step that failed.
    pub fn step(&self) -> Step {
        match self {
            ClaimError::Decode(_) | ClaimError::SeveralCodes(_) | ClaimError::NotCodeOrFile => {
                Step::Decode
            }
            ClaimError::Invalid(_) | ClaimError::NoOwnerToken => Step::Validate,
            _ => Step::Claim,
        }
    }

    /// A short stable name.
    pub fn kind(&self) -> &'static str {
        match self {
            ClaimError::Decode(DecodeError::NoCode { .. }) => "no_qr_found",
            ClaimError::Decode(e) => e.kind(),
            ClaimError::SeveralCodes(_) => "several_codes",
            ClaimError::NotCodeOrFile => "not_code_or_file",
            ClaimError::Invalid(QrError::ChecksumMismatch { .. }) => "bad_checksum",
            ClaimError::Invalid(e) => e.kind(),
            ClaimError::NoOwnerToken => "no_owner_token",
            ClaimError::ApiKeyFile { .. } => "api_key_file",
            ClaimError::CaFile { .. } => "ca_file",
            ClaimError::InsecureUrl(_) => "insecure_url",
            ClaimError::Unreachable { .. } => "unreachable",
            ClaimError::WrongToken => "wrong_token",
            ClaimError::AlreadyClaimed(_) => "already_claimed",
            ClaimError::Locked(_) => "locked",
            ClaimError::RateLimited(_) => "rate_limited",
            ClaimError::UnknownDevice(_) => "unknown_device",
            ClaimError::Unauthorized(_) => "unauthorized",
            ClaimError::Server { .. } => "server",
        }
    }
}

/// A successful claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The device.
    pub dev_eui: DevEui,
    /// Its JoinEUI (from the code).
    pub join_eui: JoinEui,
    /// The home NetID it is now bound to.
    pub home_net_id: String,
    /// The owner (tenant) it now belongs to.
    pub owner: String,
    /// Where the code came from: `image FILE` or `text`.
    pub source: String,
}

/// Step 1: the code's text, from an image file or as given.
pub fn code_text(input: &str) -> Result<(String, String), ClaimError> {
    let path = Path::new(input);
    if path.is_file() {
        let d = decode::decode_file(path)?;
        return match d.texts.len() {
            1 => Ok((d.texts[0].clone(), format!("image {input}"))),
            0 => Err(DecodeError::NoCode {
                path: input.to_owned(),
            }
            .into()),
            n => Err(ClaimError::SeveralCodes(n)),
        };
    }
    if input.starts_with("LW:") || input.starts_with("URN:") {
        return Ok((input.to_owned(), "text".into()));
    }
    Err(ClaimError::NotCodeOrFile)
}

/// Reads an API key file (the key on its first line).
pub fn read_api_key(path: &Path) -> Result<String, ClaimError> {
    let err = |reason: String| ClaimError::ApiKeyFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let key = text.lines().next().unwrap_or("").trim().to_owned();
    if key.is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(key)
}

/// Which certificates an `https://` join server must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's roots (its certificate store and verifier).
    System,
    /// The certificates of a PEM file: a private CA, or a join server's self-signed
    /// certificate (`DATA_DIR/tls/api.crt`, written by `joinserver init`).
    CaFile(PathBuf),
}

impl Trust {
    /// The TLS configuration of the HTTP client.
    fn tls_config(&self) -> Result<ureq::tls::TlsConfig, ClaimError> {
        let roots = match self {
            Trust::System => ureq::tls::RootCerts::PlatformVerifier,
            Trust::CaFile(path) => {
                let err = |reason: String| ClaimError::CaFile {
                    path: path.display().to_string(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
                let certs = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err(e.to_string()))?;
                if certs.is_empty() {
                    return Err(err("no CERTIFICATE in the file".into()));
                }
                ureq::tls::RootCerts::new_with_certs(&certs)
            }
        };
        Ok(ureq::tls::TlsConfig::builder().root_certs(roots).build())
    }
}

/// Refuses a plain `http://` URL unless its host is a loopback address (`localhost`, 127.0.0.0/8,
/// `::1`).
fn check_scheme(base: &str) -> Result<(), ClaimError> {
    let Some(rest) = base.strip_prefix("http://") else {
        return Ok(());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(ClaimError::InsecureUrl(base.to_owned()))
    }
}

/// Steps 1 to 3: decodes or takes `input`, validates it, and claims the device for `home`,
/// trusting the system's roots for an `https://` join server.
pub fn claim(
    input: &str,
    join_server: &str,
    api_key: &str,
    home: NetId,
) -> Result<Claimed, ClaimError> {
    claim_with(input, join_server, api_key, home, &Trust::System)
}

/// [`claim`], with the roots an `https://` join server must chain to.
pub fn claim_with(
    input: &str,
    join_server: &str,
    api_key: &str,
    home: NetId,
    trust: &Trust,
) -> Result<Claimed, ClaimError> {
    let (text, source) = code_text(input)?;
    let parsed = parse(&text)?;
    let code = parsed.code;
    let token = code.owner_token.as_ref().ok_or(ClaimError::NoOwnerToken)?;
    let base = join_server.trim_end_matches('/');
    check_scheme(base)?;
    let url = format!("{base}/api/v1/devices/{}/claim", code.dev_eui);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(30)))
        .tls_config(trust.tls_config()?)
        .build()
        .into();
    let body = serde_json::json!({
        "owner_token": token.as_str(),
        "home_net_id": home.to_string(),
    });
    let mut resp = agent
        .put(&url)
        .header("Authorization", &format!("Bearer {api_key}"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .map_err(|e| ClaimError::Unreachable {
            url: base.to_owned(),
            reason: e.to_string(),
        })?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| ClaimError::Unreachable {
            url: base.to_owned(),
            reason: e.to_string(),
        })?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let field = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    if status == 200 {
        return Ok(Claimed {
            dev_eui: code.dev_eui,
            join_eui: code.join_eui,
            home_net_id: field("home_net_id"),
            owner: field("owner"),
            source,
        });
    }
    Err(match (status, v["error"].as_str().unwrap_or("")) {
        (403, "wrong_token") => ClaimError::WrongToken,
        (409, "already_claimed") => ClaimError::AlreadyClaimed(code.dev_eui),
        (423, _) => ClaimError::Locked(code.dev_eui),
        (429, _) => ClaimError::RateLimited(retry_after),
        (404, _) => ClaimError::UnknownDevice(code.dev_eui),
        (401, _) | (403, "forbidden") => ClaimError::Unauthorized(status),
        _ => ClaimError::Server {
            status,
            message: if v["message"].is_string() {
                field("message")
            } else {
                text.chars().take(200).collect()
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_fail_before_the_network_with_their_reason() {
        let home = NetId::new(0x13).unwrap();
        let e = claim("nonsense", "http://127.0.0.1:9", "k", home).unwrap_err();
        assert_eq!((e.step(), e.kind()), (Step::Decode, "not_code_or_file"));
        let good = "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122:OAABBCCDDEEFF:SYYWWNNNNNN:PFOOBAR:CAF2C";
        let e = claim(
            &good.replace("CAF2C", "CAF2D"),
            "http://127.0.0.1:9",
            "k",
            home,
        )
        .unwrap_err();
        assert_eq!(
            (e.step(), e.kind()),
            (Step::Validate, "bad_checksum"),
            "{e}"
        );
        let e = claim(
            "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122",
            "http://127.0.0.1:9",
            "k",
            home,
        )
        .unwrap_err();
        assert_eq!((e.step(), e.kind()), (Step::Validate, "no_owner_token"));
        // Port 9 (discard) is closed on loopback: the server is unreachable.
        let e = claim(good, "http://127.0.0.1:9", "k", home).unwrap_err();
        assert_eq!((e.step(), e.kind()), (Step::Claim, "unreachable"), "{e}");
        assert!(!e.to_string().contains("AABBCCDDEEFF\""), "{e}");
    }

    #[test]
    fn plain_http_only_to_loopback_and_the_ca_file_must_hold_a_certificate() {
        let home = NetId::new(0x13).unwrap();
        let good = "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122:OAABBCCDDEEFF:SYYWWNNNNNN:PFOOBAR:CAF2C";
        for url in [
            "http://192.0.2.1:8080",
            "http://join.example.com",
            "http://[2001:db8::1]:80/",
            "http://127.0.0.1.example.com:9",
            "http://user@192.0.2.1",
        ] {
            let e = claim(good, url, "k", home).unwrap_err();
            assert_eq!(
                (e.step(), e.kind()),
                (Step::Claim, "insecure_url"),
                "{url}: {e}"
            );
        }
        for url in ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9"] {
            let e = claim(good, url, "k", home).unwrap_err();
            assert_eq!(e.kind(), "unreachable", "{url}: {e}");
        }
        let tmp = std::env::temp_dir().join(format!("qr-ca-{}.pem", std::process::id()));
        std::fs::write(&tmp, "not a certificate\n").unwrap();
        let e = claim_with(
            good,
            "https://127.0.0.1:9",
            "k",
            home,
            &Trust::CaFile(tmp.clone()),
        )
        .unwrap_err();
        std::fs::remove_file(&tmp).unwrap();
        assert_eq!(e.kind(), "ca_file", "{e}");
        let e = claim_with(
            good,
            "https://127.0.0.1:9",
            "k",
            home,
            &Trust::CaFile(PathBuf::from("/nonexistent/ca.pem")),
        )
        .unwrap_err();
        assert_eq!(e.kind(), "ca_file", "{e}");
    }
}
