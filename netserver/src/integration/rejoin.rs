//! The operator's force-rejoin request (`POST /rejoin` on the HTTP downlink input, same token;
//! `netserver force-rejoin` sends it): ForceRejoinReq (or RejoinParamSetupReq) for one device,
//! a list, or every device matching a filter (a JoinEUI, or all), each given a time in a window
//! so that a fleet re-keys without a storm ([`spread`]). The commands wait in
//! [`crate::store::pending_mac`] for each device's next uplink after its time.
//!
//! Body (JSON): exactly one selector, `dev_euis` (a list), `join_eui` or `all: true`; then
//! `window_s` (default 0: all due at once), and either the ForceRejoinReq fields `rejoin_type`
//! (0 or 2, default 2: re-key, radio parameters kept), `data_rate` (0..=15, default 0),
//! `max_retries` (0..=7, default 1), `period` (0..=7, default 0), or `rejoin_param_setup:
//! {"max_time_n": 0..=15, "max_count_n": 0..=15}` to set the devices' periodic type 0 rejoins.
//! Only LoRaWAN 1.1 sessions take them: others are counted as skipped.

use protocol::ids::{DevEui, JoinEui};
use protocol::mac::MacCommand;
use serde::{Deserialize, Serialize};

use crate::state::State;
use crate::store::pending_mac::PendingMac;

/// RejoinParamSetupReq's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejoinParamSetup {
    /// MaxTimeN (0..=15): a type 0 rejoin at least every 2^(MaxTimeN+10) s.
    pub max_time_n: u8,
    /// MaxCountN (0..=15): a type 0 rejoin at least every 2^(MaxCountN+4) uplinks.
    pub max_count_n: u8,
}

/// A force-rejoin request, as sent and received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceRejoinRequest {
    /// These devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dev_euis: Vec<DevEui>,
    /// Every device of this JoinEUI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_eui: Option<JoinEui>,
    /// Every device.
    #[serde(default)]
    pub all: bool,
    /// Spread the devices' commands over this many seconds.
    #[serde(default)]
    pub window_s: u64,
    /// ForceRejoinReq RejoinType: 0 or 2.
    #[serde(default = "default_rejoin_type")]
    pub rejoin_type: u8,
    /// ForceRejoinReq DR.
    #[serde(default)]
    pub data_rate: u8,
    /// ForceRejoinReq Max_Retries.
    #[serde(default = "default_max_retries")]
    pub max_retries: u8,
    /// ForceRejoinReq Period.
    #[serde(default)]
    pub period: u8,
    /// Send RejoinParamSetupReq with these fields instead of ForceRejoinReq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin_param_setup: Option<RejoinParamSetup>,
}

impl ForceRejoinRequest {
    /// A ForceRejoinReq of `rejoin_type` for every device, over `window_s`, with the defaults
    /// (DR 0, one retry, Period 0).
    pub fn all(rejoin_type: u8, window_s: u64) -> Self {
        Self {
            dev_euis: Vec::new(),
            join_eui: None,
            all: true,
            window_s,
            rejoin_type,
            data_rate: 0,
            max_retries: default_max_retries(),
            period: 0,
            rejoin_param_setup: None,
        }
    }
}

/// Sends `req` to a server's HTTP downlink input on `addr` (`POST /rejoin`, plain HTTP: on the
/// server's host) with the bearer `token` if any; as [`post_to`].
pub fn post(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    req: &ForceRejoinRequest,
) -> Result<String, String> {
    post_to(&format!("http://{addr}"), None, token, req)
}

/// Sends `req` to the HTTP downlink input at `base` (`http://HOST:PORT` or
/// `https://HOST:PORT`; `POST {base}/rejoin`) with the bearer `token` if any. Over HTTPS the
/// server's certificate must chain to a certificate of `ca_file` (PEM) when given, else to the
/// public roots. Returns the answer's JSON, or the status and answer when it is not
/// `202 Accepted`.
pub fn post_to(
    base: &str,
    ca_file: Option<&std::path::Path>,
    token: Option<&str>,
    req: &ForceRejoinRequest,
) -> Result<String, String> {
    let body = serde_json::to_string(req).map_err(|e| e.to_string())?;
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = ca_file {
        let certs = httpsec::tls::read_certificates(path).map_err(|e| e.to_string())?;
        let roots: Vec<ureq::tls::Certificate<'static>> = certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .http_status_as_error(false)
        .tls_config(tls.build())
        .build()
        .into();
    let url = format!("{}/rejoin", base.trim_end_matches('/'));
    let mut request = agent.post(&url).content_type("application/json");
    if let Some(t) = token {
        request = request.header("Authorization", &format!("Bearer {}", t.trim()));
    }
    let mut answer = request.send(&body).map_err(|e| format!("{url}: {e}"))?;
    let status = answer.status();
    let text = answer
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    if status == 202 {
        Ok(text)
    } else {
        Err(format!("{status}: {text}"))
    }
}

fn default_rejoin_type() -> u8 {
    2
}

fn default_max_retries() -> u8 {
    1
}

/// Which devices a request selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// These devices.
    Devices(Vec<DevEui>),
    /// Every device of this JoinEUI.
    JoinEui(JoinEui),
    /// Every device.
    All,
}

