//! A TS002 client built as ChirpStack v4's `backend` crate builds its requests (field for
//! field, in its order, binary fields in lowercase hex, `Content-Type: application/json`, the
//! `Authorization` header sent verbatim, a client certificate when configured), reading answers
//! as it does (only the TS002 1.0 result codes parse).

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::keywrap::KeyEnvelope;
use serde::{Deserialize, Serialize};

use super::JOIN_EUI;

/// ChirpStack's `BasePayload` + `JoinReqPayload`, in its field order: `SenderToken` and
/// `ReceiverToken` are left out when empty, and so is `CFList`.
#[derive(Serialize)]
pub struct CsJoinReq {
    #[serde(rename = "ProtocolVersion")]
    pub protocol_version: &'static str,
    #[serde(rename = "SenderID")]
    pub sender_id: String,
    #[serde(rename = "ReceiverID")]
    pub receiver_id: String,
    #[serde(rename = "TransactionID")]
    pub transaction_id: u32,
    #[serde(rename = "MessageType")]
    pub message_type: &'static str,
    #[serde(rename = "MACVersion")]
    pub mac_version: &'static str,
    #[serde(rename = "PHYPayload")]
    pub phy_payload: String,
    #[serde(rename = "DevEUI")]
    pub dev_eui: String,
    #[serde(rename = "DevAddr")]
    pub dev_addr: String,
    #[serde(rename = "DLSettings")]
    pub dl_settings: String,
    #[serde(rename = "RxDelay")]
    pub rx_delay: u8,
    #[serde(rename = "CFList", skip_serializing_if = "String::is_empty")]
    pub cf_list: String,
}

/// The EU868 CFList ChirpStack sends (867.1–867.9 MHz).
pub const CF_LIST: &str = "184f84e85684b85e84886684586e8400";
pub const DEV_ADDR: u32 = 0x0017_7EFA;

/// A JoinReq of test device `dev` as ChirpStack sends it for a device profile of `mac`.
pub fn cs_join_req(tid: u32, sender: u32, dev: u64, mac: &'static str, phy: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&CsJoinReq {
        protocol_version: "1.0",
        sender_id: format!("{sender:06x}"),
        receiver_id: format!("{JOIN_EUI:016x}"),
        transaction_id: tid,
        message_type: "JoinReq",
        mac_version: mac,
        phy_payload: hex::encode(phy),
        dev_eui: format!("{dev:016x}"),
        dev_addr: format!("{DEV_ADDR:08x}"),
        dl_settings: if mac.starts_with("1.1") { "80" } else { "00" }.into(),
        rx_delay: 1,
        cf_list: CF_LIST.into(),
    })
    .unwrap()
}

/// ChirpStack's result codes: an answer with any other code does not parse there.
#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
pub enum CsResultCode {
    Success,
    MICFailed,
    JoinReqFailed,
    NoRoamingAgreement,
    DevRoamingDisallowed,
    RoamingActDisallowed,
    ActivationDisallowed,
    UnknownDevEUI,
    UnknownDevAddr,
    UnknownSender,
    UnknownReceiver,
    UnkownReceiver,
    Deferred,
    XmitFailed,
    InvalidFPort,
    InvalidProtocolVersion,
    StaleDeviceProfile,
    MalformedRequest,
    FrameSizeError,
    Other,
}

#[derive(Debug, Deserialize, Clone)]
pub struct CsResult {
    #[serde(rename = "ResultCode")]
    pub code: CsResultCode,
    #[serde(rename = "Description", default)]
    pub description: String,
}

/// What ChirpStack reads of any answer, plus the JoinAns fields.
#[derive(Debug, Deserialize, Clone)]
pub struct CsAns {
    #[serde(rename = "SenderID")]
    pub sender_id: String,
    #[serde(rename = "ReceiverID")]
    pub receiver_id: String,
    #[serde(rename = "TransactionID")]
    pub transaction_id: u32,
    #[serde(rename = "MessageType")]
    pub message_type: String,
    #[serde(rename = "Result")]
    pub result: CsResult,
    #[serde(rename = "PHYPayload", default)]
    pub phy_payload: Option<String>,
    #[serde(rename = "Lifetime", default)]
    pub lifetime: Option<usize>,
    #[serde(rename = "NwkSKey", default)]
    pub nwk_s_key: Option<KeyEnvelope>,
    #[serde(rename = "FNwkSIntKey", default)]
    pub f_nwk_s_int_key: Option<KeyEnvelope>,
    #[serde(rename = "SNwkSIntKey", default)]
    pub s_nwk_s_int_key: Option<KeyEnvelope>,
    #[serde(rename = "NwkSEncKey", default)]
    pub nwk_s_enc_key: Option<KeyEnvelope>,
    #[serde(rename = "AppSKey", default)]
    pub app_s_key: Option<KeyEnvelope>,
    #[serde(rename = "SessionKeyID", default)]
    pub session_key_id: Option<String>,
    #[serde(rename = "HNetID", default)]
    pub h_net_id: Option<String>,
    #[serde(rename = "VSExtension", default)]
    pub vs_extension: Option<serde_json::Value>,
}

/// A TS002 client of the join server's listener.
pub struct Ts002 {
    pub agent: ureq::Agent,
    pub url: String,
    pub authorization: Option<String>,
}

pub fn server_cert(dir: &Path) -> PathBuf {
    dir.join("tls/api.crt")
}

impl Ts002 {
    /// A client of the listener on 127.0.0.1:`port` whose certificate is the data directory's
    /// `tls/api.crt`, sending `authorization` and, if given, a client certificate (`(cert PEM,
    /// key PEM)`), as ChirpStack's `authorization_header`, `tls_cert` and `tls_key`.
    pub fn connect(
        port: u16,
        dir: &Path,
        authorization: Option<String>,
        identity: Option<(String, String)>,
    ) -> Self {
        let root =
            ureq::tls::Certificate::from_pem(&std::fs::read(server_cert(dir)).unwrap()).unwrap();
        let mut tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[root]));
        if let Some((cert, key)) = identity {
            let cert = ureq::tls::Certificate::from_pem(cert.as_bytes())
                .unwrap()
                .to_owned();
            let key = ureq::tls::PrivateKey::from_pem(key.as_bytes())
                .unwrap()
                .to_owned();
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&[cert], key)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .tls_config(tls.build())
            .build()
            .into();
        // ChirpStack's `server` URL, posted to exactly as written.
        let url = format!("https://localhost:{port}/");
        Self {
            agent,
            url,
            authorization,
        }
    }

    pub fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, String), ureq::Error> {
        let mut req = self
            .agent
            .post(&format!("{}{}", self.url, path.trim_start_matches('/')))
            .header("Content-Type", content_type);
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let mut r = req.send(body)?;
        let status = r.status().as_u16();
        Ok((status, r.body_mut().read_to_string().unwrap()))
    }

    /// POSTs `body`; the answer must be HTTP 200 JSON that ChirpStack parses.
    pub fn post(&self, body: &[u8]) -> CsAns {
        let (status, text) = self.post_raw("", "application/json", body).unwrap();
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}