/// A checked request: the devices, the command, the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceRejoin {
    /// Which devices.
    pub selector: Selector,
    /// The command each gets.
    pub command: MacCommand,
    /// The window, ms.
    pub window_ms: u64,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForceRejoinAnswer {
    /// Commands put.
    pub ok: bool,
    /// Devices that will get the command.
    #[serde(default)]
    pub devices: usize,
    /// Selected devices without a LoRaWAN 1.1 session (they cannot rejoin).
    #[serde(default)]
    pub skipped_not_1_1: usize,
    /// Listed devices this server has no session for (at most 20 shown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<DevEui>,
    /// When the first and the last command become due, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<(u64, u64)>,
    /// Why the request was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ForceRejoinAnswer {
    fn err(e: impl Into<String>) -> Self {
        Self {
            ok: false,
            devices: 0,
            skipped_not_1_1: 0,
            unknown: Vec::new(),
            due_ms: None,
            error: Some(e.into()),
        }
    }
}

/// The longest window accepted: a day.
pub const MAX_WINDOW_S: u64 = 86_400;

/// Parses and checks a request body; the error says what is wrong.
pub fn parse_force_rejoin(body: &[u8]) -> Result<ForceRejoin, String> {
    let r: ForceRejoinRequest = serde_json::from_slice(body).map_err(|e| {
        format!("invalid request: {e}; expected {{\"dev_euis\":[\"16 hex\"]}} or {{\"join_eui\":\"16 hex\"}} or {{\"all\":true}}, with \"window_s\", \"rejoin_type\", \"data_rate\", \"max_retries\", \"period\" or \"rejoin_param_setup\"")
    })?;
    let selector = match (r.dev_euis.is_empty(), r.join_eui, r.all) {
        (false, None, false) => Selector::Devices(r.dev_euis),
        (true, Some(j), false) => Selector::JoinEui(j),
        (true, None, true) => Selector::All,
        _ => return Err("give exactly one of dev_euis, join_eui, all".into()),
    };
    if r.window_s > MAX_WINDOW_S {
        return Err(format!("window_s {} exceeds {MAX_WINDOW_S}", r.window_s));
    }
    let command = match r.rejoin_param_setup {
        Some(p) if p.max_time_n > 15 || p.max_count_n > 15 => {
            return Err("max_time_n and max_count_n are 0..=15".into())
        }
        Some(p) => MacCommand::RejoinParamSetupReq {
            max_time_n: p.max_time_n,
            max_count_n: p.max_count_n,
        },
        None => {
            if r.rejoin_type != 0 && r.rejoin_type != 2 {
                return Err(format!(
                    "rejoin_type {} is not 0 or 2 (ForceRejoinReq asks for type 0 or 2)",
                    r.rejoin_type
                ));
            }
            if r.data_rate > 15 || r.max_retries > 7 || r.period > 7 {
                return Err("data_rate is 0..=15, max_retries and period 0..=7".into());
            }
            MacCommand::ForceRejoinReq {
                period: r.period,
                max_retries: r.max_retries,
                rejoin_type: r.rejoin_type,
                data_rate: r.data_rate,
            }
        }
    };
    Ok(ForceRejoin {
        selector,
        command,
        window_ms: r.window_s * 1000,
    })
}

/// When each of `n` devices' commands becomes due: evenly over `[start_ms, start_ms +
/// window_ms)`, the first at `start_ms`.
pub fn spread(n: usize, start_ms: u64, window_ms: u64) -> impl Iterator<Item = u64> {
    let n64 = n.max(1) as u128;
    (0..n).map(move |i| start_ms + (u128::from(window_ms) * i as u128 / n64) as u64)
}

/// Applies a request body at `now_ms`: selects the devices among the current sessions, puts
/// their commands spread over the window; the answer says how many, or why not.
pub fn handle_force_rejoin(state: &State, body: &[u8], now_ms: u64) -> ForceRejoinAnswer {
    let req = match parse_force_rejoin(body) {
        Ok(r) => r,
        Err(e) => return ForceRejoinAnswer::err(e),
    };
    let mut unknown = Vec::new();
    let sessions = match &req.selector {
        Selector::Devices(list) => list
            .iter()
            .filter_map(|d| {
                let s = state.sessions.get(*d);
                if s.is_none() {
                    unknown.push(*d);
                }
                s
            })
            .collect(),
        Selector::JoinEui(j) => {
            let mut v = state.sessions.all();
            v.retain(|s| s.join_eui == *j);
            v
        }
        Selector::All => state.sessions.all(),
    };
    let (mut selected, skipped): (Vec<_>, Vec<_>) =
        sessions.into_iter().partition(|s| s.mac_version().is_1_1());
    selected.sort_by_key(|s| s.dev_eui);
    selected.dedup_by_key(|s| s.dev_eui);
    let due: Vec<u64> = spread(selected.len(), now_ms, req.window_ms).collect();
    for (s, &not_before_ms) in selected.iter().zip(&due) {
        state.data.pending_mac.put(
            s.dev_eui,
            PendingMac {
                not_before_ms,
                command: req.command,
            },
        );
    }
    unknown.truncate(20);
    tracing::info!(
        devices = selected.len(),
        skipped_not_1_1 = skipped.len(),
        window_ms = req.window_ms,
        "force-rejoin requested"
    );
    ForceRejoinAnswer {
        ok: true,
        devices: selected.len(),
        skipped_not_1_1: skipped.len(),
        unknown,
        due_ms: due.first().zip(due.last()).map(|(a, b)| (*a, *b)),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_defaults_and_refuse_what_is_wrong() {
        let r = parse_force_rejoin(br#"{"dev_euis":["0000000000000001"],"window_s":60}"#).unwrap();
        assert_eq!(r.selector, Selector::Devices(vec![DevEui::new(1)]));
        assert_eq!(r.window_ms, 60_000);
        assert_eq!(
            r.command,
            MacCommand::ForceRejoinReq {
                period: 0,
                max_retries: 1,
                rejoin_type: 2,
                data_rate: 0
            }
        );
        let r = parse_force_rejoin(
            br#"{"join_eui":"70B3D57ED0000001","rejoin_param_setup":{"max_time_n":2,"max_count_n":3}}"#,
        )
        .unwrap();
        assert_eq!(
            r.selector,
            Selector::JoinEui(JoinEui::new(0x70B3_D57E_D000_0001))
        );
        assert_eq!(
            r.command,
            MacCommand::RejoinParamSetupReq {
                max_time_n: 2,
                max_count_n: 3
            }
        );
        for (body, error) in [
            (
                &br#"{"all":true,"join_eui":"0000000000000001"}"#[..],
                "exactly one",
            ),
            (br#"{}"#, "exactly one"),
            (br#"{"all":true,"rejoin_type":1}"#, "not 0 or 2"),
            (br#"{"all":true,"period":8}"#, "0..=7"),
            (br#"{"all":true,"window_s":86401}"#, "exceeds"),
            (
                br#"{"all":true,"rejoin_param_setup":{"max_time_n":16,"max_count_n":0}}"#,
                "0..=15",
            ),
            (br#"{"all":true,"windows":3}"#, "unknown field"),
        ] {
            let e = parse_force_rejoin(body).unwrap_err();
            assert!(e.contains(error), "{e}");
        }
    }

    #[test]
    fn the_window_is_spread_evenly_from_its_start() {
        assert_eq!(
            spread(4, 1_000, 60_000).collect::<Vec<_>>(),
            [1_000, 16_000, 31_000, 46_000]
        );
        assert_eq!(spread(1, 5, 60_000).collect::<Vec<_>>(), [5]);
        assert_eq!(spread(3, 7, 0).collect::<Vec<_>>(), [7, 7, 7]);
        assert_eq!(spread(0, 7, 10).count(), 0);
        let v: Vec<u64> = spread(10_000, 0, 60_000).collect();
        assert!(v.windows(2).all(|w| w[0] <= w[1]) && *v.last().unwrap() < 60_000);
    }

    proptest::proptest! {
        #[test]
        fn any_body_is_answered_without_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Ok(r) = parse_force_rejoin(&body) {
                proptest::prop_assert!(r.window_ms <= MAX_WINDOW_S * 1000);
            }
        }
    }
}
